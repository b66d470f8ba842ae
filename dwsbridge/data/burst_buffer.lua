--[[
burst_buffer.lua: the dwsbridge shim for Slurm's burst_buffer/lua plugin.

Install it with `dwsbridge slurm install --etc /etc/slurm`, which fills in the
settings below. Every hook only translates Slurm's calling convention: it runs

    <PYTHON> -I -S -c <LAUNCHER> <hook> <args...>    (or, without a launcher,
    <PYTHON> -I -m dwsbridge.slurm <hook> <args...>)

and turns the bridge's result back into what Slurm expects. All logic lives in
the dwsbridge Python package. Written for Lua 5.1 (what Slurm 22.05 links).

Bridge agent: with AGENT_SOCKET set, the hook process hands the hook to the
long-running `dwsbridge agent` over that Unix socket and relays its result;
when no agent runs there it runs the bridge in-process (same result). Lua 5.1
has no sockets, so a small Python process remains: LAUNCHER puts the bridge's
package directory on sys.path and starts the relay without `site` (-S), which
saves ~10 ms a hook; it adds site-packages itself when it must fall back.

Result protocol (Lua 5.1's io.popen():close() gives no exit status): the bridge's
output ends with one status line

    @@DWSBRIDGE rc=<0|1> len=<bytes>

preceded by a payload of exactly <bytes> bytes and one newline. rc=0 returns
slurm.SUCCESS with the payload, rc=1 returns slurm.ERROR with the payload as the
message. Lines before the payload that start with "@@DWSBRIDGE log " are the
bridge's log lines and go to the slurmctld log. Output without a status line
means the bridge crashed: the hook fails with the output's last lines.

Fast path: the bridge records the header (leading comment block) of every job
script whose #DW lines it accepted, in the root-only file CACHE. job_process
accepts a script with a recorded header without starting Python. The bridge
empties the file when the ruleset or configuration changes (checked at least
every 30 s, at slurm_bb_pools), and setup validates every job again anyway.

Troubleshooting: grep the slurmctld log for "dwsbridge".
]]

local PYTHON = "@DWSBRIDGE_PYTHON@"
local CONFIG = "@DWSBRIDGE_CONFIG@"
local CACHE = "@DWSBRIDGE_CACHE@"
local AGENT_SOCKET = "@DWSBRIDGE_AGENT_SOCKET@"
local LAUNCHER = "@DWSBRIDGE_LAUNCHER@"

local unpack = unpack or table.unpack -- Lua 5.1 has the global; 5.2+ moved it

local STATUS_PATTERN = "^(.-)@@DWSBRIDGE rc=(%d+) len=(%d+)\n?$"
local LOG_PREFIX = "@@DWSBRIDGE log "
local CRASH_LINES = 5
local HEADER_LIMIT = 16384

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

local function uptime()
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

local function read_file(path)
	local f = io.open(path, "rb")
	if not f then
		return nil
	end
	local text = f:read("*a")
	f:close()
	return text
end

-- The leading comment block: every line up to the first non-empty one not starting with "#".
local function script_header(text)
	local pos, len = 1, #text
	while pos <= len do
		local newline = string.find(text, "\n", pos, true)
		local line = string.sub(text, pos, (newline or (len + 1)) - 1)
		if line ~= "" and string.sub(line, 1, 1) ~= "#" then
			break
		end
		pos = (newline or len) + 1
	end
	return string.sub(text, 1, pos - 1)
end

local function escape_header(header)
	local escaped = string.gsub(header, "\\", "\\\\")
	return (string.gsub(escaped, "\n", "\\n"))
end

-- True when the bridge has already accepted a script with this header.
local function accepted_before(script_path)
	if not is_set(CACHE, "DWSBRIDGE_CACHE") then
		return false
	end
	local cache = read_file(CACHE)
	local text = cache and read_file(script_path)
	if not text then
		return false
	end
	local header = script_header((string.gsub(text, "%z+$", "")))
	if header == "" or #header > HEADER_LIMIT then
		return false
	end
	return string.find(cache, "\n" .. escape_header(header) .. "\n", 1, true) ~= nil
end

local function command_line(hook, args)
	local parts = {}
	if is_set(CONFIG, "DWSBRIDGE_CONFIG") then
		parts[#parts + 1] = "DWSBRIDGE_CONFIG=" .. shell_quote(CONFIG)
	end
	if is_set(CACHE, "DWSBRIDGE_CACHE") then
		parts[#parts + 1] = "DWSBRIDGE_JOB_PROCESS_CACHE=" .. shell_quote(CACHE)
	end
	if is_set(AGENT_SOCKET, "DWSBRIDGE_AGENT_SOCKET") then
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

	local started = uptime()
	local pipe, open_error = io.popen(command_line(hook, args), "r")
	if not pipe then
		local message = "dwsbridge: cannot run " .. PYTHON .. ": " .. tostring(open_error)
		log("dwsbridge/lua: %s job=%s rc=error %s", hook, job, message)
		return slurm.ERROR, message
	end
	local output = pipe:read("*a") or ""
	pipe:close()
	local elapsed_ms = (uptime() - started) * 1000

	local ok, payload, preamble = parse_output(output)
	forward_logs(preamble)
	if ok == nil then
		local message = "dwsbridge " .. hook .. " ended without a result"
		local tail = last_lines(preamble, CRASH_LINES)
		if tail ~= "" then
			message = message .. ": " .. tail
		end
		log("dwsbridge/lua: %s job=%s rc=crash %.0fms %s", hook, job, elapsed_ms, message)
		return slurm.ERROR, message
	end
	if ok then
		log("dwsbridge/lua: %s job=%s rc=success %.0fms", hook, job, elapsed_ms)
		if payload == "" then
			return slurm.SUCCESS
		end
		return slurm.SUCCESS, payload
	end
	if payload == "" then
		payload = "dwsbridge " .. hook .. " failed"
	end
	log("dwsbridge/lua: %s job=%s rc=error %.0fms %s", hook, job, elapsed_ms, payload)
	return slurm.ERROR, payload
end

-- Slurm 23.02+ appends (uid, gid, job_info) to most hooks: the named parameters
-- below take what 22.05 passes and the extras are ignored.

function slurm_bb_job_process(script_path)
	if accepted_before(as_text(script_path)) then
		log("dwsbridge/lua: job_process job=- rc=success cached")
		return slurm.SUCCESS
	end
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
