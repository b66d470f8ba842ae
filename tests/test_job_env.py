"""The job's environment on its way into a Slurm job: the KEY=VALUE rules, the per-job file pre_run
writes when the backend knows the environment only at PreRun, the TaskProlog that exports it, and the
hooks that write and remove it (against the DWS stand-in, and on the local backend)."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dwsbridge.cli.slurm import render_task_prolog
from dwsbridge.config import Config
from dwsbridge.errors import DwsBridgeError
from dwsbridge.job_env import TASK_PROLOG_LINE_LIMIT, JobEnvFiles, env_lines
from dwsbridge.slurm import HookResult, SlurmHooks, run_hook

if TYPE_CHECKING:
    from tests.standin_support import RunningStandIn

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="hands files to another uid (needs root)")
JOB_UID, JOB_GID = (65534, 65534) if ROOT else (os.getuid(), os.getgid())  # nobody:nogroup
JOBDW = "#DW jobdw type=xfs capacity=1GiB name=scratch pool=dws requires=copy-offload"


# --- the KEY=VALUE rules -----------------------------------------------------------------------------------


def test_env_lines_are_sorted_key_value_lines() -> None:
    lines, skipped = env_lines({"DW_JOB_b": "/mnt/b", "DW_JOB_a": "/mnt/a x=y 'q' \"d\" $HOME"})
    assert lines == ["DW_JOB_a=/mnt/a x=y 'q' \"d\" $HOME\n", "DW_JOB_b=/mnt/b\n"]
    assert skipped == []


@pytest.mark.parametrize("name", ["", "1ST", "A-B", "A=B", "A B", "export X", "Ä"])
def test_env_lines_leave_out_names_that_are_not_identifiers(name: str) -> None:
    assert env_lines({name: "v", "OK": "v"}) == (["OK=v\n"], [name])


@pytest.mark.parametrize("value", ["a\nexport LD_PRELOAD=/tmp/x.so", "a\rb", "a\0b"])
def test_env_lines_leave_out_values_that_would_break_the_line(value: str) -> None:
    assert env_lines({"EVIL": value}) == ([], ["EVIL"])


def test_task_prolog_lines_must_fit_slurms_read() -> None:
    fits = "x" * (TASK_PROLOG_LINE_LIMIT - len("export LONG=\n"))
    assert env_lines({"LONG": fits}, line_limit=TASK_PROLOG_LINE_LIMIT)[1] == []
    assert env_lines({"LONG": fits + "x"}, line_limit=TASK_PROLOG_LINE_LIMIT)[1] == ["LONG"]
    assert env_lines({"LONG": fits + "x"})[1] == []  # path_file has no such limit


# --- the per-job file ---------------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> JobEnvFiles:
    return JobEnvFiles(tmp_path / "spool" / "job-env")


def test_the_file_is_private_to_the_jobs_user_in_a_root_owned_unlistable_directory(
    files: JobEnvFiles,
) -> None:
    skipped = files.write("42", {"DW_JOB_x": "/mnt/x", "BAD NAME": "y"}, uid=JOB_UID, gid=JOB_GID)
    assert skipped == ["BAD NAME"]
    path = files.path("42")
    assert path == files.directory / "42.env"
    assert path.read_text() == "DW_JOB_x=/mnt/x\n"
    st = path.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, JOB_UID, JOB_GID)
    dst = files.directory.stat()
    assert (stat.S_IMODE(dst.st_mode), dst.st_uid) == (0o711, os.geteuid())
    assert [p.name for p in files.directory.iterdir()] == ["42.env"]  # no temporary file left


def test_writing_again_replaces_the_file(files: JobEnvFiles) -> None:
    files.write("42", {"A": "1"}, uid=JOB_UID, gid=JOB_GID)
    files.write("42", {"B": "2"}, uid=JOB_UID, gid=JOB_GID)
    assert files.path("42").read_text() == "B=2\n"


def test_remove_is_idempotent(files: JobEnvFiles) -> None:
    assert files.remove("42") is False  # not even the directory exists
    files.write("42", {"A": "1"}, uid=JOB_UID, gid=JOB_GID)
    assert files.remove("42") is True
    assert not files.path("42").exists()
    assert files.remove("42") is False


def test_a_job_id_must_be_digits(files: JobEnvFiles) -> None:
    with pytest.raises(DwsBridgeError, match="digits"):
        files.path("../42")


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o775])
def test_a_directory_others_may_write_is_refused(files: JobEnvFiles, mode: int) -> None:
    files.directory.mkdir(parents=True)
    os.chmod(files.directory, mode)
    with pytest.raises(DwsBridgeError, match=r"must be owned by uid .* chmod 0711"):
        files.write("42", {"A": "1"}, uid=JOB_UID, gid=JOB_GID)
    assert not files.path("42").exists()


@needs_root
def test_a_directory_owned_by_someone_else_is_refused(files: JobEnvFiles) -> None:
    files.directory.mkdir(parents=True, mode=0o711)
    os.chown(files.directory, JOB_UID, JOB_GID)
    with pytest.raises(DwsBridgeError, match=f"it is uid {JOB_UID}"):
        files.write("42", {"A": "1"}, uid=JOB_UID, gid=JOB_GID)


# --- the TaskProlog -----------------------------------------------------------------------------------------


def prolog(tmp_path: Path, env_dir: Path) -> Path:
    path = tmp_path / "dwsbridge-task-prolog"
    path.write_text(render_task_prolog(str(env_dir)))
    path.chmod(0o755)
    return path


def run_prolog(
    script: Path, job: str | None, *, as_job_user: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if job is not None:
        env["SLURM_JOB_ID"] = job
    user = {"user": JOB_UID, "group": JOB_GID, "extra_groups": []} if ROOT and as_job_user else {}
    return subprocess.run(
        [str(script)], env=env, capture_output=True, text=True, timeout=30, check=False, **user
    )


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A directory the job's user can traverse (pytest's tmp_path is root-only)."""
    base = Path("/tmp") / f"dwsb-job-env-test-{os.getpid()}"
    base.mkdir(mode=0o755)
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_the_task_prolog_exports_the_jobs_file_as_its_user(shared: Path) -> None:
    env_dir = shared / "env dir with 'quotes' and $dollar"
    files = JobEnvFiles(env_dir)
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLWNvbnRhaW5lciJ9.sig"
    files.write("7", {"DW_JOB_scratch": "/mnt/nnf/a b", "DW_WORKFLOW_TOKEN": token}, uid=JOB_UID, gid=JOB_GID)
    out = run_prolog(prolog(shared, env_dir), "7")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"export DW_JOB_scratch=/mnt/nnf/a b\nexport DW_WORKFLOW_TOKEN={token}\n"


