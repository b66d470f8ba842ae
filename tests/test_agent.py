"""The bridge agent (`dwsbridge agent`): hooks served through it answer exactly as in-process hooks do,
the hook falls back to in-process when there is no agent, only root may use it, it serves many requests
at once, one bad request never stops it, and SIGTERM does.

The agent runs as a real process (as under systemd); hooks are run as burst_buffer.lua runs them:
`python -I -m dwsbridge.slurm HOOK ARGS` with stdout and stderr together.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from dwsbridge import hookclient
from dwsbridge.agent import Agent
from dwsbridge.errors import ConfigError
from tests.conftest import IS_ROOT
from tests.helpers_users import ensure_user

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="the agent runs as root and checks its peers' uid")

PY = sys.executable
REPO = Path(__file__).resolve().parent.parent
JOBDW = "#DW jobdw type=xfs capacity=64MiB name=scratch pool=dws"  # small: Setup preallocates it


@dataclass
class RunningAgent:
    proc: subprocess.Popen[bytes]
    socket: Path
    log: Path
    config: Path
    work: Path

    def env(self, *, agent: bool = True, **extra: str) -> dict[str, str]:
        env = {"PATH": "/usr/bin:/bin", "DWSBRIDGE_CONFIG": str(self.config), **extra}
        if agent:
            env[hookclient.SOCKET_ENV] = str(self.socket)
        return env

    def hook(self, *args: str, agent: bool = True, **extra: str) -> bytes:
        proc = subprocess.run(
            [PY, "-I", "-m", "dwsbridge.slurm", *args],
            env=self.env(agent=agent, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=False,
        )
        assert proc.returncode == hookclient.exit_code(proc.stdout), proc.stdout
        return proc.stdout

    def served(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if " hook=" in line]


def script(path: Path, *directives: str) -> str:
    path.write_text("\n".join(["#!/bin/bash", *directives, "true"]) + "\n\0")
    return str(path)


def result(output: bytes) -> tuple[int, str]:
    """(rc, payload) of the result protocol."""
    status = output.rstrip(b"\n").rsplit(b"\n", 1)[-1].decode()
    length = int(status.rsplit("len=", 1)[1])
    body = output[: len(output) - len(status) - 2]  # without "\n<status>\n"
    return hookclient.exit_code(output), body[len(body) - length :].decode()


def start_agent(work: Path, config: Path) -> RunningAgent:
    sock = work / "run" / "agent.sock"
    log = work / "agent.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [PY, "-I", "-m", "dwsbridge", "agent", "--socket", str(sock), "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the agent did not create its socket"
        time.sleep(0.05)
    return RunningAgent(proc, sock, log, config, work)


@pytest.fixture
def agent(world_tmp: Path) -> Iterator[RunningAgent]:
    config = world_tmp / "dwsbridge.yaml"
    config.write_text(
        f"backend: local\nroot: {world_tmp / 'root'}\npool_size: 1TiB\nstate_timeout: 60\n"
        "orphan_sweep_interval: 0\n"
    )
    running = start_agent(world_tmp, config)
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            running.proc.send_signal(signal.SIGTERM)
            running.proc.wait(timeout=60)


# --- the same answers as in-process ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "words",
    [
        ["pools"],
        ["get_status"],
        ["get_status", "list"],
        ["get_status", "workflow", "abc"],
        ["get_status", "workflow", "77"],
        ["get_status", "0", "0", "workflow", "77"],
        ["get_status", "nonsense", "words"],
        ["nohook"],
        ["setup", "1"],
    ],
    ids=lambda words: "-".join(words),
)
def test_agent_answers_like_the_hook_in_process(agent: RunningAgent, words: list[str]) -> None:
    before = len(agent.served())
    assert agent.hook(*words) == agent.hook(*words, agent=False)
    assert len(agent.served()) == before + 1


@pytest.mark.parametrize("valid", [True, False], ids=["valid", "invalid"])
def test_job_process_through_the_agent_matches_in_process(agent: RunningAgent, valid: bool) -> None:
    line = JOBDW if valid else JOBDW + " colour=blue"
    path = script(agent.work / "job.sh", line)
    via_agent = agent.hook("job_process", path)
    assert via_agent == agent.hook("job_process", path, agent=False)
    rc, payload = result(via_agent)
    assert rc == (0 if valid else 1)
    assert valid or "'colour'" in payload


def test_a_workflow_walks_from_setup_to_teardown_through_the_agent(
    agent: RunningAgent, job_user: object
) -> None:
    uid, gid = str(getattr(job_user, "pw_uid")), str(getattr(job_user, "pw_gid"))  # noqa: B009
    path = script(agent.work / "job.sh", JOBDW)
    env_file = agent.work / "paths.env"
    outcomes = {}
    for job, agent_on in (("5", True), ("6", False)):
        steps = [
            ("setup", job, uid, gid, "dws", "67108864", path),
            ("data_in", job, path),
            ("paths", job, path, str(env_file)),
            ("pre_run", job, path),
            ("get_status", "workflow", job),
            ("post_run", job, path),
            ("data_out", job, path),
            ("job_teardown", job, path, "false"),
            ("get_status", "workflow", job),
        ]
        outcomes[agent_on] = [result(agent.hook(*step, agent=agent_on)) for step in steps]
        assert f"DW_JOB_scratch={agent.work / 'root'}" in env_file.read_text()
    assert [rc for rc, _ in outcomes[True]] == [0] * 9
    assert outcomes[True][4][1] == "desiredState=PreRun currentState=PreRun status=Completed"
    assert outcomes[True][8][1].startswith("No workflow for job 5 ")
    normalise = [(rc, payload.replace("job 6 (bb6", "job 5 (bb5")) for rc, payload in outcomes[False]]
    assert outcomes[True] == normalise
    assert sum(" job=5 rc=0 " in line for line in agent.served()) == 7  # get_status logs no job


def test_agent_reloads_its_configuration_when_the_file_changes(agent: RunningAgent) -> None:
    assert '"id":"dws"' in result(agent.hook("pools"))[1]
    agent.config.write_text(agent.config.read_text() + "pool_name: fastpool\n")
    assert '"id":"fastpool"' in result(agent.hook("pools"))[1]
    assert agent.hook("pools") == agent.hook("pools", agent=False)


# --- falling back -----------------------------------------------------------------------------------------


def test_hook_runs_in_process_when_no_agent_listens(agent: RunningAgent) -> None:
    stale = agent.work / "stale.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(stale))
    listener.close()  # a socket file nobody serves: ECONNREFUSED
    expected = agent.hook("pools", agent=False)
    before = len(agent.served())
    for path in (agent.work / "missing.sock", stale):
        assert agent.hook("pools", DWSBRIDGE_AGENT_SOCKET=str(path), agent=False) == expected
    assert len(agent.served()) == before


def test_agent_sends_a_hook_for_another_configuration_back_to_run_in_process(agent: RunningAgent) -> None:
    other = agent.work / "other.yaml"
    other.write_text(f"backend: local\nroot: {agent.work / 'root'}\npool_name: elsewhere\n")
    output = agent.hook("pools", DWSBRIDGE_CONFIG=str(other))
    assert '"id":"elsewhere"' in result(output)[1]
    assert b"agent serves config" in output and b"running pools in-process" in output


def test_agent_refuses_a_peer_that_is_not_root(agent: RunningAgent) -> None:
    uid, gid = ensure_user("dwsbt-agentpeer")
    os.chmod(agent.socket.parent, 0o755)  # open the way on purpose: SO_PEERCRED must still refuse
    os.chmod(agent.socket, 0o666)
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); from dwsbridge import hookclient\n"
        "try:\n"
        f"    hookclient.call_agent({str(agent.socket)!r}, 'pools', [], {{}})\n"
        "except hookclient.AgentUnavailable as exc:\n"
        "    print('unavailable:', exc)\n"
    )
    proc = subprocess.run(
        [PY, "-I", "-S", "-c", code], user=uid, group=gid, capture_output=True, text=True, timeout=60
    )
    assert "unavailable:" in proc.stdout and "only root may use the agent" in proc.stdout, proc
    assert any(f"refused (peer uid {uid} is not root)" in line for line in agent.served())


# --- robustness -------------------------------------------------------------------------------------------


def test_many_workflows_at_once_all_complete(agent: RunningAgent, job_user: object) -> None:
    uid, gid = str(getattr(job_user, "pw_uid")), str(getattr(job_user, "pw_gid"))  # noqa: B009
    path = script(agent.work / "job.sh", JOBDW)
    env = {"DWSBRIDGE_CONFIG": str(agent.config)}

    def walk(job: str) -> list[int]:
        steps = [
            ("setup", job, uid, gid, "dws", "67108864", path),
            ("data_in", job, path),
            ("pre_run", job, path),
            ("post_run", job, path),
            ("data_out", job, path),
            ("job_teardown", job, path, "false"),
        ]
        return [
            hookclient.exit_code(hookclient.call_agent(str(agent.socket), hook, args, env))
            for hook, *args in steps
        ]

    with ThreadPoolExecutor(max_workers=20) as pool:
        outcomes = list(pool.map(walk, [str(100 + i) for i in range(20)]))
    assert outcomes == [[0] * 6] * 20
    assert result(agent.hook("get_status"))[1].endswith("(no workflows)\n")


def test_agent_survives_bad_requests(agent: RunningAgent) -> None:
    for garbage in (b"", b"hello", b"DWSB1\0pools\0x", b"\xff" * 100):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(agent.socket))
        conn.sendall(garbage)
        conn.shutdown(socket.SHUT_WR)
        reply = conn.recv(1000)
        conn.close()
        assert reply.startswith(hookclient.REPLY_FALLBACK), reply
    missing = agent.work / "nope.sh"
    assert result(agent.hook("job_process", str(missing)))[0] == 1
    assert agent.proc.poll() is None
    assert agent.hook("pools") == agent.hook("pools", agent=False)


def test_a_request_that_crashes_is_answered_and_the_agent_goes_on(
    world_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DWSBRIDGE_CONFIG", raising=False)
    served = Agent(world_tmp / "unused.sock")

    def crash(*_: object) -> bytes:
        raise RuntimeError("boom")

    monkeypatch.setattr(served, "run", crash)
    for _ in range(2):
        ours, theirs = socket.socketpair()
        theirs.sendall(hookclient.encode_request("pools", [], {}))
        theirs.shutdown(socket.SHUT_WR)
        served.handle(ours)
        assert theirs.recv(1000) == hookclient.REPLY_FALLBACK + b"agent error\n"
        theirs.close()


@pytest.mark.parametrize("sent", [b"", b"DWSB1\0pools\0"], ids=["nothing", "half a request"])
def test_a_client_that_connects_and_goes_silent_is_let_go_at_the_read_timeout(
    world_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sent: bytes
) -> None:
    """The read timeout is the kernel's (SO_RCVTIMEO): a silent client costs a thread that long only."""
    import threading

    from dwsbridge import agent as agent_module

    monkeypatch.delenv("DWSBRIDGE_CONFIG", raising=False)
    monkeypatch.setattr(agent_module, "REQUEST_TIMEOUT", 0.3)
    served = Agent(world_tmp / "unused.sock")
    ours, theirs = socket.socketpair()
    theirs.sendall(sent)  # and never shuts its side down
    handler = threading.Thread(target=served.handle, args=(ours,), daemon=True)
    started = time.monotonic()
    handler.start()
    handler.join(timeout=10)
    assert not handler.is_alive(), "the agent still waits for a request that never comes"
    assert 0.25 <= time.monotonic() - started < 5
    assert theirs.recv(1000) == hookclient.REPLY_FALLBACK + b"agent error\n"
    theirs.close()
    assert "TimeoutError: no whole request within 0.3s" in capsys.readouterr().err


