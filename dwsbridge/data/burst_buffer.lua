--[[
burst_buffer.lua: the dwsbridge shim for Slurm's burst_buffer/lua plugin.

Install it with `dwsbridge slurm install --etc /etc/slurm`, which fills in the
settings below. Every hook only translates Slurm's calling convention: it hands
the hook to the bridge (the agent over its socket, else a Python process) and
turns the bridge's result back into what Slurm expects. All logic lives in the
dwsbridge Python package. Written for Lua 5.1 (what Slurm 22.05 links).

Bridge agent: with AGENT_SOCKET set, every hook goes to the long-running
`dwsbridge agent` over that Unix socket, from Lua itself, through Debian's
lua-socket (`socket.unix`): no process is started. Its two C modules are loaded
from the paths install found (else with require), and kept loaded: Lua would
unload them when Slurm closes the hook's Lua state, and mapping them again cost
~0.12 ms of each job_process (BENCHMARKS.md "Slurm"). The request is
NUL-separated fields "DWSB1", hook, the number of environment entries, the
entries ("KEY=VALUE", among them DWSBRIDGE_DEADLINE: the time after which the
agent must not start it), then the hook's arguments; the reply is "DWSB1 OK\n"
plus the result protocol below, or "DWSB1 FALLBACK <reason>\n". Hooks that may
take long (all but job_process, pools, paths, get_status) get a "." every
second while it works, so a silent agent is known to be hung.

Timeouts (set by `dwsbridge slurm install --agent-*-timeout`): CONNECT_TIMEOUT
bounds connecting and sending; job_process, pools and paths run inside
slurmctld and wait at most AGENT_TIMEOUT for the whole answer (get_status
too); the others wait as long as the agent works, but at most SILENCE_TIMEOUT
without a sign of life. Fallbacks: when the agent cannot be reached, or answers garbage or cuts
its answer short, the hook runs the bridge in a process as without an agent
(below). When job_process's agent does not answer in time, the submission is
refused with a message saying so: the same validation is never run a second
time inside slurmctld. Without lua-socket, the hook process relays to the
agent itself (dwsbridge.hookclient).

Process: <PYTHON> -I -S -c <LAUNCHER> <hook> <args...> (or, without a launcher,
<PYTHON> -I -m dwsbridge.slurm <hook> <args...>). LAUNCHER puts the bridge's
package directory on sys.path and starts without `site` (-S), which saves
~10 ms; it adds site-packages itself when it runs the hook in-process.

Result protocol (Lua 5.1's io.popen():close() gives no exit status): the bridge's
output ends with one status line

    @@DWSBRIDGE rc=<0|1> len=<bytes>

preceded by a payload of exactly <bytes> bytes and one newline. rc=0 returns
slurm.SUCCESS with the payload, rc=1 returns slurm.ERROR with the payload as the
message. Lines before the payload that start with "@@DWSBRIDGE log " are the
bridge's log lines and go to the slurmctld log. Output without a status line
means the bridge crashed: the hook fails with the output's last lines.

No header cache: validation in the agent takes ~0.1 ms, less than reading a
cache file of accepted headers would (measured, BENCHMARKS.md "Slurm").

Troubleshooting: grep the slurmctld log for "dwsbridge".
]]

local PYTHON = "@DWSBRIDGE_PYTHON@"
local CONFIG = "@DWSBRIDGE_CONFIG@"
local AGENT_SOCKET = "@DWSBRIDGE_AGENT_SOCKET@"
local LAUNCHER = "@DWSBRIDGE_LAUNCHER@"
-- Seconds; "@...@" (not installed) gives the default after `or`.
local CONNECT_TIMEOUT = tonumber("@DWSBRIDGE_AGENT_CONNECT_TIMEOUT@") or 1
local AGENT_TIMEOUT = tonumber("@DWSBRIDGE_AGENT_TIMEOUT@") or 3
local SILENCE_TIMEOUT = tonumber("@DWSBRIDGE_AGENT_SILENCE_TIMEOUT@") or 30
local SOCKET_MODULE = "socket.unix"
-- lua-socket's C modules where install found them ("" or "@...@": found by require).
local SOCKET_CORE_PATH = "@DWSBRIDGE_SOCKET_CORE@"
local SOCKET_UNIX_PATH = "@DWSBRIDGE_SOCKET_UNIX@"

local unpack = unpack or table.unpack -- Lua 5.1 has the global; 5.2+ moved it

local STATUS_PATTERN = "^(.-)@@DWSBRIDGE rc=(%d+) len=(%d+)\n?$"
local LOG_PREFIX = "@@DWSBRIDGE log "
local CRASH_LINES = 5

-- A setting still holding its placeholder was never filled in by the installer.
-- (The placeholder is built by concatenation so the installer cannot rewrite it.)
local function is_set(value, name)
	return value ~= "" and value ~= "@" .. name .. "@"
end

local function log(fmt, ...)
	slurm.log_info("%s", string.format(fmt, ...))
end

-- Single-quote a value for /bin/sh; NUL bytes cannot pass through exec and are dropped.
local function shell_quote(value)
	local text = string.gsub(tostring(value), "%z", "")
	return "'" .. string.gsub(text, "'", "'\\''") .. "'"
end

-- Slurm passes strings; anything else (23.02+'s job_info table, nil) becomes "".
local function as_text(value)
	local kind = type(value)
	if kind == "string" then
		return value
	elseif kind == "number" or kind == "boolean" then
		return tostring(value)
	end
	return ""
end

-- lua-socket's unix and core modules (nil when they cannot be loaded). By path first: that skips
-- require's search of package.path and package.cpath; a path that no longer holds them (lua-socket
-- moved) falls back to require.
local function load_lua_socket()
	if is_set(SOCKET_CORE_PATH, "DWSBRIDGE_SOCKET_CORE") and is_set(SOCKET_UNIX_PATH, "DWSBRIDGE_SOCKET_UNIX") then
		local open_core = package.loadlib(SOCKET_CORE_PATH, "luaopen_socket_core")
		local open_unix = open_core and package.loadlib(SOCKET_UNIX_PATH, "luaopen_socket_unix")
		if open_unix then
			local has_core, core = pcall(open_core, "socket.core")
			local ok, unix = pcall(open_unix, SOCKET_MODULE)
			if has_core and ok then
				return unix, core
			end
		end
	end
	local ok, unix = pcall(require, SOCKET_MODULE)
	local has_core, core = pcall(require, "socket.core")
	if ok and has_core then
		return unix, core
	end
end

-- Slurm closes this Lua state after the hook, and Lua 5.1 then unloads (dlclose) every C module it
-- loaded: the next hook would map lua-socket again. Without the finaliser of the state's library
-- handles the modules stay mapped for the life of the process (its memory does not grow).
local function keep_c_modules_loaded()
	local registry = debug and debug.getregistry and debug.getregistry()
	local handles = registry and registry._LOADLIB -- Lua 5.1's metatable of C library handles
	if type(handles) == "table" then
		handles.__gc = nil
	end
end

-- lua-socket, when the agent is configured and the module is installed (nil otherwise).
local agent_socket, socket_clock
if is_set(AGENT_SOCKET, "DWSBRIDGE_AGENT_SOCKET") then
	local unix, core = load_lua_socket()
	if (type(unix) == "table" or type(unix) == "function") and type(core) == "table" then
		agent_socket = unix
		socket_clock = core.gettime
		keep_c_modules_loaded()
	end
end

-- Seconds, with sub-millisecond resolution when lua-socket is there (/proc/uptime has 10 ms).
local function now()
	if socket_clock then
		return socket_clock()
	end
	local f = io.open("/proc/uptime", "r")
	if not f then
		return os.time()
	end
	local text = f:read("*l") or ""
	f:close()
	return tonumber(string.match(text, "^(%S+)")) or os.time()
end

local function last_lines(text, count)
	local lines = {}
	for line in string.gmatch(text, "[^\n]+") do
		lines[#lines + 1] = line
		if #lines > count then
			table.remove(lines, 1)
		end
	end
	return table.concat(lines, " | ")
end

-- Split the bridge's output into (ok, payload, preamble); ok is nil when the status line is missing.
local function parse_output(output)
	local head, rc, len = string.match(output, STATUS_PATTERN)
	if not head then
		return nil, "", output
	end
	len = tonumber(len)
	-- head is <preamble><payload>"\n"; the payload length comes from the status line.
	local body = string.sub(head, 1, -2)
	if string.sub(head, -1) ~= "\n" or len > #body then
		return nil, "", output
	end
	local payload = string.sub(body, #body - len + 1)
	local preamble = string.sub(body, 1, #body - len)
	return rc == "0", payload, preamble
end

local function forward_logs(preamble)
	for line in string.gmatch(preamble, "[^\n]+") do
		if string.sub(line, 1, #LOG_PREFIX) == LOG_PREFIX then
			log("%s", string.sub(line, #LOG_PREFIX + 1))
		else
			log("dwsbridge/lua: bridge output: %s", line)
		end
	end
end

local function command_line(hook, args, relay)
	local parts = {}
	if is_set(CONFIG, "DWSBRIDGE_CONFIG") then
		parts[#parts + 1] = "DWSBRIDGE_CONFIG=" .. shell_quote(CONFIG)
	end
	if relay and is_set(AGENT_SOCKET, "DWSBRIDGE_AGENT_SOCKET") then
		parts[#parts + 1] = "DWSBRIDGE_AGENT_SOCKET=" .. shell_quote(AGENT_SOCKET)
	end
	if is_set(LAUNCHER, "DWSBRIDGE_LAUNCHER") then
		parts[#parts + 1] = "exec " .. shell_quote(PYTHON) .. " -I -S -c " .. shell_quote(LAUNCHER) .. " " .. hook
	else
		parts[#parts + 1] = "exec " .. shell_quote(PYTHON) .. " -I -m dwsbridge.slurm " .. hook
	end
	for i = 1, args.n do
		parts[#parts + 1] = shell_quote(args[i])
	end
	parts[#parts + 1] = "</dev/null 2>&1"
	return table.concat(parts, " ")
end

-- Hooks that block slurmctld (and get_status, a user at the terminal): AGENT_TIMEOUT in all.
local CONTROLLER_HOOKS = { job_process = true, pools = true, paths = true, get_status = true }
local AGENT_VERSION = "DWSB1"
local REPLY_OK = AGENT_VERSION .. " OK\n"
local REPLY_FALLBACK = AGENT_VERSION .. " FALLBACK "
local FORWARDED_ENV = { "DWSBRIDGE_ROOT", "DWSBRIDGE_LOG_LEVEL" }

local function agent_request(hook, args, deadline)
	local env = {}
	if is_set(CONFIG, "DWSBRIDGE_CONFIG") then
		env[#env + 1] = "DWSBRIDGE_CONFIG=" .. CONFIG
	end
	for _, name in ipairs(FORWARDED_ENV) do
		local value = os.getenv(name)
		if value then
			env[#env + 1] = name .. "=" .. value
		end
	end
	env[#env + 1] = string.format("DWSBRIDGE_DEADLINE=%.3f", deadline)
	table.sort(env)
	local fields = { AGENT_VERSION, hook, tostring(#env) }
	for _, entry in ipairs(env) do
		fields[#fields + 1] = entry
	end
	for i = 1, args.n do
		fields[#fields + 1] = (string.gsub(args[i], "%z", ""))
	end
	return table.concat(fields, "\0")
end

-- The whole reply; nil, reason, timed_out when there is none. Long hooks may take as long as they
-- need while the agent's heartbeats ("." each second) arrive; a silence of SILENCE_TIMEOUT ends it.
local function agent_receive(conn, hook)
	if CONTROLLER_HOOKS[hook] then
		conn:settimeout(AGENT_TIMEOUT, "t")
		local data, err = conn:receive("*a")
		if data then
			return data
		end
		return nil, string.format("no answer within %gs (%s)", AGENT_TIMEOUT, tostring(err)), err == "timeout"
	end
	local got = {}
	while true do
		conn:settimeout(SILENCE_TIMEOUT, "t")
		local data, err, partial = conn:receive("*a")
		if data then
			got[#got + 1] = data
			return table.concat(got)
		end
		if err ~= "timeout" then
			return nil, "receive: " .. tostring(err), false
		end
		if partial == nil or partial == "" then
			return nil, string.format("silent for %gs", SILENCE_TIMEOUT), true
		end
		got[#got + 1] = partial
	end
end

-- The agent's result-protocol output for this hook; nil, reason, timed_out when it gave none.
local function ask_agent(hook, args)
	local conn = agent_socket()
	if not conn then
		return nil, "cannot create a socket", false
	end
	conn:settimeout(CONNECT_TIMEOUT, "t")
	local ok, err = conn:connect(AGENT_SOCKET)
	if not ok then
		conn:close()
		return nil, "connect: " .. tostring(err), false
	end
	local wait = CONTROLLER_HOOKS[hook] and AGENT_TIMEOUT or SILENCE_TIMEOUT
	local sent, send_err = conn:send(agent_request(hook, args, now() + wait))
	if not sent then
		conn:close()
		return nil, "send: " .. tostring(send_err), send_err == "timeout"
	end
	conn:shutdown("send")
	local reply, why, timed_out = agent_receive(conn, hook)
	conn:close()
	if not reply then
		return nil, why, timed_out
	end
	reply = string.gsub(reply, "^%.+", "")
	if string.sub(reply, 1, #REPLY_OK) == REPLY_OK then
		local output = string.sub(reply, #REPLY_OK + 1)
		if parse_output(output) == nil then
			return nil, "reply cut short", false
		end
		return output
	end
	if string.sub(reply, 1, #REPLY_FALLBACK) == REPLY_FALLBACK then
		return nil, "agent: " .. (string.match(string.sub(reply, #REPLY_FALLBACK + 1), "^[^\n]*") or ""), false
	end
	return nil, reply == "" and "no reply" or "not an agent reply", false
end

-- The bridge's output from a process: `relay` lets it try the agent itself (no lua-socket here).
local function run_process(hook, args, relay)
	local pipe, open_error = io.popen(command_line(hook, args, relay), "r")
	if not pipe then
		return nil, "dwsbridge: cannot run " .. PYTHON .. ": " .. tostring(open_error)
	end
	local output = pipe:read("*a") or ""
	pipe:close()
	return output
end

-- Run one hook through the bridge; always returns a status and, when there is one, a string.
local function call_bridge(hook, job_id, ...)
	local args = { n = select("#", ...) }
	for i = 1, args.n do
		args[i] = as_text((select(i, ...)))
	end
	local job = as_text(job_id)
	if job == "" then
		job = "-"
	end
	if not is_set(PYTHON, "DWSBRIDGE_PYTHON") then
		local message = "burst_buffer.lua is not configured: install it with `dwsbridge slurm install`"
		log("dwsbridge/lua: %s job=%s rc=error %s", hook, job, message)
		return slurm.ERROR, message
	end

	local started = now()
	local output, why, timed_out, via
	if agent_socket then
		output, why, timed_out = ask_agent(hook, args)
		via = "agent"
		if not output and timed_out and hook == "job_process" then
			-- Validation is what may have kept the agent busy: never run it again inside slurmctld.
			local message = "dwsbridge: the bridge agent did not answer in time ("
				.. why
				.. "); the job was not submitted: try again, and if it persists ask your admin to check `dwsbridge agent`"
			log("dwsbridge/lua: %s job=%s rc=error %.1fms via=agent %s", hook, job, (now() - started) * 1000, message)
			return slurm.ERROR, message
		end
	end
	if not output then
		via = why and ("process (agent " .. why .. ")") or "process"
		output, why = run_process(hook, args, agent_socket == nil)
		if not output then
			log("dwsbridge/lua: %s job=%s rc=error %s", hook, job, why)
			return slurm.ERROR, why
		end
	end
	local elapsed_ms = (now() - started) * 1000

	local ok, payload, preamble = parse_output(output)
	forward_logs(preamble)
	if ok == nil then
		local message = "dwsbridge " .. hook .. " ended without a result"
		local tail = last_lines(preamble, CRASH_LINES)
		if tail ~= "" then
			message = message .. ": " .. tail
		end
		log("dwsbridge/lua: %s job=%s rc=crash %.1fms via=%s %s", hook, job, elapsed_ms, via, message)
		return slurm.ERROR, message
	end
	if ok then
		log("dwsbridge/lua: %s job=%s rc=success %.1fms via=%s", hook, job, elapsed_ms, via)
		if payload == "" then
			return slurm.SUCCESS
		end
		return slurm.SUCCESS, payload
	end
	if payload == "" then
		payload = "dwsbridge " .. hook .. " failed"
	end
	log("dwsbridge/lua: %s job=%s rc=error %.1fms via=%s %s", hook, job, elapsed_ms, via, payload)
	return slurm.ERROR, payload
end

-- Slurm 23.02+ appends (uid, gid, job_info) to most hooks: the named parameters
-- below take what 22.05 passes and the extras are ignored.

function slurm_bb_job_process(script_path)
	return call_bridge("job_process", nil, script_path)
end

function slurm_bb_pools()
	return call_bridge("pools", nil)
end

function slurm_bb_setup(job_id, uid, gid, pool, bb_size, script)
	return call_bridge("setup", job_id, job_id, uid, gid, pool, bb_size, script)
end

function slurm_bb_data_in(job_id, script)
	return call_bridge("data_in", job_id, job_id, script)
end

-- Slurm asks after stage-in whether the allocation ended up larger than requested. DWS storage
-- is allocated as requested, so there is nothing to report: answer without starting Python
-- (it is on the path between stage-in and job start).
function slurm_bb_real_size(job_id)
	log("dwsbridge/lua: real_size job=%s rc=success", as_text(job_id))
	return slurm.SUCCESS
end

function slurm_bb_paths(job_id, script, path_file)
	return call_bridge("paths", job_id, job_id, script, path_file)
end

function slurm_bb_pre_run(job_id, script)
	return call_bridge("pre_run", job_id, job_id, script)
end

function slurm_bb_post_run(job_id, script)
	return call_bridge("post_run", job_id, job_id, script)
end

function slurm_bb_data_out(job_id, script)
	return call_bridge("data_out", job_id, job_id, script)
end

function slurm_bb_job_teardown(job_id, script, hurry)
	return call_bridge("job_teardown", job_id, job_id, script, hurry)
end

-- 24.05 polls these after data_in/data_out; ours finish synchronously, so "done".
function slurm_bb_test_data_in(job_id)
	log("dwsbridge/lua: test_data_in job=%s rc=success", as_text(job_id))
	return slurm.SUCCESS
end

function slurm_bb_test_data_out(job_id)
	log("dwsbridge/lua: test_data_out job=%s rc=success", as_text(job_id))
	return slurm.SUCCESS
end

-- 22.05 passes the words after `scontrol show bbstat`; 23.02+ puts the caller's
-- uid and gid (decimal strings) first. Two leading all-digit words mean 23.02+.
function slurm_bb_get_status(...)
	local count = select("#", ...)
	local first, second = ...
	local skip = 0
	if count >= 2 and string.match(as_text(first), "^%d+$") and string.match(as_text(second), "^%d+$") then
		skip = 2
	end
	local words = {}
	for i = skip + 1, count do
		words[#words + 1] = as_text((select(i, ...)))
	end
	return call_bridge("get_status", nil, unpack(words, 1, #words))
end
