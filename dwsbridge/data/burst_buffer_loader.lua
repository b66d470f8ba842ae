--[[
burst_buffer.lua: what Slurm's burst_buffer/lua plugin loads, written by `dwsbridge slurm install`.

Slurm compiles this file afresh for every hook it calls, and job_process runs inside slurmctld for
every sbatch. So this file only loads the hooks: they are in dwsbridge-hooks.lua beside it (the
dwsbridge shim, readable), and install compiles that to dwsbridge-hooks.luac with luac5.1, which Lua
loads several times faster than it compiles the source (BENCHMARKS.md "Slurm").

The compiled file is used only while dwsbridge-hooks.lua has the size it was compiled from: edit the
source and it is the source that runs (run `dwsbridge slurm install` again to compile your edit).
A compiled file Lua cannot load (another Lua build) is ignored the same way.
]]

local HOOKS = "@DWSBRIDGE_HOOKS@"
local COMPILED = "@DWSBRIDGE_HOOKS_COMPILED@"
local COMPILED_FROM = tonumber("@DWSBRIDGE_HOOKS_SIZE@")

local function size_of(path)
	local f = io.open(path, "rb")
	if not f then
		return nil
	end
	local size = f:seek("end")
	f:close()
	return size
end

local chunk
if COMPILED ~= "" and COMPILED_FROM and size_of(HOOKS) == COMPILED_FROM then
	chunk = loadfile(COMPILED)
end
if not chunk then
	local err
	chunk, err = loadfile(HOOKS)
	if not chunk then
		error("dwsbridge: cannot load " .. HOOKS .. ": " .. tostring(err) .. " (run `dwsbridge slurm install`)")
	end
end
chunk()