def test_the_task_prolog_prints_nothing_without_a_file(shared: Path) -> None:
    script = prolog(shared, shared / "missing")
    for job in ("7", None, "", "7/../8", "7;id"):
        out = run_prolog(script, job)
        assert (out.returncode, out.stdout) == (0, ""), job


@needs_root
def test_the_task_prolog_cannot_read_another_users_file(shared: Path) -> None:
    env_dir = shared / "env"
    JobEnvFiles(env_dir).write("7", {"A": "1"}, uid=0, gid=0)
    out = run_prolog(prolog(shared, env_dir), "7")
    assert (out.returncode, out.stdout) == (0, "")


def test_the_task_prolog_passes_on_only_well_formed_lines(shared: Path) -> None:
    env_dir = shared / "env"
    JobEnvFiles(env_dir).write("7", {}, uid=JOB_UID, gid=JOB_GID)
    lines = [
        "GOOD=1",
        "print hello",  # a TaskProlog command of its own: never passed on
        "export X=y",
        "unset PATH",
        "BAD-NAME=2",
        "9LIVES=3",
        "NO_EQUALS",
        "LONG=" + "x" * 4000,
        "EMPTY=",
        "LAST=no newline at the end",
    ]
    files = JobEnvFiles(env_dir)
    with open(files.path("7"), "w") as out:  # a file the bridge would never write
        out.write("\n".join(lines))
    out = run_prolog(prolog(shared, env_dir), "7")
    assert out.stdout == "export GOOD=1\nexport EMPTY=\nexport LAST=no newline at the end\n"


# --- the installer ----------------------------------------------------------------------------------------


