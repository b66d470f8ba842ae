"""The Slurm hook handlers on the local backend: in-process, and as `python -m dwsbridge.slurm`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dwsbridge.config import Config
from dwsbridge.lifecycle import Lifecycle
from dwsbridge.slurm import (
    BBSTAT_USAGE,
    NOT_DIGITS,
    SCRIPT_READ,
    HookResult,
    SlurmHooks,
    bbstat_words,
    read_script,
    run_hook,
    write_result,
)

UID, GID = os.getuid(), os.getgid()
JOBDW = "#DW jobdw type=xfs capacity=1GiB name=scratch pool=dws"


def script(path: Path, *directives: str, body: str = "hostname\n") -> str:
    """A job script as Slurm hands it to hooks: leading comment block, NUL at the end."""
    lines = ["#!/bin/bash", "#SBATCH --time=1", *directives]
    path.write_bytes(("\n".join(lines) + "\n" + body).encode() + b"\0")
    return str(path)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(root=tmp_path / "root", state_timeout=30.0, pool_size=2 * 1024**4)


@pytest.fixture
def hooks(config: Config) -> SlurmHooks:
    return SlurmHooks(config)


@pytest.fixture
def lc(hooks: SlurmHooks) -> Lifecycle:
    return hooks.lifecycle


def call(hooks: SlurmHooks, hook: str, *args: str) -> HookResult:
    return run_hook(hooks, hook, list(args))


def setup_job(hooks: SlurmHooks, job: str, path: str, pool: str = "dws") -> HookResult:
    return call(hooks, "setup", job, str(UID), str(GID), pool, str(1024**3), path)


# --- job_process --------------------------------------------------------------------------------------


def test_job_process_accepts_a_script_without_directives_silently(hooks: SlurmHooks, tmp_path: Path) -> None:
    assert call(hooks, "job_process", script(tmp_path / "j")) == HookResult(True, "")


def test_job_process_accepts_valid_directives(hooks: SlurmHooks, tmp_path: Path) -> None:
    path = script(tmp_path / "j", JOBDW, "#DW copy_in source=/etc/hostname destination=$DW_JOB_scratch/h")
    assert call(hooks, "job_process", path) == HookResult(True, "")


def test_job_process_names_line_and_argument_of_every_problem(hooks: SlurmHooks, tmp_path: Path) -> None:
    path = script(tmp_path / "j", JOBDW + " colour=blue", "#DW copy_out source=/x")
    result = call(hooks, "job_process", path)
    assert not result.ok
    assert "line 3" in result.payload and "'colour'" in result.payload
    assert "line 4" in result.payload and "destination" in result.payload


def test_job_process_tells_how_to_fix_capacity_without_pool(hooks: SlurmHooks, tmp_path: Path) -> None:
    path = script(tmp_path / "j", "#DW jobdw type=xfs capacity=1GiB name=scratch")
    result = call(hooks, "job_process", path)
    assert not result.ok
    assert "pool=dws" in result.payload


def test_job_process_fails_clearly_on_an_unreadable_script(hooks: SlurmHooks, tmp_path: Path) -> None:
    result = call(hooks, "job_process", str(tmp_path / "missing"))
    assert not result.ok
    assert "cannot read job script" in result.payload


@pytest.mark.parametrize("size", [0, 100, SCRIPT_READ - 1, SCRIPT_READ, SCRIPT_READ + 1, 5 * SCRIPT_READ + 7])
def test_a_script_is_read_whole_whatever_its_size(tmp_path: Path, size: int) -> None:
    """Read in SCRIPT_READ pieces; Slurm's trailing NUL is dropped, nothing else."""
    body = (b"#DW jobdw type=xfs capacity=1GiB name=s pool=dws\n" * (size // 50 + 1))[:size]
    path = tmp_path / "script"
    path.write_bytes(body + b"\0")
    assert read_script(str(path)) == body.decode()


# --- pools ----------------------------------------------------------------------------------------------


def test_pools_reports_the_configured_pool_as_json(hooks: SlurmHooks) -> None:
    result = call(hooks, "pools")
    assert result.ok
    pool = {"id": "dws", "quantity": 2 * 1024**4, "granularity": 1, "free": 2 * 1024**4}
    assert json.loads(result.payload) == {"pools": [pool]}


def test_pools_sizes_from_local_storage_by_default(tmp_path: Path) -> None:
    result = call(SlurmHooks(Config(root=tmp_path / "r", pool_name="fast")), "pools")
    pool = json.loads(result.payload)["pools"][0]
    assert pool["id"] == "fast" and pool["quantity"] > 0


# --- setup and the walk ----------------------------------------------------------------------------------


def test_setup_creates_the_workflow_with_the_jobs_ids(
    hooks: SlurmHooks, lc: Lifecycle, tmp_path: Path
) -> None:
    assert setup_job(hooks, "12", script(tmp_path / "j", JOBDW)).ok
    status = lc.status("bb12")
    assert (status.job_id, status.uid, status.gid) == ("12", UID, GID)
    assert (status.desired, status.current, status.ready, status.status) == (
        "Setup",
        "Setup",
        True,
        "Completed",
    )


def test_setup_removes_slurms_pool_key_before_dws_sees_the_directive(
    hooks: SlurmHooks, lc: Lifecycle, tmp_path: Path
) -> None:
    setup_job(hooks, "13", script(tmp_path / "j", JOBDW))
    directives = lc.backend.get("bb13")["spec"]["dwDirectives"]
    assert directives == ["#DW jobdw type=xfs capacity=1GiB name=scratch"]


def test_setup_accepts_slurms_null_pool(hooks: SlurmHooks, lc: Lifecycle, tmp_path: Path) -> None:
    path = script(tmp_path / "j", "#DW copy_in source=/etc/hostname destination=/tmp/x")
    # a job with no capacity= line has no pool: Slurm passes "(null)"
    assert setup_job(hooks, "14", path, pool="(null)").ok


def test_setup_without_directives_creates_nothing(hooks: SlurmHooks, lc: Lifecycle, tmp_path: Path) -> None:
    assert setup_job(hooks, "15", script(tmp_path / "j")).ok
    assert not lc.exists("bb15")


def test_setup_retried_is_idempotent(hooks: SlurmHooks, lc: Lifecycle, tmp_path: Path) -> None:
    path = script(tmp_path / "j", JOBDW)
    assert setup_job(hooks, "16", path).ok
    assert setup_job(hooks, "16", path).ok
    assert lc.status("bb16").desired == "Setup"


def test_setup_replaces_a_workflow_left_over_from_an_earlier_run(
    hooks: SlurmHooks, lc: Lifecycle, tmp_path: Path
) -> None:
    path = script(tmp_path / "j", JOBDW)
    setup_job(hooks, "17", path)
    call(hooks, "data_in", "17", path)
    assert lc.status("bb17").desired == "DataIn"
    assert setup_job(hooks, "17", path).ok
    assert lc.status("bb17").desired == "Setup"


def test_setup_refuses_invalid_directives(hooks: SlurmHooks, lc: Lifecycle, tmp_path: Path) -> None:
    result = setup_job(
        hooks, "18", script(tmp_path / "j", "#DW jobdw type=nope capacity=1GiB name=ab pool=dws")
    )
    assert not result.ok and "type" in result.payload
    assert not lc.exists("bb18")


def test_a_job_walks_every_state_and_teardown_leaves_nothing(
    hooks: SlurmHooks, lc: Lifecycle, config: Config, tmp_path: Path
) -> None:
    path = script(tmp_path / "j", JOBDW)
    path_file = tmp_path / "pathfile"
    assert setup_job(hooks, "20", path).ok
    assert call(hooks, "data_in", "20", path).ok
    assert call(hooks, "real_size", "20") == HookResult(True, "")
    assert call(hooks, "paths", "20", path, str(path_file)).ok
    env = dict(line.split("=", 1) for line in path_file.read_text().splitlines())
    assert env["DW_WORKFLOW_NAME"] == "bb20"
    storage = Path(env["DW_JOB_scratch"])
    assert storage.is_dir()
    for hook, state in (("pre_run", "PreRun"), ("post_run", "PostRun"), ("data_out", "DataOut")):
        assert call(hooks, hook, "20", path).ok, hook
        assert lc.status("bb20").current == state
    assert call(hooks, "job_teardown", "20", path, "false").ok
    assert not lc.exists("bb20")
    assert not storage.exists()


def test_paths_hands_the_token_over_in_the_jobs_own_file_never_in_the_path_file(
    hooks: SlurmHooks, config: Config, tmp_path: Path
) -> None:
    """slurmctld logs path_file whole (DebugFlags=BurstBuffer): the token goes to the 0600 per-job file
    the TaskProlog exports."""
    import stat

    from dwsbridge.job_env import JobEnvFiles

    path = script(tmp_path / "j", JOBDW + " requires=copy-offload")
    assert setup_job(hooks, "21", path).ok, "setup"
    path_file = tmp_path / "pathfile"
    assert call(hooks, "paths", "21", path, str(path_file)).ok
    env = dict(line.split("=", 1) for line in path_file.read_text().splitlines())
    assert "DW_WORKFLOW_TOKEN" not in env and env["DW_WORKFLOW_NAME"] == "bb21"
    job_file = JobEnvFiles(config.job_env_dir).path("21")
    st = job_file.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, os.getuid())
    (token,) = [line.split("=", 1)[1] for line in job_file.read_text().splitlines()]
    assert token.count(".") == 2  # a JWT
    assert call(hooks, "job_teardown", "21", path, "true").ok
    assert not job_file.exists()


def test_paths_for_a_job_without_workflow_writes_nothing(hooks: SlurmHooks, tmp_path: Path) -> None:
    path_file = tmp_path / "pathfile"
    assert call(hooks, "paths", "22", script(tmp_path / "j"), str(path_file)).ok
    assert not path_file.exists()


def test_state_hooks_fail_when_a_dw_job_has_no_workflow(hooks: SlurmHooks, tmp_path: Path) -> None:
    result = call(hooks, "data_in", "23", script(tmp_path / "j", JOBDW))
    assert not result.ok
    assert "bb23" in result.payload and "does not exist" in result.payload


def test_state_hooks_succeed_quietly_for_a_job_without_directives(hooks: SlurmHooks, tmp_path: Path) -> None:
    path = script(tmp_path / "j")
    for hook in ("data_in", "pre_run", "post_run", "data_out"):
        assert call(hooks, hook, "24", path) == HookResult(True, ""), hook


def test_state_hook_out_of_order_names_the_workflow_and_state(hooks: SlurmHooks, tmp_path: Path) -> None:
    path = script(tmp_path / "j", JOBDW)
    setup_job(hooks, "25", path)
    result = call(hooks, "post_run", "25", path)
    assert not result.ok
    assert result.payload.startswith("workflow bb25: cannot move to PostRun: ")


# --- teardown ----------------------------------------------------------------------------------------------


def test_teardown_is_idempotent(hooks: SlurmHooks, lc: Lifecycle, tmp_path: Path) -> None:
    path = script(tmp_path / "j", JOBDW)
    setup_job(hooks, "30", path)
    assert call(hooks, "job_teardown", "30", path, "false").ok
    assert call(hooks, "job_teardown", "30", path, "false").ok
    assert not lc.exists("bb30")


def test_teardown_of_an_unknown_job_succeeds(hooks: SlurmHooks, tmp_path: Path) -> None:
    assert call(hooks, "job_teardown", "31", script(tmp_path / "j"), "true") == HookResult(True, "")


def test_teardown_passes_slurms_hurry_flag(
    hooks: SlurmHooks, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = script(tmp_path / "j", JOBDW)
    setup_job(hooks, "32", path)
    with caplog.at_level(logging.INFO, logger="dwsbridge"):
        assert call(hooks, "job_teardown", "32", path, "true").ok
    assert "workflow=bb32 teardown complete hurry=True" in caplog.text


# --- get_status ---------------------------------------------------------------------------------------------


def test_bbstat_workflow_prints_the_upstream_line(hooks: SlurmHooks, tmp_path: Path) -> None:
    path = script(tmp_path / "j", JOBDW)
    setup_job(hooks, "40", path)
    call(hooks, "data_in", "40", path)
    assert call(hooks, "get_status", "workflow", "40") == HookResult(
        True, "desiredState=DataIn currentState=DataIn status=Completed"
    )


def test_bbstat_accepts_slurm_2302_uid_and_gid_first(hooks: SlurmHooks, tmp_path: Path) -> None:
    setup_job(hooks, "41", script(tmp_path / "j", JOBDW))
    result = call(hooks, "get_status", "1000", "1000", "workflow", "41")
    assert result.payload == "desiredState=Setup currentState=Setup status=Completed"


def test_bbstat_non_numeric_job_id(hooks: SlurmHooks) -> None:
    assert call(hooks, "get_status", "workflow", "abc") == HookResult(True, NOT_DIGITS)


def test_bbstat_unknown_job_says_so(hooks: SlurmHooks) -> None:
    result = call(hooks, "get_status", "workflow", "999")
    assert result.ok and "No workflow for job 999" in result.payload


@pytest.mark.parametrize("words", [["workflow"], ["bogus"], ["workflow", "1", "2"]])
def test_bbstat_other_words_print_usage(hooks: SlurmHooks, words: list[str]) -> None:
    assert call(hooks, "get_status", *words) == HookResult(True, BBSTAT_USAGE)


def test_bbstat_list_shows_a_table(hooks: SlurmHooks, tmp_path: Path) -> None:
    setup_job(hooks, "42", script(tmp_path / "j", JOBDW))
    for words in ([], ["list"], [str(UID), str(GID)]):
        lines = call(hooks, "get_status", *words).payload.splitlines()
        assert lines[0].split() == ["NAME", "JOB", "USER", "DESIRED", "CURRENT", "READY", "STATUS", "AGE"]
        assert lines[1].split()[:2] == ["bb42", "42"]
        assert lines[1].split()[3:7] == ["Setup", "Setup", "true", "Completed"]


def test_bbstat_list_when_empty(hooks: SlurmHooks) -> None:
    assert "(no workflows)" in call(hooks, "get_status").payload


def test_bbstat_words_strip_only_two_leading_numbers() -> None:
    assert bbstat_words(["0", "0", "workflow", "3"]) == ["workflow", "3"]
    assert bbstat_words(["workflow", "3"]) == ["workflow", "3"]
    assert bbstat_words([]) == []


# --- dispatch and protocol -----------------------------------------------------------------------


def test_unknown_hook_and_wrong_argument_counts_fail(hooks: SlurmHooks) -> None:
    assert not call(hooks, "bogus").ok
    result = call(hooks, "data_in", "1")
    assert not result.ok and "data_in takes 2..2 arguments, got 1" in result.payload


def test_non_numeric_job_id_fails(hooks: SlurmHooks, tmp_path: Path) -> None:
    result = call(hooks, "data_in", "12a", script(tmp_path / "j"))
    assert not result.ok and "digits" in result.payload


def test_unexpected_exceptions_become_a_failure(
    hooks: SlurmHooks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom() -> HookResult:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(hooks, "pools", boom)
    result = call(hooks, "pools")
    assert result == HookResult(False, "dwsbridge internal error in pools: RuntimeError: kaboom")


def test_write_result_ends_with_the_status_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with out.open("wb") as stream:
        write_result(HookResult(False, "ünïcode\nmessage"), stream)
    payload = "ünïcode\nmessage".encode()
    assert out.read_bytes() == payload + b"\n@@DWSBRIDGE rc=1 len=%d\n" % len(payload)


def run_bridge(config_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DWSBRIDGE_CONFIG": str(config_file)}
    return subprocess.run(
        [sys.executable, "-I", "-m", "dwsbridge.slurm", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "dwsbridge.yaml"
    path.write_text(f"root: {tmp_path / 'root'}\npool_name: fast\npool_size: 1GiB\n")
    return path


def test_module_entry_prints_payload_then_status(config_file: Path) -> None:
    proc = run_bridge(config_file, "pools")
    assert proc.returncode == 0
    payload, status = proc.stdout.rsplit("\n", 2)[:2]
    assert json.loads(payload)["pools"][0] == {
        "id": "fast",
        "quantity": 1024**3,
        "granularity": 1,
        "free": 1024**3,
    }
    assert status == f"@@DWSBRIDGE rc=0 len={len(payload)}"


def test_module_entry_walks_a_job_and_logs_with_the_protocol_prefix(
    config_file: Path, tmp_path: Path
) -> None:
    path = script(tmp_path / "j", "#DW jobdw type=xfs capacity=1GiB name=scratch pool=fast")
    proc = run_bridge(config_file, "setup", "50", str(UID), str(GID), "fast", "1", path)
    assert proc.stdout.endswith("\n@@DWSBRIDGE rc=0 len=0\n"), proc.stdout + proc.stderr
    assert "@@DWSBRIDGE log dwsbridge: info: workflow=bb50 job=50" in proc.stderr
    status = run_bridge(config_file, "get_status", "workflow", "50")
    assert status.stdout.startswith("desiredState=Setup currentState=Setup status=Completed\n")
    teardown = run_bridge(config_file, "job_teardown", "50", path, "true")
    assert teardown.returncode == 0, teardown.stdout + teardown.stderr


def test_module_entry_failure_exits_nonzero_with_the_message(config_file: Path, tmp_path: Path) -> None:
    path = script(tmp_path / "j", "#DW jobdw type=xfs capacity=1GiB name=scratch")
    proc = run_bridge(config_file, "job_process", path)
    assert proc.returncode == 1
    assert "add pool=fast" in proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("@@DWSBRIDGE rc=1 len=")


def test_module_entry_without_a_hook_prints_usage_as_a_failure(config_file: Path) -> None:
    proc = run_bridge(config_file)
    assert proc.returncode == 1 and "usage:" in proc.stdout


def test_job_process_does_not_import_the_kubernetes_client_or_the_backend(
    config_file: Path, tmp_path: Path
) -> None:
    path = script(tmp_path / "j", JOBDW)
    code = (
        "import sys; from dwsbridge.slurm import main; rc = main(['job_process', sys.argv[1]]);"
        "bad = [m for m in sys.modules if m.startswith(('kubernetes', 'dwsbridge.backends', 'urllib3'))];"
        "print('IMPORTED', bad, file=sys.stderr)"
    )
    env = {"PATH": "/usr/bin:/bin", "DWSBRIDGE_CONFIG": str(config_file)}
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code, path], env=env, capture_output=True, text=True, check=False
    )
    assert "IMPORTED []" in proc.stderr, proc.stderr
