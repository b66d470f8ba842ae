"""burst_buffer.lua under Lua 5.1 (what Slurm 22.05 links), with a fake `slurm` table.

Three ways in: a fake io.popen (what the shim sends, how it reads results), a fake bridge executable
run through the real /bin/sh (quoting), and the real bridge on a temporary root (the protocol end to
end).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

lupa = pytest.importorskip("lupa")
from lupa import lua51  # noqa: E402

from dwsbridge.cli.slurm import lua_socket_modules, render_loader, render_lua, template  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SUCCESS, ERROR = 0, -1

HOOKS_2205 = {
    "slurm_bb_job_process": ("/state/job.12/script",),
    "slurm_bb_pools": (),
    "slurm_bb_setup": ("12", "1000", "1001", "dws", "1073741824", "/state/job.12/script"),
    "slurm_bb_data_in": ("12", "/state/job.12/script"),
    "slurm_bb_real_size": ("12",),
    "slurm_bb_paths": ("12", "/state/job.12/script", "/state/job.12/pathfile"),
    "slurm_bb_pre_run": ("12", "/state/job.12/script"),
    "slurm_bb_post_run": ("12", "/state/job.12/script"),
    "slurm_bb_data_out": ("12", "/state/job.12/script"),
    "slurm_bb_job_teardown": ("12", "/state/job.12/script", "true"),
    "slurm_bb_get_status": ("workflow", "12"),
}

# What the bridge must receive for each hook, in both Slurm versions.
BRIDGE_ARGS = {
    "slurm_bb_job_process": ["job_process", "/state/job.12/script"],
    "slurm_bb_pools": ["pools"],
    "slurm_bb_setup": ["setup", "12", "1000", "1001", "dws", "1073741824", "/state/job.12/script"],
    "slurm_bb_data_in": ["data_in", "12", "/state/job.12/script"],
    "slurm_bb_paths": ["paths", "12", "/state/job.12/script", "/state/job.12/pathfile"],
    "slurm_bb_pre_run": ["pre_run", "12", "/state/job.12/script"],
    "slurm_bb_post_run": ["post_run", "12", "/state/job.12/script"],
    "slurm_bb_data_out": ["data_out", "12", "/state/job.12/script"],
    "slurm_bb_job_teardown": ["job_teardown", "12", "/state/job.12/script", "true"],
    "slurm_bb_get_status": ["get_status", "workflow", "12"],
}

REQUIRED_2205 = [
    "slurm_bb_job_process",
    "slurm_bb_pools",
    "slurm_bb_job_teardown",
    "slurm_bb_setup",
    "slurm_bb_data_in",
    "slurm_bb_real_size",
    "slurm_bb_paths",
    "slurm_bb_pre_run",
    "slurm_bb_post_run",
    "slurm_bb_data_out",
    "slurm_bb_get_status",
]

LUA_HARNESS = r"""
slurm = { SUCCESS = 0, ERROR = -1, logs = {} }
-- Slurm defines log_info as string.format over its arguments, then logs the result.
function slurm.log_info(...) table.insert(slurm.logs, string.format(...)) end
function slurm.log_error(...) table.insert(slurm.logs, "error: " .. string.format(...)) end

fake = { commands = {}, output = nil }
real_popen = io.popen
function use_fake_popen()
  io.popen = function(cmd, mode)
    table.insert(fake.commands, cmd)
    local out = fake.output
    return {
      read = function(self, fmt) return out end,
      close = function(self) return true end,
    }
  end
end

-- lupa's Lua 5.1 is built without popen: stand in for it with a Python callable that runs the
-- command through the real /bin/sh, as popen(3) does.
function use_shell_popen(run)
  io.popen = function(cmd, mode)
    local out = run(cmd)
    return {
      read = function(self, fmt) return out end,
      close = function(self) return true end,
    }
  end
end

function capture(name, ...)
  local function pack(...) return { n = select("#", ...), ... } end
  return pack(_G[name](...))
