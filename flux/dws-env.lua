-- dwsbridge: give a job's tasks their DWS environment (DW_JOB_*, DW_WORKFLOW_TOKEN, NNF_CONTAINER_*).
--
-- The dwsbridge service posts the variables as the `dws_environment` event before the perilog prolog
-- lets the job start; this Flux shell plugin copies them into the environment at shell.init.
-- Site-wide: copy to <prefix>/etc/flux/shell/lua.d/dws-env.lua. Per job: -o userrc=/path/dws-env.lua.
-- It only reads the eventlog of jobs that asked for DWS storage (attributes.system.dw).

local EVENT = "dws_environment"

local ESCAPES = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

local function utf8_char(code)
    if code < 0x80 then return string.char(code) end
    if code < 0x800 then
        return string.char(0xC0 + math.floor(code / 0x40), 0x80 + code % 0x40)
    end
    if code < 0x10000 then
        return string.char(0xE0 + math.floor(code / 0x1000), 0x80 + math.floor(code / 0x40) % 0x40,
                           0x80 + code % 0x40)
    end
    return string.char(0xF0 + math.floor(code / 0x40000), 0x80 + math.floor(code / 0x1000) % 0x40,
                       0x80 + math.floor(code / 0x40) % 0x40, 0x80 + code % 0x40)
end

-- A JSON string starting at s[i] == '"': its value and the index after it (nil on bad input).
local function json_string(s, i)
    local out, j = {}, i + 1
    while true do
        local c = s:sub(j, j)
        if c == "" then return nil end
        if c == '"' then return table.concat(out), j + 1 end
        if c ~= "\\" then
            out[#out + 1] = c
            j = j + 1
        else
            local e = s:sub(j + 1, j + 1)
            if ESCAPES[e] then
                out[#out + 1] = ESCAPES[e]
                j = j + 2
            elseif e == "u" then
                local code = tonumber(s:sub(j + 2, j + 5), 16)
                if not code then return nil end
                j = j + 6
                if code >= 0xD800 and code < 0xDC00 and s:sub(j, j + 1) == "\\u" then
                    local low = tonumber(s:sub(j + 2, j + 5), 16)
                    if low and low >= 0xDC00 and low < 0xE000 then
                        code = 0x10000 + (code - 0xD800) * 0x400 + (low - 0xDC00)
                        j = j + 6
                    end
                end
                out[#out + 1] = utf8_char(code)
            else
                return nil
            end
        end
    end
end

local function skip_space(s, i)
    return (s:find("[^ \t\r\n]", i)) or (#s + 1)
end

-- The "variables" object of one eventlog line (a flat map of strings), or nil.
local function variables_of(line)
    local start = line:find('"variables"%s*:%s*{')
    if not start then return nil end
    local i = skip_space(line, line:find("{", start, true) + 1)
    local vars = {}
    if line:sub(i, i) == "}" then return vars end
    while true do
        if line:sub(i, i) ~= '"' then return nil end
        local key, value
        key, i = json_string(line, i)
        if not key then return nil end
        i = skip_space(line, i)
        if line:sub(i, i) ~= ":" then return nil end
        i = skip_space(line, i + 1)
        if line:sub(i, i) ~= '"' then return nil end
        value, i = json_string(line, i)
        if not value then return nil end
        vars[key] = value
        i = skip_space(line, i)
        local c = line:sub(i, i)
        if c == "}" then return vars end
        if c ~= "," then return nil end
        i = skip_space(line, i + 1)
    end
end

-- The variables of the last dws_environment event in an eventlog (one JSON object per line).
local function dws_variables(eventlog)
    local found
    for line in eventlog:gmatch("[^\n]+") do
        if line:find('"name"%s*:%s*"' .. EVENT .. '"') then
            found = variables_of(line) or found
        end
    end
    return found
end

local function wants_dws(info)
    local ok, dw = pcall(function() return info.jobspec.attributes.system.dw end)
    return not ok or dw ~= nil
end

local function set_environment()
    local info = shell.info
    if not wants_dws(info) then return end
    -- The job ID as a string: a Lua 5.1 number (a double) rounds IDs at or above 2^53 to a neighbour's.
    local jobid = shell.getenv("FLUX_JOB_ID")
    if not jobid or not jobid:match("^[%w\128-\255]+$") then
        shell.log_error("dwsbridge: FLUX_JOB_ID is not set; DW_* variables are not set")
        return
    end
    local pipe = io.popen("flux job eventlog --format=json " .. jobid .. " 2>/dev/null")
    if not pipe then return end
    local eventlog = pipe:read("*a") or ""
    pipe:close()
    local vars = dws_variables(eventlog)
    if not vars then
        shell.log_error("dwsbridge: no " .. EVENT .. " event for this job; DW_* variables are not set")
        return
    end
    for key, value in pairs(vars) do
        shell.setenv(key, value, 1)
    end
end

DWS_ENV = { dws_variables = dws_variables }  -- for tests

if plugin then
    plugin.register { name = "dws-env", handlers = { { topic = "shell.init", fn = set_environment } } }
end
