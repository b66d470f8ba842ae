--[[
burst_buffer.lua: what Slurm's burst_buffer/lua plugin loads, written by `dwsbridge slurm install`.

Slurm compiles this file afresh for every hook it calls, and job_process runs inside slurmctld for
every sbatch. So this file only loads the hooks: they are in dwsbridge-hooks.lua beside it (the
dwsbridge shim, readable), and install compiles that to dwsbridge-hooks.luac with luac5.1, which Lua
loads several times faster than it compiles the source (BENCHMARKS.md "Slurm").

The compiled file is used only while dwsbridge-hooks.lua has the size it was compiled from: edit the
source and it is the source that runs (run `dwsbridge slurm install` again to compile your edit).
A compiled file Lua cannot load (another Lua build), or not of the size install wrote, is ignored
the same way.
]]

local HOOKS = "@DWSBRIDGE_HOOKS@"
local COMPILED = "@DWSBRIDGE_HOOKS_COMPILED@"
local COMPILED_FROM = tonumber("@DWSBRIDGE_HOOKS_SIZE@")
local COMPILED_SIZE = tonumber("@DWSBRIDGE_HOOKS_COMPILED_SIZE@")

-- Every system call here is paid on every sbatch, and costs most when the CPU comes to it cold, so
-- the two files are read with as few as stdio allows (BENCHMARKS.md "Slurm").

local function size_of(path)
	local f = io.open(path, "rb")
	if not f then
		return nil
	end
	f:setvbuf("no") -- to the end without filling a buffer first
	local size = f:seek("end")
	f:close()
	return size
end

-- The compiled hooks read in one open, then loaded (loadfile opens a compiled file twice and seeks
-- back). nil when the file is not of the size install wrote: one byte more is read to tell.
local function load_compiled()
	local f = io.open(COMPILED, "rb")
	if not f then
		return nil
	end
	local code = f:read(COMPILED_SIZE + 1)
	f:close()
	if not code or #code ~= COMPILED_SIZE then
		return nil
	end
	return loadstring(code, "@" .. HOOKS)
end

local chunk
if COMPILED ~= "" and COMPILED_FROM and COMPILED_SIZE and size_of(HOOKS) == COMPILED_FROM then
	chunk = load_compiled()
end
if not chunk then
	local err
	chunk, err = loadfile(HOOKS)
	if not chunk then
		error("dwsbridge: cannot load " .. HOOKS .. ": " .. tostring(err) .. " (run `dwsbridge slurm install`)")
	end
end
chunk()