def test_sigterm_stops_the_agent_and_removes_its_socket(agent: RunningAgent) -> None:
    assert result(agent.hook("pools"))[0] == 0
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(timeout=30) == 0
    assert not agent.socket.exists()
    assert agent.log.read_text().rstrip().endswith("dwsbridge agent: stopped")
    assert agent.hook("pools") == agent.hook("pools", agent=False)  # and hooks carry on without it


def test_a_second_agent_on_the_same_socket_is_refused(agent: RunningAgent) -> None:
    proc = subprocess.run(
        [PY, "-I", "-m", "dwsbridge", "agent", "--socket", str(agent.socket), "--config", str(agent.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "another dwsbridge agent already serves" in proc.stderr


def test_the_agent_refuses_a_socket_directory_others_may_write(world_tmp: Path) -> None:
    shared = world_tmp / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp: anyone could put a socket of their own in the agent's place
    with pytest.raises(ConfigError, match="writable by root alone"):
        Agent(shared / "agent.sock").bind()
    assert not (shared / "agent.sock").exists()


# --- the installer ----------------------------------------------------------------------------------------


def test_install_points_the_lua_at_the_agent_and_writes_a_systemd_unit(tmp_path: Path) -> None:
    from dwsbridge.cli import main

    args = ["slurm", "install", "--etc", str(tmp_path), "--no-check", "--agent-socket", "/run/x/a.sock"]
    assert main(args) == 0
    lua = (tmp_path / "dwsbridge-hooks.lua").read_text()
    assert 'local AGENT_SOCKET = "/run/x/a.sock"' in lua
    assert "from dwsbridge.hookclient import main" in lua
    unit = (tmp_path / "dwsbridge-agent.service").read_text()
    assert "-m dwsbridge agent --socket /run/x/a.sock" in unit


def test_install_without_the_agent_leaves_it_out(tmp_path: Path) -> None:
    from dwsbridge.cli import main

    args = ["slurm", "install", "--etc", str(tmp_path), "--no-check", "--no-agent", "--no-launcher"]
    assert main(args) == 0
    lua = (tmp_path / "dwsbridge-hooks.lua").read_text()
    assert 'local AGENT_SOCKET = ""' in lua and 'local LAUNCHER = ""' in lua
    assert not (tmp_path / "dwsbridge-agent.service").exists()


def test_the_launcher_relays_to_the_agent_and_falls_back_without_it(agent: RunningAgent) -> None:
    from dwsbridge.cli.slurm import launcher_code

    launcher = launcher_code(str(REPO))
    outputs = []
    for env in (agent.env(), agent.env(agent=False)):
        proc = subprocess.run(
            [PY, "-I", "-S", "-c", launcher, "pools"], env=env, capture_output=True, timeout=60, check=False
        )
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1] == agent.hook("pools", agent=False)


def test_a_teardown_waits_for_a_setup_still_running_for_its_job(
    world_tmp: Path, job_user: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slurm kills a setup hook on cancel, but the agent's thread runs on: the teardown that follows
    must tear down what that setup creates, not find nothing and leave it behind."""
    import threading

    from dwsbridge import slurm
    from dwsbridge.config import load_config
    from dwsbridge.lifecycle import Lifecycle

    config = world_tmp / "dwsbridge.yaml"
    config.write_text(
        f"backend: local\nroot: {world_tmp / 'root'}\npool_size: 1TiB\nstate_timeout: 60\n"
        "orphan_sweep_interval: 0\n"
    )
    monkeypatch.setenv("DWSBRIDGE_CONFIG", str(config))
    uid, gid = str(getattr(job_user, "pw_uid")), str(getattr(job_user, "pw_gid"))  # noqa: B009
    path = script(world_tmp / "job.sh", JOBDW)
    setup_may_go_on = threading.Event()
    setup_started = threading.Event()
    real_setup = slurm.SlurmHooks.setup

    def slow_setup(self: slurm.SlurmHooks, *args: str) -> slurm.HookResult:
        setup_started.set()
        setup_may_go_on.wait(30)
        return real_setup(self, *args)

    monkeypatch.setattr(slurm.SlurmHooks, "setup", slow_setup)
    agent = Agent(world_tmp / "agent.sock", config)
    env = {"DWSBRIDGE_CONFIG": str(config)}
    setup = threading.Thread(target=agent.run, args=("setup", ["41", uid, gid, "dws", "1", path], env))
    teardown = threading.Thread(target=agent.run, args=("job_teardown", ["41", path, "true"], env))
    setup.start()
    assert setup_started.wait(30)
    teardown.start()
    teardown.join(timeout=1.0)  # without the serialisation it finds no workflow and is done by now
    setup_may_go_on.set()
    setup.join(60)
    teardown.join(60)
    assert not setup.is_alive() and not teardown.is_alive()
    assert not Lifecycle(load_config(config)).exists("bb41"), "the setup's workflow outlived its teardown"


# --- timeouts, heartbeats, concurrency (issue 13) ----------------------------------------------------


def raw_request(agent: RunningAgent, hook: str, args: list[str], **env: str) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(str(agent.socket))
    conn.sendall(hookclient.encode_request(hook, args, {"DWSBRIDGE_CONFIG": str(agent.config), **env}))
    conn.shutdown(socket.SHUT_WR)
    return conn


def read_reply(conn: socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    conn.close()
    return b"".join(chunks)


def test_a_request_read_after_its_caller_gave_up_is_not_run(agent: RunningAgent, job_user: object) -> None:
    """A SIGSTOPped agent resumed later must not run what the hook has meanwhile done in-process."""
    uid, gid = str(getattr(job_user, "pw_uid")), str(getattr(job_user, "pw_gid"))  # noqa: B009
    path = script(agent.work / "job.sh", JOBDW)
    past = f"{time.time() - 1:.3f}"
    conn = raw_request(agent, "setup", ["51", uid, gid, "dws", "1", path], DWSBRIDGE_DEADLINE=past)
    reply = read_reply(conn)
    assert reply.startswith(hookclient.REPLY_FALLBACK + b"expired: "), reply
    assert result(agent.hook("get_status", "workflow", "51"))[1].startswith("No workflow for job 51 ")


def test_a_job_process_the_agent_does_not_answer_in_time_is_refused_not_validated_again(
    agent: RunningAgent,
) -> None:
    path = script(agent.work / "job.sh", JOBDW + " colour=blue")
    agent.proc.send_signal(signal.SIGSTOP)
    try:
        output = agent.hook("job_process", path)
        pools = agent.hook("pools")
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    rc, payload = result(output)
    assert rc == 1 and "the bridge agent did not answer in time" in payload
    assert "'colour'" not in payload  # no second validation in-process
    assert result(pools) == result(agent.hook("pools", agent=False))  # pools does run in-process


def test_a_long_hook_sends_heartbeats_and_never_holds_up_the_others(
    world_tmp: Path, job_user: object
) -> None:
    uid, gid = str(getattr(job_user, "pw_uid")), str(getattr(job_user, "pw_gid"))  # noqa: B009
    config = world_tmp / "dwsbridge.yaml"
    config.write_text(
        f"backend: local\nroot: {world_tmp / 'root'}\npool_size: 1TiB\nstate_timeout: 60\n"
        "orphan_sweep_interval: 0\ndata_movement_profiles:\n  slow: {workers: 1, bwlimit: 1048576}\n"
    )
    running = start_agent(world_tmp, config)
    try:
        source = world_tmp / "in.bin"
        source.write_bytes(os.urandom(3 << 20))  # three seconds at 1 MiB/s
        os.chmod(source, 0o644)
        path = script(
            world_tmp / "job.sh",
            JOBDW,
            f"#DW copy_in source={source} destination=$DW_JOB_scratch/in.bin profile=slow",
        )
        assert result(running.hook("setup", "61", uid, gid, "dws", "1", path))[0] == 0
        stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stalled.connect(str(running.socket))
        stalled.sendall(b"DWSB1\0pools")  # and never finishes its request
        slow = raw_request(running, "data_in", ["61", path])
        first = slow.recv(1)
        # the copy is running (a heartbeat came), another caller stalls: quick hooks still answer
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda _: result(running.hook("pools"))[0], range(16)))
        assert answers == [0] * 16
        reply = first + read_reply(slow)
        beats = len(reply) - len(reply.lstrip(hookclient.HEARTBEAT_BYTE))
        assert beats >= 1 and reply[beats:].startswith(hookclient.REPLY_OK), reply[:80]
        assert hookclient.exit_code(hookclient.parse_reply(reply)) == 0
        stalled.close()
        assert result(running.hook("job_teardown", "61", path, "true"))[0] == 0
    finally:
        running.proc.send_signal(signal.SIGTERM)
        running.proc.wait(timeout=60)


def test_a_slow_reload_never_holds_up_the_other_requests(
    world_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the Kubernetes backend a reload connects to the API: the other hooks must not wait for it."""
    import threading

    config = world_tmp / "dwsbridge.yaml"
    config.write_text(f"backend: local\nroot: {world_tmp / 'root'}\norphan_sweep_interval: 0\n")
    monkeypatch.setenv("DWSBRIDGE_CONFIG", str(config))
    agent = Agent(world_tmp / "agent.sock", config)
    first = agent.served()
    entered, gate = threading.Event(), threading.Event()
    real_load = agent._load

    def slow_load(stamp: tuple[int, int] | None) -> object:
        entered.set()
        gate.wait(30)
        return real_load(stamp)

    monkeypatch.setattr(agent, "_load", slow_load)
    config.write_text(config.read_text() + "pool_name: other\n")
    reloader = threading.Thread(target=agent.served)
    reloader.start()
    try:
        assert entered.wait(30)
        assert agent.served() is first  # answered at once, from the configuration it had
    finally:
        gate.set()
        reloader.join(30)
    assert agent.served().config.pool_name == "other"


def test_the_relay_never_hands_a_hook_to_a_socket_another_user_serves(agent: RunningAgent) -> None:
    """A user who gets a socket of theirs where the hooks look for the agent (a misconfigured path)
    must not be able to answer for it: here their server accepts every job it is asked about."""
    uid, gid = ensure_user("dwsbt-squatter")
    squat = agent.work / "squat"
    squat.mkdir()
    os.chown(squat, uid, gid)
    path = squat / "agent.sock"
    code = (
        "import os, socket, sys\n"
        f"s = socket.socket(socket.AF_UNIX); s.bind({str(path)!r}); os.chmod({str(path)!r}, 0o777)\n"
        "s.listen(8); print('ready', flush=True)\n"
        "while True:\n"
        "    c, _ = s.accept(); c.recv(65536)\n"
        "    c.sendall(b'DWSB1 OK\\n\\n@@DWSBRIDGE rc=0 len=0\\n'); c.close()\n"
    )
    server = subprocess.Popen(
        [PY, "-I", "-S", "-c", code], user=uid, group=gid, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert server.stdout is not None and server.stdout.readline() == b"ready\n"
        invalid = script(agent.work / "job.sh", JOBDW + " colour=blue")
        output = agent.hook("job_process", invalid, DWSBRIDGE_AGENT_SOCKET=str(path), agent=False)
    finally:
        server.kill()
        server.wait(30)
    rc, payload = result(output)
    assert rc == 1 and "'colour'" in payload  # validated in-process, not accepted by the squatter
    assert f"served by uid {uid}, not root".encode() in output