end
"""


def run_shell(command: str | bytes) -> bytes:
    if isinstance(command, str):
        command = command.encode()
    proc = subprocess.run([b"/bin/sh", b"-c", command], stdout=subprocess.PIPE, check=False, timeout=120)
    return proc.stdout


def status_line(ok: bool, payload: str) -> str:
    return f"{payload}\n@@DWSBRIDGE rc={0 if ok else 1} len={len(payload.encode())}\n"


class Shim:
    """burst_buffer.lua loaded in a fresh Lua 5.1 state."""

    def __init__(self, source: str, fake_popen: bool = True) -> None:
        self.lua = lua51.LuaRuntime(unpack_returned_tuples=True)
        self.lua.execute(LUA_HARNESS)
        if fake_popen:
            self.lua.globals().use_fake_popen()
        else:
            self.lua.globals().use_shell_popen(run_shell)
        self.lua.execute(source)

    def set_output(self, output: str | None) -> None:
        self.lua.globals().fake.output = output

    def call(self, hook: str, *args: Any) -> tuple[int, Any, Any]:
        """(number of values returned, status, message)."""
        packed = self.lua.globals().capture(hook, *args)
        return packed["n"], packed[1], packed[2]

    def table(self, *values: Any) -> Any:
        return self.lua.table(*values)

    @property
    def commands(self) -> list[str]:
        return list(self.lua.globals().fake.commands.values())

    @property
    def logs(self) -> list[str]:
        return list(self.lua.globals().slurm.logs.values())


@pytest.fixture
def shim() -> Shim:
    shim = Shim(render_lua("/opt/dwsb/bin/python", "/etc/dwsbridge/config.yaml"))
    shim.set_output(status_line(True, ""))
    return shim


# --- shape of the plugin --------------------------------------------------------------------------


def test_every_slurm_2205_hook_and_the_2405_test_hooks_are_defined(shim: Shim) -> None:
    g = shim.lua.globals()
    for name in [*REQUIRED_2205, "slurm_bb_test_data_in", "slurm_bb_test_data_out"]:
        assert lua51.lua_type(g[name]) == "function", name


def test_slurm_directory_shows_the_packaged_templates_not_copies() -> None:
    for name in ("burst_buffer.lua", "burst_buffer.conf"):
        documented = REPO / "slurm" / name
        assert documented.is_symlink(), f"slurm/{name} must link to dwsbridge/data/{name}, not copy it"
        assert documented.resolve() == (REPO / "dwsbridge" / "data" / name).resolve()
        assert documented.read_text() == template(name)


def test_conf_template_sets_directive_and_teardown_failure() -> None:
    lines = [line.strip() for line in template("burst_buffer.conf").splitlines()]
    assert "Directive=DW" in lines
    assert "Flags=TeardownFailure" in lines
    for key in ("StageInTimeout=", "StageOutTimeout=", "OtherTimeout="):
        assert any(line.startswith(key) for line in lines), key


def test_install_fills_interpreter_and_config_as_lua_strings() -> None:
    text = render_lua('/opt/we "ird"\\dir/python', "/etc/dws/config.yaml")
    shim = Shim(text)
    shim.set_output(status_line(True, ""))
    shim.call("slurm_bb_pools")
    assert "'/opt/we \"ird\"\\dir/python' -I -m dwsbridge.slurm pools" in shim.commands[0]
    assert "DWSBRIDGE_CONFIG='/etc/dws/config.yaml'" in shim.commands[0]


def test_without_config_no_environment_is_set() -> None:
    shim = Shim(render_lua("/usr/bin/python3", None))
    shim.set_output(status_line(True, ""))
    shim.call("slurm_bb_pools")
    assert "DWSBRIDGE_CONFIG" not in shim.commands[0]
    assert shim.commands[0].startswith("exec '/usr/bin/python3' -I -m dwsbridge.slurm pools")


def test_uninstalled_template_fails_every_hook_with_a_clear_message() -> None:
    shim = Shim(template("burst_buffer.lua"))
    n, rc, msg = shim.call("slurm_bb_pools")
    assert (n, rc) == (2, ERROR)
    assert "dwsbridge slurm install" in msg
    assert shim.commands == []


# --- arguments --------------------------------------------------------------------------------------


BRIDGED = sorted(BRIDGE_ARGS)


@pytest.mark.parametrize("hook", BRIDGED)
def test_slurm_2205_arguments_reach_the_bridge(shim: Shim, hook: str) -> None:
    shim.call(hook, *HOOKS_2205[hook])
    assert len(shim.commands) == 1
    assert shim.commands[0] == command_for(BRIDGE_ARGS[hook])


@pytest.mark.parametrize("hook", BRIDGED)
def test_slurm_2302_extra_arguments_are_ignored(shim: Shim, hook: str) -> None:
    job_info = shim.table()
    job_info["job_id"] = 12
    args = HOOKS_2205[hook]
    if hook == "slurm_bb_get_status":
        args = ("1000", "1001", *args)  # 23.02: caller's uid and gid first
    elif hook != "slurm_bb_pools":
        args = (*args, "1000", "1001", job_info)
    shim.call(hook, *args)
    assert shim.commands[0] == command_for(BRIDGE_ARGS[hook])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), []),
        (("1000", "1000"), []),
        (("list",), ["list"]),
        (("1000", "1000", "list"), ["list"]),
        (("workflow", "abc"), ["workflow", "abc"]),
        (("1000", "1000", "workflow", "abc"), ["workflow", "abc"]),
        (("workflow",), ["workflow"]),
    ],
)
def test_get_status_words_in_both_shapes(shim: Shim, args: tuple[str, ...], expected: list[str]) -> None:
    shim.call("slurm_bb_get_status", *args)
    assert shim.commands[0] == command_for(["get_status", *expected])


def test_missing_arguments_are_passed_as_empty_strings(shim: Shim) -> None:
    shim.call("slurm_bb_job_teardown", "12")
    assert shim.commands[0] == command_for(["job_teardown", "12", "", ""])


def command_for(bridge_args: list[str]) -> str:
    quoted = " ".join(f"'{a}'" for a in bridge_args[1:])
    tail = f" {quoted}" if quoted else ""
    return (
        "DWSBRIDGE_CONFIG='/etc/dwsbridge/config.yaml' exec '/opt/dwsb/bin/python' -I -m dwsbridge.slurm "
        f"{bridge_args[0]}{tail} </dev/null 2>&1"
    )


# --- result protocol ----------------------------------------------------------------------------------


def test_success_with_payload_returns_the_payload(shim: Shim) -> None:
    pools = '{"pools":[{"id":"dws","quantity":100,"granularity":1}]}'
    shim.set_output(status_line(True, pools))
    assert shim.call("slurm_bb_pools") == (2, SUCCESS, pools)


def test_success_without_payload_returns_only_the_status(shim: Shim) -> None:
    n, rc, msg = shim.call("slurm_bb_post_run", "12", "/s")
    assert (n, rc, msg) == (1, SUCCESS, None)  # one value: never a nil second value


def test_error_returns_the_message(shim: Shim) -> None:
    shim.set_output(status_line(False, "line 3: #DW jobdw bogus=1: unsupported argument 'bogus'"))
    assert shim.call("slurm_bb_job_process", "/s") == (
        2,
        ERROR,
        "line 3: #DW jobdw bogus=1: unsupported argument 'bogus'",
    )


def test_error_without_message_still_says_what_failed(shim: Shim) -> None:
    shim.set_output(status_line(False, ""))
    n, rc, msg = shim.call("slurm_bb_data_in", "12", "/s")
    assert (n, rc) == (2, ERROR)
    assert msg == "dwsbridge data_in failed"


def test_payload_keeps_its_exact_bytes(shim: Shim) -> None:
    payload = "NAME  JOB\nbb1   1\n\n  trailing spaces  \n"
    shim.set_output(status_line(True, payload))
    assert shim.call("slurm_bb_get_status") == (2, SUCCESS, payload)


def test_log_lines_before_the_payload_go_to_the_slurm_log(shim: Shim) -> None:
    output = "@@DWSBRIDGE log dwsbridge: info: workflow=bb12 job=12 state=DataIn complete\n" + status_line(
        True, ""
    )
    shim.set_output(output)
    shim.call("slurm_bb_data_in", "12", "/s")
    assert "dwsbridge: info: workflow=bb12 job=12 state=DataIn complete" in shim.logs


def test_crash_without_status_line_fails_with_the_last_lines(shim: Shim) -> None:
    lines = [f"line {i}" for i in range(10)]
    shim.set_output("Traceback (most recent call last):\n" + "\n".join(lines) + "\nImportError: boom\n")
    n, rc, msg = shim.call("slurm_bb_setup", "12", "1000", "1000", "dws", "1", "/s")
    assert (n, rc) == (2, ERROR)
    assert msg.startswith("dwsbridge setup ended without a result: ")
    assert "ImportError: boom" in msg
    assert "line 9" in msg and "line 0" not in msg


def test_empty_output_is_a_crash(shim: Shim) -> None:
    shim.set_output("")
    n, rc, msg = shim.call("slurm_bb_pre_run", "12", "/s")
    assert (n, rc, msg) == (2, ERROR, "dwsbridge pre_run ended without a result")


def test_nil_read_is_a_crash(shim: Shim) -> None:
    shim.set_output(None)
    n, rc, _msg = shim.call("slurm_bb_paths", "12", "/s", "/p")
    assert (n, rc) == (2, ERROR)


def test_status_line_inside_the_payload_does_not_fool_the_parser(shim: Shim) -> None:
    shim.set_output(status_line(False, "bad\n@@DWSBRIDGE rc=0 len=0"))
    n, rc, msg = shim.call("slurm_bb_data_out", "12", "/s")
    assert (n, rc, msg) == (2, ERROR, "bad\n@@DWSBRIDGE rc=0 len=0")


def test_truncated_output_with_a_lying_length_is_a_crash(shim: Shim) -> None:
    shim.set_output("short\n@@DWSBRIDGE rc=0 len=999\n")
    assert shim.call("slurm_bb_pools")[1] == ERROR


def test_status_line_not_at_a_line_start_is_a_crash(shim: Shim) -> None:
    shim.set_output("junk@@DWSBRIDGE rc=0 len=0\n")
    assert shim.call("slurm_bb_pools")[1] == ERROR


@pytest.mark.parametrize("hook", sorted(HOOKS_2205))
def test_every_hook_logs_one_line_with_its_job(shim: Shim, hook: str) -> None:
    shim.call(hook, *HOOKS_2205[hook])
    mine = [line for line in shim.logs if line.startswith("dwsbridge/lua: ")]
    assert len(mine) == 1
    short = hook.removeprefix("slurm_bb_")
    job = "12" if HOOKS_2205[hook][:1] == ("12",) else "-"
    assert mine[0].startswith(f"dwsbridge/lua: {short} job={job} rc=success")


def test_hooks_with_nothing_to_report_succeed_without_running_the_bridge(shim: Shim) -> None:
    assert shim.call("slurm_bb_test_data_in", "12", "/s", "1000", "1000")[:2] == (1, SUCCESS)
    assert shim.call("slurm_bb_test_data_out", "12", "/s")[:2] == (1, SUCCESS)
    assert shim.call("slurm_bb_real_size", "12", "1000", "1000", shim.table())[:2] == (1, SUCCESS)
    assert shim.commands == []
    assert "dwsbridge/lua: real_size job=12 rc=success" in shim.logs


def test_percent_signs_in_messages_do_not_break_logging(shim: Shim) -> None:
    shim.set_output(status_line(False, "copy_in source=/data/100%/x: not found %s %d"))
    assert shim.call("slurm_bb_data_in", "12", "/s")[2] == "copy_in source=/data/100%/x: not found %s %d"


# --- through the real shell ----------------------------------------------------------------------------

FAKE_BRIDGE = """#!{python}
import json, os, sys
record = os.environ["DWSBRIDGE_CONFIG"]
with open(record, "a") as out:
    out.write(json.dumps(sys.argv[1:]) + "\\n")
