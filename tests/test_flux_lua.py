"""flux/dws-env.lua, the Flux shell plugin that exports the dws_environment event, run in Lua 5.1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

lupa = pytest.importorskip("lupa")
from lupa import lua51  # noqa: E402

PLUGIN = Path(__file__).resolve().parent.parent / "flux" / "dws-env.lua"


def eventlog(*entries: dict[str, Any]) -> str:
    return "".join(json.dumps(entry) + "\n" for entry in entries)


JOBID_F58 = "ƒ2DLRLAEfMh"  # 9007293643358209: above 2^53, where shell.info.jobid (a double) is wrong


def run_plugin(
    log_text: str, jobspec: dict[str, Any], job_env: dict[str, str] | None = None
) -> tuple[dict[str, str], list[str], list[str]]:
    """Load the plugin as the shell would, run its shell.init handler; return what it exported,
    what it logged and the commands it ran."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    env: dict[str, str] = {}
    errors: list[str] = []
    commands: list[str] = []

    def popen(command: str, mode: str = "r") -> Any:
        commands.append(command)
        return lua.eval(
            "function(text) return { read = function(self) return text end, close = function() end } end"
        )(log_text)

    lua.globals().io.popen = popen
    lua.execute("handlers = {}; plugin = { register = function(p) handlers = p.handlers end }")
    shell = lua.eval("{}")
    shell.info = lua.table_from({"jobid": 9007293643358209, "jobspec": lua.table_from({})})
    given = {"FLUX_JOB_ID": JOBID_F58} if job_env is None else job_env
    shell.getenv = lambda key: given.get(key)
    lua.execute("function set_jobspec(info, dw) info.jobspec = { attributes = { system = { dw = dw } } } end")
    dw = ((jobspec.get("attributes") or {}).get("system") or {}).get("dw")
    lua.globals().set_jobspec(shell.info, dw)
    shell.setenv = lambda key, value, overwrite=None: env.__setitem__(key, value)
    shell.log_error = errors.append
    lua.globals().shell = shell
    lua.execute(PLUGIN.read_text())
    lua.eval("handlers[1].fn")()
    return env, errors, commands


def test_exports_the_last_dws_environment_event() -> None:
    variables = {
        "DW_JOB_data": "/var/lib/dwsbridge/storage/jobs/fluxjob-1/data",
        "DW_WORKFLOW_TOKEN": "a.b.c",
    }
    text = eventlog(
        {"timestamp": 1.0, "name": "submit", "context": {"userid": 1000}},
        {"timestamp": 2.0, "name": "dws_environment", "context": {"variables": {"DW_JOB_data": "/old"}}},
        {"timestamp": 3.0, "name": "dws_environment", "context": {"variables": variables}},
        {"timestamp": 4.0, "name": "prolog-finish", "context": {"description": "dws-setup", "status": 0}},
    )
    env, errors, commands = run_plugin(text, {"attributes": {"system": {"dw": "#DW jobdw ..."}}})
    assert env == variables
    assert errors == []
    assert commands == [f"flux job eventlog --format=json {JOBID_F58} 2>/dev/null"]


def test_decodes_json_escapes() -> None:
    variables = {"A": 'quote " back \\ slash / tab \t', "B": "caf\u00e9 \u2603 \U0001f600", "C": ""}
    text = eventlog({"timestamp": 1.0, "name": "dws_environment", "context": {"variables": variables}})
    env, _, _ = run_plugin(text, {"attributes": {"system": {"dw": "x"}}})
    assert env == variables


def test_leaves_jobs_without_dw_alone() -> None:
    env, errors, commands = run_plugin("", {"attributes": {"system": {}}})
    assert (env, errors, commands) == ({}, [], [])


def test_says_so_when_the_event_is_missing() -> None:
    env, errors, _ = run_plugin(
        eventlog({"timestamp": 1.0, "name": "submit", "context": {}}), {"attributes": {"system": {"dw": "x"}}}
    )
    assert env == {}
    assert errors and "no dws_environment event" in errors[0]


def test_without_flux_job_id_it_reads_no_eventlog_and_says_so() -> None:
    text = eventlog({"timestamp": 1.0, "name": "dws_environment", "context": {"variables": {"A": "b"}}})
    env, errors, commands = run_plugin(text, {"attributes": {"system": {"dw": "#DW"}}}, job_env={})
    assert (env, commands) == ({}, [])
    assert errors == ["dwsbridge: FLUX_JOB_ID is not set; DW_* variables are not set"]
