"""Issue 13 on a real Slurm 22.05: burst_buffer.lua talks to `dwsbridge agent` over its Unix socket
from Lua (Debian's lua-socket), and every way the agent can fail gives a prompt, correct answer.

The hooks' interpreter is a wrapper that records each start, so "no process per hook" is observed,
not inferred. Jobs are submitted as an ordinary user. Own cluster, base directory and ports
(DWSB_SOCKET_CTLD_PORT / DWSB_SOCKET_SLURMD_PORT, default 6860/6861).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dwsbridge.cli.slurm import lua_socket_modules
from tests.slurm_support import (
    REPO,
    LocalSlurmCluster,
    slurm_skip_reason,
    start_local_cluster,
    stop_local_cluster,
    text,
    wait_for,
)

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]

BASE = Path(os.environ.get("DWSB_SOCKET_BASE", "/tmp/dwsb-slurm-socket"))
JOBDW = "#DW jobdw type=xfs capacity=1GiB name=scratch pool=dws"
INVALID = JOBDW + " colour=blue"
PYTHON = REPO / ".venv" / "bin" / "python"
ANSWER_TIMEOUT, SILENCE_TIMEOUT, CONNECT_TIMEOUT = 1.5, 2.0, 1.0
JOB_HOOKS = ("setup", "data_in", "paths", "pre_run", "post_run", "data_out", "job_teardown")
HOOK_LINE = re.compile(r"dwsbridge/lua: (\w+) job=(\S+) rc=(\w+) ([\d.]+)ms via=(\S+)(.*)")

if slurm_skip_reason():
    pytest.skip(slurm_skip_reason() or "", allow_module_level=True)
if lua_socket_modules() is None:
    pytest.skip("lua-socket missing (make debs installs it)", allow_module_level=True)


class Cluster(LocalSlurmCluster):
    @property
    def calls(self) -> Path:
        """One line per Python process a hook started (the wrapper's record)."""
        return self.base / "python-calls"

    @property
    def lua(self) -> Path:
        """The hooks' source: burst_buffer.lua loads it (its compiled form only while it is unchanged)."""
        return self.base / "etc" / "dwsbridge-hooks.lua"

    def hooks_since(self, mark: int) -> list[tuple[str, str, str, float, str, str]]:
        found = []
        for line in self.log_lines()[mark:]:
            match = HOOK_LINE.search(line)
            if match:
                hook, job, rc, ms, via, rest = match.groups()
                found.append((hook, job, rc, float(ms), via, rest))
        return found

    def job_hooks(self, mark: int, job: str) -> dict[str, tuple[str, str]]:
        """hook -> (rc, via) of the job's hooks logged since `mark` (the last of each), once its
        teardown's line is there (slurmctld may write it after the workflow is gone)."""

        def logged() -> dict[str, tuple[str, str]]:
            found = {h: (rc, via + rest) for h, j, rc, _, via, rest in self.hooks_since(mark) if j == job}
            return found if "job_teardown" in found else {}

        found = wait_for(logged, f"job {job}'s teardown in slurmctld's log", timeout=30)
        assert isinstance(found, dict)
        return found


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    started = start_local_cluster(
        BASE,
        os.environ.get("DWSB_SOCKET_CTLD_PORT", "6860"),
        os.environ.get("DWSB_SOCKET_SLURMD_PORT", "6861"),
    )
    running = Cluster(started.env, started.user, started.lifecycle)
    try:
        wrapper = running.base / "bin" / "python"
        wrapper.parent.mkdir(exist_ok=True)
        record = f'echo "${{DWSBRIDGE_AGENT_SOCKET:-no-agent}} $*" >> {running.calls}'
        wrapper.write_text(f'#!/bin/sh\n{record}\nexec {PYTHON} "$@"\n')
        wrapper.chmod(0o755)
        proc = subprocess.run(
            [
                *(
                    str(PYTHON),
                    "-I",
                    "-m",
                    "dwsbridge",
                    "slurm",
                    "install",
                    "--etc",
                    str(running.base / "etc"),
                ),
                *("--python", str(wrapper), "--config", str(running.base / "dwsbridge.yaml")),
                *("--agent-socket", str(running.base / "run" / "agent.sock")),
                *("--agent-timeout", str(ANSWER_TIMEOUT), "--agent-silence-timeout", str(SILENCE_TIMEOUT)),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        assert "lua-socket: present" in proc.stdout, proc.stdout
        running.calls.unlink(missing_ok=True)  # the installer's own checks ran the interpreter
        yield running
    finally:
        stop_local_cluster(running)


@pytest.fixture
def agent_down(cluster: Cluster) -> Iterator[None]:
    cluster.cluster("agent-stop")
    try:
        yield
    finally:
        cluster.cluster("agent-start")


def run_job(cluster: Cluster, name: str, *extra: str) -> tuple[str, Path]:
    """Submit a jobdw job that stages a file in and out; wait until it is done and torn down."""
    work = cluster.workdir(name)
    (work / "in.txt").write_text(f"input of {name}\n")
    job = cluster.submit(
        work,
        'cat "$DW_JOB_scratch/in.txt" > "$DW_JOB_scratch/out.txt"',
        JOBDW,
        f"#DW copy_in source={work}/in.txt destination=$DW_JOB_scratch/in.txt",
        f"#DW copy_out source=$DW_JOB_scratch/out.txt destination={work}/out.txt",
        *extra,
    )
    assert cluster.wait_state(job, "COMPLETED", "FAILED", "CANCELLED") == "COMPLETED", cluster.state(job)
    cluster.wait_gone(job)
    assert (work / "out.txt").read_text() == f"input of {name}\n"
    return job, work


def sbatch_error(cluster: Cluster, name: str, directive: str) -> str:
    work = cluster.workdir(name)
    proc = cluster.sbatch(cluster.write_job(work, "true", directive), check=False)
    assert proc.returncode != 0, proc.stdout
    return proc.stderr


# --- the socket path -------------------------------------------------------------------------------


def test_every_hook_talks_to_the_agent_over_the_socket_without_starting_a_process(cluster: Cluster) -> None:
    cluster.calls.unlink(missing_ok=True)
    mark = len(cluster.log_lines())
    job, _ = run_job(cluster, "socket")
    shown = cluster.run("scontrol", "show", "bbstat", "workflow", job, as_user=True).stdout
    assert f"No workflow for job {job}" in shown
    error = sbatch_error(cluster, "socket-invalid", INVALID)
    assert "'colour'" in error, error

    assert cluster.job_hooks(mark, job) == {hook: ("success", "agent") for hook in JOB_HOOKS}
    others = [(h, rc, via) for h, j, rc, _, via, _ in cluster.hooks_since(mark) if j == "-"]
    assert ("job_process", "success", "agent") in others and ("job_process", "error", "agent") in others
    assert ("get_status", "success", "agent") in others
    # pools runs at slurmctld's start and every 30 s: through the agent as well
    assert any("pools job=- rc=success" in line and "via=agent" in line for line in cluster.log_lines())
    assert text(cluster.calls) == "", "a hook started a Python process"


# --- fallbacks -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("agent_down")
def test_with_the_agent_stopped_every_hook_runs_the_bridge_in_a_process(cluster: Cluster) -> None:
    cluster.calls.unlink(missing_ok=True)
    mark = len(cluster.log_lines())
    assert "'colour'" in sbatch_error(cluster, "down-invalid", INVALID)
    job, _ = run_job(cluster, "down")
    hooks = cluster.job_hooks(mark, job)
    assert set(hooks) == set(JOB_HOOKS)
    assert all(rc == "success" and via.startswith("process (agent connect: ") for rc, via in hooks.values())
    # each started the bridge itself, not a relay that would try the agent a second time
    calls = text(cluster.calls).splitlines()
    assert len(calls) >= 1 + len(JOB_HOOKS) and all(line.startswith("no-agent ") for line in calls), calls


def test_a_sigstopped_agent_never_stalls_slurmctld_and_never_runs_stale_requests(cluster: Cluster) -> None:
    work = cluster.workdir("stopped")
    held = cluster.submit(work, "echo $DW_JOB_scratch", JOBDW, "#SBATCH --hold")
    pid = cluster.agent_pid()
    mark = len(cluster.log_lines())
    agent_mark = len(cluster.agent_lines())
    os.kill(pid, signal.SIGSTOP)
    try:
        for directive in (JOBDW, INVALID):
            error = sbatch_error(cluster, "stopped-submit", directive)
            assert "the bridge agent did not answer in time" in error, error
            assert "'colour'" not in error  # refused, not validated a second time inside slurmctld
        assert cluster.run("squeue", "-h").returncode == 0  # the controller answers meanwhile
        shown = cluster.run("scontrol", "show", "bbstat", "workflow", "999", as_user=True).stdout
        assert "No workflow for job 999" in shown  # get_status: in a process
        cluster.run("scontrol", "release", held)
        assert cluster.wait_state(held, "COMPLETED", "FAILED", "CANCELLED", timeout=120) == "COMPLETED"
        cluster.wait_gone(held)
    finally:
        os.kill(pid, signal.SIGCONT)
    quick = [(h, rc, ms, via) for h, j, rc, ms, via, _ in cluster.hooks_since(mark) if j == "-"]
    refusals = [q for q in quick if q[0] == "job_process"]
    assert len(refusals) == 2 and all(rc == "error" and via == "agent" for _, rc, _, via in refusals)
    assert all(ms < (ANSWER_TIMEOUT + CONNECT_TIMEOUT) * 1000 for _, _, ms, _ in quick), quick
    # Slurm may stage a held job in (setup, data_in) before it is released: those may have been served
    # by the agent before it was stopped; every hook after, from paths on, ran in a process.
    hooks = cluster.job_hooks(mark, held)
    assert set(JOB_HOOKS) - {"setup", "data_in"} <= set(hooks)
    assert all(rc == "success" and via.startswith("process (agent ") for rc, via in hooks.values()), hooks
    assert str(cluster.storage(held)) in text(work / "job.sh.out")

    # Once resumed, the agent reads every request it was sent while stopped and runs none of them.
    def resumed() -> list[str]:
        lines = [line for line in cluster.agent_lines()[agent_mark:] if " hook=" in line]
        return lines if len(lines) >= len(quick) + len(hooks) else []

    lines = wait_for(resumed, "the resumed agent to read the requests it was sent", timeout=30)
    assert isinstance(lines, list)
    assert all("fallback (expired: " in line for line in lines), lines
    assert not cluster.lifecycle.exists(f"bb{held}")


class StandInAgent:
    """Listens on the agent's socket and answers each request with the next reply in `replies`, then
    closes: what an agent that breaks, or is killed mid-answer, looks like from slurmctld."""

    def __init__(self, path: Path, replies: list[bytes]) -> None:
        self.replies = replies
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(64)
        self.served = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                with contextlib.suppress(OSError):
                    while conn.recv(65536):
                        pass
                    conn.sendall(self.replies[self.served % len(self.replies)])
                self.served += 1

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(10)


@pytest.mark.usefixtures("agent_down")
def test_an_agent_answering_garbage_or_cut_short_gives_the_correct_answer_from_a_process(
    cluster: Cluster,
) -> None:
    path = cluster.base / "run" / "agent.sock"
    replies = [
        b"HTTP/1.1 200 OK\r\n\r\n",  # not an agent
        b"DWSB1 OK\n@@DWSBRIDGE log dwsbridge: info: half an answer\n",  # killed mid-answer
        b"....",  # heartbeats, then killed before the reply
        b"DWSB1 OK\n\n@@DWSBRIDGE rc=0 len=9\n",  # a lying length
    ]
    stand_in = StandInAgent(path, replies)
    mark = len(cluster.log_lines())
    try:
        assert "'colour'" in sbatch_error(cluster, "garbage-invalid", INVALID)
        job, _ = run_job(cluster, "garbage")
    finally:
        stand_in.close()
        path.unlink(missing_ok=True)
    assert stand_in.served >= 9
    hooks = cluster.job_hooks(mark, job)
    assert set(hooks) == set(JOB_HOOKS)
    assert all(rc == "success" and via.startswith("process (agent ") for rc, via in hooks.values()), hooks
    reasons = " ".join(via for _, via in hooks.values())
    for reason in ("not an agent reply", "reply cut short", "no reply"):
        assert reason in reasons, hooks


def copying_in(cluster: Cluster, job: str) -> bool:
    name = f"bb{job}"
    if not cluster.lifecycle.exists(name):
        return False
    status = cluster.lifecycle.status(name)
    return status.desired == "DataIn" and not status.ready


def test_killing_the_agent_mid_answer_falls_back_and_the_job_completes(cluster: Cluster) -> None:
    config = cluster.base / "dwsbridge.yaml"
    if "data_movement_profiles" not in config.read_text():
        config.write_text(
            config.read_text() + "data_movement_profiles:\n  slow: {workers: 1, bwlimit: 1048576}\n"
        )
    work = cluster.workdir("killed")
    (work / "in.bin").write_bytes(os.urandom(3 << 20))  # three seconds at the profile's 1 MiB/s
    mark = len(cluster.log_lines())
    job = cluster.submit(
        work,
        f'cmp "$DW_JOB_scratch/in.bin" {work}/in.bin && echo SAME',
        JOBDW,
        f"#DW copy_in source={work}/in.bin destination=$DW_JOB_scratch/in.bin profile=slow",
    )
    try:
        wait_for(
            lambda: copying_in(cluster, job),
            "the agent to be copying in",
        )
        os.kill(cluster.agent_pid(), signal.SIGKILL)
        assert cluster.wait_state(job, "COMPLETED", "FAILED", "CANCELLED", timeout=120) == "COMPLETED"
        cluster.wait_gone(job)
    finally:
        cluster.cluster("agent-start")
    assert "SAME" in text(work / "job.sh.out")
    rc, via = cluster.job_hooks(mark, job)["data_in"]
    assert rc == "success" and via.startswith("process (agent "), via


def test_without_lua_socket_hooks_relay_to_the_agent_through_a_process(cluster: Cluster) -> None:
    installed = cluster.lua.read_text()
    assert 'local SOCKET_MODULE = "socket.unix"' in installed
    # Slurm loads burst_buffer.lua again for every hook, and it loads the edited source (no longer the
    # size the compiled hooks were made from): a module that is neither where install found it nor
    # found by require is "missing".
    missing = installed.replace('"socket.unix"', '"socket.unix_not_installed"')
    path_setting = r'(local SOCKET_(?:CORE|UNIX)_PATH = )"[^"]*"'
    missing, paths = re.subn(path_setting, r'\1"/nonexistent/socket.so"', missing)
    assert paths == 2
    cluster.lua.write_text(missing)
    cluster.calls.unlink(missing_ok=True)
    mark = len(cluster.log_lines())
    agent_mark = len(cluster.agent_lines())
    try:
        job, _ = run_job(cluster, "nomodule")
    finally:
        cluster.lua.write_text(installed)
    hooks = cluster.job_hooks(mark, job)
    assert hooks == {hook: ("success", "process") for hook in JOB_HOOKS}
    served = {
        line.split(" hook=")[1].split()[0]
        for line in cluster.agent_lines()[agent_mark:]
        if f" job={job} " in line
    }
    assert served == set(JOB_HOOKS)  # the relay process handed each to the agent
    socket_path = str(cluster.base / "run" / "agent.sock")
    assert all(line.startswith(socket_path + " ") for line in text(cluster.calls).splitlines())