def test_install_ships_the_task_prolog_and_prints_its_slurm_conf_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dwsbridge.cli import main

    etc = tmp_path / "etc"
    etc.mkdir()
    config = tmp_path / "dwsbridge.yaml"
    config.write_text(f"root: {tmp_path / 'root'}\nslurm_env_dir: /shared/dwsbridge/env\n")
    (etc / "slurm.conf").write_text("BurstBufferType=burst_buffer/lua\nTaskProlog=/etc/slurm/site-prolog\n")
    assert main(["slurm", "install", "--etc", str(etc), "--no-check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    script = etc / "dwsbridge-task-prolog"
    assert f"  TaskProlog={script}\n" in out
    assert "BurstBufferType" not in out.split("add to", 1)[1]  # already there
    assert "already names another TaskProlog (TaskProlog=/etc/slurm/site-prolog)" in out
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    assert "env_dir=/shared/dwsbridge/env\n" in script.read_text()


def test_install_defaults_the_env_dir_under_the_root(tmp_path: Path) -> None:
    from dwsbridge.cli import main

    config = tmp_path / "dwsbridge.yaml"
    config.write_text(f"root: {tmp_path / 'root'}\n")
    assert main(["slurm", "install", "--etc", str(tmp_path), "--no-check", "--config", str(config)]) == 0
    assert f"env_dir={tmp_path / 'root' / 'job-env'}\n" in (tmp_path / "dwsbridge-task-prolog").read_text()


# --- the hooks ---------------------------------------------------------------------------------------------


def script(path: Path, *directives: str) -> str:
    path.write_bytes(("\n".join(["#!/bin/bash", *directives]) + "\nhostname\n").encode() + b"\0")
    return str(path)


def call(hooks: SlurmHooks, hook: str, *args: str) -> HookResult:
    return run_hook(hooks, hook, list(args))


def test_paths_on_a_prerun_backend_writes_name_and_namespace_without_the_cluster(tmp_path: Path) -> None:
    """kubeconfig points nowhere: any API call would fail, and the client must not even be imported."""
    job_script = script(tmp_path / "job.sh", JOBDW)
    plain_script = script(tmp_path / "plain.sh")
    code = (
        "import sys; from dwsbridge.config import Config; from dwsbridge.slurm import SlurmHooks, run_hook;"
        "h = SlurmHooks(Config(backend='kubernetes', kubeconfig='/nonexistent', namespace='ns1',"
        f" root={str(tmp_path)!r}));"
        f"print(run_hook(h, 'paths', ['12', {job_script!r}, {str(tmp_path / 'paths')!r}]).ok,"
        f" run_hook(h, 'paths', ['13', {plain_script!r}, {str(tmp_path / 'plain')!r}]).ok,"
        " 'kubernetes' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["True", "True", "False"]
    assert (tmp_path / "paths").read_text() == "DW_WORKFLOW_NAME=bb12\nDW_WORKFLOW_NAMESPACE=ns1\n"
    assert not (tmp_path / "plain").exists()


def test_on_the_local_backend_paths_has_everything_but_the_token_which_goes_to_the_job_file(
    tmp_path: Path,
) -> None:
    config = Config(root=tmp_path / "root", state_timeout=30.0, pool_size=1 << 40)
    hooks = SlurmHooks(config)
    path = script(tmp_path / "job.sh", JOBDW)
    assert call(hooks, "setup", "30", str(os.getuid()), str(os.getgid()), "dws", "1", path).ok
    assert call(hooks, "data_in", "30", path).ok
    assert call(hooks, "paths", "30", path, str(tmp_path / "paths")).ok
    assert call(hooks, "pre_run", "30", path).ok
    written = (tmp_path / "paths").read_text()
    assert "DW_JOB_scratch=" in written and "DW_WORKFLOW_TOKEN" not in written
    job_file = JobEnvFiles(config.job_env_dir).path("30").read_text()
    assert job_file.startswith("DW_WORKFLOW_TOKEN=") and job_file.count("\n") == 1
    assert call(hooks, "job_teardown", "30", path, "true").ok
    assert not JobEnvFiles(config.job_env_dir).path("30").exists()


def test_on_kubernetes_pre_run_writes_the_whole_environment_and_teardown_removes_it(
    standin: RunningStandIn, tmp_path: Path
) -> None:
    from copyoffload.tokens import verify_token

    config = Config(
        backend="kubernetes", kubeconfig=standin.kubeconfig, root=tmp_path / "root", state_timeout=30.0
    )
    hooks = SlurmHooks(config)
    path = script(tmp_path / "job.sh", JOBDW)
    assert call(hooks, "setup", "31", str(JOB_UID), str(JOB_GID), "dws", "1", path).ok
    assert call(hooks, "data_in", "31", path).ok
    assert call(hooks, "paths", "31", path, str(tmp_path / "paths")).ok
    assert (tmp_path / "paths").read_text() == "DW_WORKFLOW_NAME=bb31\nDW_WORKFLOW_NAMESPACE=default\n"
    assert call(hooks, "pre_run", "31", path) == HookResult(True, "")

    env_file = JobEnvFiles(config.job_env_dir).path("31")
    st = env_file.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, JOB_UID, JOB_GID)
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    workflow = standin.workflow("bb31")
    assert workflow is not None
    assert env["DW_JOB_scratch"] == workflow["status"]["env"]["DW_JOB_scratch"]
    assert env["DW_WORKFLOW_NAME"] == "bb31"
    secret = standin.request("GET", "/api/v1/namespaces/default/secrets/bb31-token-server")
    key = base64.b64decode(secret["data"]["token.key"])
    assert verify_token(env["DW_WORKFLOW_TOKEN"], key, workflow="bb31")["sub"] == "user-container"

    assert call(hooks, "job_teardown", "31", path, "true").ok
    assert not env_file.exists()
    assert standin.workflow("bb31") is None