payload = "args=%d" % (len(sys.argv) - 5)
sys.stdout.write(payload + "\\n@@DWSBRIDGE rc=0 len=%d\\n" % len(payload))
"""

HOSTILE = [
    "'; touch /tmp/dwsb-pwned #",
    "$(touch /tmp/dwsb-pwned)",
    "`touch /tmp/dwsb-pwned`",
    'quote " and \\ backslash',
    "new\nline",
    "  spaces  ",
    "",
    "ünïcødé",
    "'",
    "''",
    "-m",
]


@pytest.fixture
def fake_bridge(tmp_path: Path) -> Iterator[tuple[Shim, Path]]:
    bridge = tmp_path / "fake-python"
    bridge.write_text(FAKE_BRIDGE.format(python=sys.executable))
    bridge.chmod(bridge.stat().st_mode | stat.S_IXUSR)
    record = tmp_path / "argv.jsonl"
    shim = Shim(render_lua(str(bridge), str(record)), fake_popen=False)
    yield shim, record
    assert not Path("/tmp/dwsb-pwned").exists()


def test_hostile_arguments_reach_the_bridge_unchanged(fake_bridge: tuple[Shim, Path]) -> None:
    shim, record = fake_bridge
    n, rc, msg = shim.call("slurm_bb_get_status", *HOSTILE)
    assert (n, rc, msg) == (2, SUCCESS, f"args={len(HOSTILE)}")
    argv = json.loads(record.read_text().splitlines()[0])
    assert argv == ["-I", "-m", "dwsbridge.slurm", "get_status", *HOSTILE]


def test_nul_bytes_are_dropped_not_truncating_the_command(fake_bridge: tuple[Shim, Path]) -> None:
    shim, record = fake_bridge
    rc = shim.call("slurm_bb_data_in", "12", "/state/sc\0ript")[1]
    assert rc == SUCCESS
    argv = json.loads(record.read_text().splitlines()[0])
    assert argv[3:] == ["data_in", "12", "/state/script"]


def test_a_missing_interpreter_is_an_error(tmp_path: Path) -> None:
    shim = Shim(render_lua(str(tmp_path / "no-such-python"), None), fake_popen=False)
    n, rc, msg = shim.call("slurm_bb_pools")
    assert (n, rc) == (2, ERROR)
    assert "ended without a result" in msg and "no-such-python" in msg


# --- with the real bridge -------------------------------------------------------------------------------


@pytest.fixture
def real_bridge(tmp_path: Path) -> Shim:
    config = tmp_path / "dwsbridge.yaml"
    config.write_text(f"root: {tmp_path / 'root'}\npool_size: 1TiB\nstate_timeout: 30\n")
    env_python = sys.executable
    assert os.path.isabs(env_python)
    return Shim(render_lua(env_python, str(config)), fake_popen=False)


def test_real_bridge_reports_pools(real_bridge: Shim) -> None:
    n, rc, payload = real_bridge.call("slurm_bb_pools")
    assert (n, rc) == (2, SUCCESS)
    assert json.loads(payload) == {
        "pools": [{"id": "dws", "quantity": 1024**4, "granularity": 1, "free": 1024**4}]
    }
    assert any(line.startswith("dwsbridge/lua: pools job=- rc=success") for line in real_bridge.logs)


def test_real_bridge_rejects_an_invalid_directive_naming_the_argument(
    real_bridge: Shim, tmp_path: Path
) -> None:
    script = tmp_path / "job.sh"
    script.write_bytes(b"#!/bin/bash\n#DW jobdw type=xfs capacity=1GiB name=s pool=dws bogus=1\nhostname\n\0")
    n, rc, msg = real_bridge.call("slurm_bb_job_process", str(script), "1000", "1000")
    assert (n, rc) == (2, ERROR)
    assert "line 2" in msg and "'bogus'" in msg


def test_real_bridge_accepts_a_valid_script(real_bridge: Shim, tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_bytes(b"#!/bin/bash\n#DW jobdw type=xfs capacity=1GiB name=scratch pool=dws\nhostname\n\0")
    assert real_bridge.call("slurm_bb_job_process", str(script)) == (1, SUCCESS, None)


def test_real_bridge_bbstat_usage_for_a_non_numeric_job(real_bridge: Shim) -> None:
    assert real_bridge.call("slurm_bb_get_status", "1000", "1000", "workflow", "x1") == (
        2,
        SUCCESS,
        "A job ID must contain only digits.",
    )


# --- the installer -----------------------------------------------------------------------------------------


# --- the loader (what Slurm loads: the hooks compiled, or their source) ------------------------------
def hook_defining(answer: str) -> str:
    return f'function slurm_bb_job_process() return 0, "{answer}" end\n'


def loader_answer(loader: str) -> str:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.execute(loader)
    return str(lua.globals().slurm_bb_job_process()[1])


def test_the_loader_runs_the_compiled_hooks_only_while_their_source_is_unchanged(tmp_path: Path) -> None:
    source, compiled = tmp_path / "dwsbridge-hooks.lua", tmp_path / "dwsbridge-hooks.luac"
    source.write_text(hook_defining("source"))
    compiled.write_text(hook_defining("compiled"))  # loadfile takes text or bytecode alike
    size, compiled_size = source.stat().st_size, compiled.stat().st_size
    assert loader_answer(render_loader(str(source), str(compiled), size, compiled_size)) == "compiled"
    source.write_text(hook_defining("edited source"))  # an admin's edit: another size
    assert loader_answer(render_loader(str(source), str(compiled), size, compiled_size)) == "edited source"
    source.write_text(hook_defining("source"))
    for other in ("cut", "compiled and longer"):  # valid chunks, but not the size install wrote
        compiled.write_text(hook_defining(other))
        assert loader_answer(render_loader(str(source), str(compiled), size, compiled_size)) == "source"
    garbage = b"\x1bLua\x99 not a chunk this Lua can load"
    compiled.write_bytes(garbage)
    assert loader_answer(render_loader(str(source), str(compiled), size, len(garbage))) == "source"
    assert loader_answer(render_loader(str(source), None, None)) == "source"  # installed without luac


def test_the_loader_says_what_to_do_when_the_hooks_are_missing(tmp_path: Path) -> None:
    loader = render_loader(str(tmp_path / "dwsbridge-hooks.lua"), None, None)
    with pytest.raises(lua51.LuaError, match=r"cannot load .*dwsbridge-hooks.lua.*dwsbridge slurm install"):
        lua51.LuaRuntime().execute(loader)


@pytest.mark.skipif(not shutil.which("lua5.1"), reason="Debian's lua5.1 (make debs installs it)")
def test_install_compiles_the_hooks_and_slurms_lua_runs_the_compiled_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dwsbridge.cli import main

    args = ["slurm", "install", "--etc", str(tmp_path), "--no-check", "--agent-socket", "/run/x/a.sock"]
    assert main(args) == 0
    assert "loads the hooks compiled (dwsbridge-hooks.luac" in capsys.readouterr().out
    source = tmp_path / "dwsbridge-hooks.lua"
    assert (tmp_path / "dwsbridge-hooks.luac").read_bytes().startswith(b"\x1bLua")
    # Source replaced by a comment of the same size: only the compiled hooks can define the functions.
    size = source.stat().st_size
    source.write_text("-" * (size - 1) + "\n")
    probe = (
        "slurm = {SUCCESS = 0, ERROR = -1, log_info = print, log_error = print, log_verbose = print}\n"
        f"dofile({str(tmp_path / 'burst_buffer.lua')!r})\n"
        "for _, name in ipairs({'slurm_bb_job_process', 'slurm_bb_setup', 'slurm_bb_job_teardown'}) do\n"
        "  assert(type(_G[name]) == 'function', name)\n"
        "end\n"
        "print('hooks defined')\n"
    )
    proc = subprocess.run(["lua5.1", "-e", probe], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "hooks defined" in proc.stdout, proc.stderr
    source.write_text("-" * size + "\n")  # now another size: the loader must use it (and find nothing)
    proc = subprocess.run(["lua5.1", "-e", probe], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "slurm_bb_job_process" in proc.stderr


def test_install_writes_both_files_and_prints_the_slurm_conf_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dwsbridge.cli import main

    etc = tmp_path / "etc"
    etc.mkdir()
    config = tmp_path / "dwsbridge.yaml"
    config.write_text(f"root: {tmp_path / 'root'}\n")
    rc = main(["slurm", "install", "--etc", str(etc), "--python", sys.executable, "--config", str(config)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "BurstBufferType=burst_buffer/lua" in out
    lua = (etc / "dwsbridge-hooks.lua").read_text()
    assert f'local PYTHON = "{sys.executable}"' in lua
    assert f'local CONFIG = "{config}"' in lua
    assert 'local CONNECT_TIMEOUT = tonumber("1")' in lua and 'local AGENT_TIMEOUT = tonumber("3")' in lua
    assert (etc / "burst_buffer.conf").read_text() == template("burst_buffer.conf")
    for name in ("burst_buffer.lua", "dwsbridge-hooks.lua"):
        assert stat.S_IMODE((etc / name).stat().st_mode) == 0o644


def test_install_sets_the_agent_timeouts_and_refuses_nonsense(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dwsbridge.cli import main

    args = ["slurm", "install", "--etc", str(tmp_path), "--no-check", "--agent-timeout", "0.5"]
    assert main([*args, "--agent-connect-timeout", "0.25", "--agent-silence-timeout", "12"]) == 0
    lua = (tmp_path / "dwsbridge-hooks.lua").read_text()
    assert 'local CONNECT_TIMEOUT = tonumber("0.25")' in lua
    assert 'local AGENT_TIMEOUT = tonumber("0.5")' in lua
    assert 'local SILENCE_TIMEOUT = tonumber("12")' in lua
    assert "lua-socket: " in capsys.readouterr().out  # says whether hooks can reach the agent from Lua
    for bad in ("0", "-1", "soon", "1e9"):
        with pytest.raises(SystemExit) as usage:
            main(["slurm", "install", "--etc", str(tmp_path), "--no-check", "--agent-timeout", bad])
        assert usage.value.code == 2
    assert "--agent-timeout: expected " in capsys.readouterr().err


def test_lua_socket_is_found_where_slurms_lua_looks(tmp_path: Path) -> None:
    from dwsbridge.cli.slurm import LUA_SOCKET_MODULE, lua_module_path

    module = tmp_path / "lib" / "socket" / "unix.so"
    module.parent.mkdir(parents=True)
    module.write_bytes(b"")
    assert lua_module_path(LUA_SOCKET_MODULE, f"{tmp_path}/lib/?.so;;") == str(module)
    found = lua_module_path(LUA_SOCKET_MODULE, "")
    assert found is None or found.endswith("/5.1/socket/unix.so")


LUA_SOCKET_PROBE = """
slurm = {SUCCESS = 0, ERROR = -1}
function slurm.log_info(fmt, text) print(text) end
slurm.log_error = slurm.log_info
dofile(HOOKS)
local rc, payload = slurm_bb_job_process("/state/job.12/script")
print("rc", rc, payload)
print("by require", package.loaded["socket.core"] ~= nil)
print("kept loaded", debug.getregistry()._LOADLIB.__gc == nil)
"""


@pytest.mark.skipif(
    not shutil.which("lua5.1") or lua_socket_modules() is None,
    reason="Debian's lua5.1 and lua-socket (make debs installs them)",
)
@pytest.mark.parametrize("found", ["by-path", "moved"])
def test_hooks_load_lua_socket_from_installs_paths_and_keep_it_loaded(tmp_path: Path, found: str) -> None:
    """Loaded by the paths install found (no search), else by require; either way the C modules stay
    loaded after Lua closes the hook's state, and the hook reaches the agent."""
    import socket
    import threading

    modules = lua_socket_modules()
    assert modules is not None
    if found == "moved":  # lua-socket upgraded to another directory since install
        modules = (str(tmp_path / "gone" / "core.so"), str(tmp_path / "gone" / "unix.so"))
    sock_path = str(tmp_path / "agent.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sock_path)
    listener.listen(1)
    requests: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            requests.append(conn.recv(65536))
            conn.sendall(b"DWSB1 OK\n" + status_line(True, "accepted").encode())

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    hooks = tmp_path / "hooks.lua"
    hooks.write_text(render_lua("/opt/dwsb/bin/python", None, agent_socket=sock_path, socket_modules=modules))
    try:
        proc = subprocess.run(
            ["lua5.1", "-e", f"HOOKS = {str(hooks)!r}\n" + LUA_SOCKET_PROBE],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        server.join(timeout=5)
        listener.close()
    out = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stderr
    assert requests and requests[0].split(b"\0")[:2] == [b"DWSB1", b"job_process"]
    assert "rc\t0\taccepted" in out
    logged = [line for line in out if line.startswith("dwsbridge/lua: job_process job=- rc=success")]
    assert len(logged) == 1 and logged[0].endswith("via=agent")
    assert f"by require\t{'true' if found == 'moved' else 'false'}" in out
    assert "kept loaded\ttrue" in out


def test_only_modules_nobody_but_root_can_replace_are_loaded_by_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path in the hooks is code slurmctld runs: one a user could replace is left to require."""
    from dwsbridge.cli import main
    from dwsbridge.cli.slurm import only_root_can_replace

    lib = tmp_path / "lib" / "socket"
    lib.mkdir(parents=True)
    for name in ("core.so", "unix.so"):
        (lib / name).write_bytes(b"")
    assert not only_root_can_replace(str(lib / "core.so"))  # under /tmp (world-writable) or not root's
    assert not only_root_can_replace("./socket/core.so")  # slurmctld would resolve it in its own cwd
    monkeypatch.setenv("LUA_CPATH", f"{tmp_path}/lib/?.so;;")
    etc = tmp_path / "etc"
    etc.mkdir()
    assert main(["slurm", "install", "--etc", str(etc), "--no-check", "--agent-socket", "/run/x/a.sock"]) == 0
    printed = capsys.readouterr()
    assert "can be replaced by a user other than root" in printed.err
    assert f"lua-socket: present ({lib / 'unix.so'})" in printed.out  # there, only not by path
    hooks = (etc / "dwsbridge-hooks.lua").read_text()
    assert 'local SOCKET_CORE_PATH = ""' in hooks and 'local SOCKET_UNIX_PATH = ""' in hooks
    found = lua_socket_modules("")
    if found is not None and os.geteuid() == 0:  # Debian's lua-socket: root's, symlinks and all
        assert all(only_root_can_replace(module) for module in found)


def test_without_lua_socket_a_hook_relays_to_the_agent_through_a_process() -> None:
    """lupa's Lua has no lua-socket: burst_buffer.lua must start the relay, telling it the socket."""
    shim = Shim(render_lua("/opt/dwsb/bin/python", None, agent_socket="/run/x/agent.sock"))
    shim.set_output(status_line(True, ""))
    assert shim.call("slurm_bb_pools")[1] == SUCCESS
    assert "DWSBRIDGE_AGENT_SOCKET='/run/x/agent.sock'" in shim.commands[0]
    assert shim.logs[-1].endswith("via=process")


def test_install_refuses_a_missing_directory_and_a_broken_interpreter(tmp_path: Path) -> None:
    from dwsbridge.cli import main

    assert main(["slurm", "install", "--etc", str(tmp_path / "nope")]) == 2
    assert main(["slurm", "install", "--etc", str(tmp_path), "--python", "/bin/false"]) == 2
    assert not (tmp_path / "burst_buffer.lua").exists()


def test_install_refuses_an_agent_socket_another_user_could_serve(tmp_path: Path) -> None:
    """burst_buffer.lua cannot ask who serves the socket: nobody but root may be able to create it."""
    from dwsbridge.cli import main

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    for sock in (shared / "agent.sock", shared / "not-yet" / "agent.sock"):
        args = ["slurm", "install", "--etc", str(tmp_path), "--no-check", "--agent-socket", str(sock)]
        assert main(args) == 2
    assert not (tmp_path / "burst_buffer.lua").exists()
