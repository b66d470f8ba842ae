"""nnf-dm as a program: --simulated, the socket it serves, version, the systemd unit commands, and the
nnf-dm-client CLI a job uses."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nnfdm import cli
from nnfdm.daemon import SocketInUse, listen_unix
from tests.conftest import ensure_user, needs_root
from tests.nnfdm_support import REPO, Daemon, calls_as, generate_stubs, running_daemon


@pytest.fixture(scope="module")
def simulated() -> Iterator[Daemon]:
    base = Path(tempfile.mkdtemp(prefix="dwsbt-nnfdm-sim-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        with running_daemon(
            base, generate_stubs(base / "stubs"), extra=("--simulated", "--max-requests-per-user", "20")
        ) as daemon:
            yield daemon
    finally:
        shutil.rmtree(base, ignore_errors=True)


@needs_root
def test_simulated_mode_answers_as_upstreams_simulator(simulated: Daemon) -> None:
    user1, user2 = ensure_user("dwsbt-user1"), ensure_user("dwsbt-user2")
    replies = calls_as(
        user1,
        simulated,
        [
            {"rpc": "Create", "args": {"source": "/a", "destination": "/b"}},
            {"rpc": "Status", "args": {"uid": "$uid"}},
            {"rpc": "Status", "args": {"uid": "$uid"}},
            {"rpc": "List"},
            {"rpc": "Status", "args": {"uid": "bogus"}},
            {"rpc": "Status", "args": {"uid": "00000000-0000-0000-0000-000000000000"}},
            {"rpc": "Cancel", "args": {"uid": "$uid"}},
        ],
        workflow="any-workflow",
    )
    create, running, completed, listed, invalid, unknown, cancel = replies
    uid = create["uid"]
    assert create["status"] == "SUCCESS"
    assert running["state"] == "RUNNING"
    assert running["commandStatus"]["progress"] == 50
    assert "dcp" in running["commandStatus"]["command"]
    assert "(50%)" in running["commandStatus"]["lastMessage"]
    assert (completed["state"], completed["status"]) == ("COMPLETED", "SUCCESS")
    assert listed["uids"] == [uid]
    assert (invalid["state"], invalid["status"], invalid["message"]) == (
        "UNKNOWN_STATE",
        "INVALID",
        "Request bogus is invalid",
    )
    assert (unknown["status"], unknown["message"]) == (
        "NOT_FOUND",
        "Request 00000000-0000-0000-0000-000000000000 not found",
    )
    assert cancel["status"] == "SUCCESS"
    # better than upstream: another user neither sees nor deletes it
    listed2, delete2 = calls_as(
        user2, simulated, [{"rpc": "List"}, {"rpc": "Delete", "args": {"uid": uid}}], workflow="any-workflow"
    )
    assert listed2["uids"] == []
    assert delete2["status"] == "NOT_FOUND"
    (delete,) = calls_as(user1, simulated, [{"rpc": "Delete", "args": {"uid": uid}}], workflow="w")
    assert delete["status"] == "SUCCESS"


@needs_root
def test_simulated_mode_bounds_each_users_requests(simulated: Daemon) -> None:
    hog = ensure_user("dwsbt-user2")
    create = {"rpc": "Create", "args": {"source": "/a", "destination": "/b"}}
    replies = calls_as(hog, simulated, [create] * 21, workflow="w")
    assert [r["status"] for r in replies] == ["SUCCESS"] * 20 + ["FAILED"]
    assert "too many requests (20)" in replies[-1]["message"]
    (bad,) = calls_as(hog, simulated, [{"rpc": "Create", "args": {"source": "/a"}}], workflow="w")
    assert (bad["status"], bad["message"]) == ("INVALID", "destination path must be supplied")


def test_socket_is_made_0766_and_a_live_daemons_socket_is_never_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "nnf-dm.sock")
    sock = listen_unix(path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o766
        with pytest.raises(SocketInUse, match="already serving"):
            listen_unix(path)
    finally:
        sock.close()
    listen_unix(path).close()  # a stale socket (nobody listening) is replaced
    (tmp_path / "file").write_text("mine")
    with pytest.raises(SocketInUse, match="is not a socket"):
        listen_unix(str(tmp_path / "file"))
    assert (tmp_path / "file").read_text() == "mine"


@needs_root
def test_another_user_cannot_squat_the_socket_path(tmp_path: Path) -> None:
    """A socket another user bound first is refused while it is live (its owner would see every call)."""
    user = ensure_user("dwsbt-user2")
    shared = Path(tempfile.mkdtemp(prefix="dwsbt-", dir="/tmp"))
    os.chmod(shared, 0o1777)
    path = shared / "nnf-dm.sock"
    squatter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen();"
            " print('ready', flush=True); time.sleep(60)",
            str(path),
        ],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        stdout=subprocess.PIPE,
    )
    try:
        assert squatter.stdout is not None and squatter.stdout.readline().strip() == b"ready"
        with pytest.raises(SocketInUse):
            listen_unix(str(path))
    finally:
        squatter.kill()
        squatter.wait()
        shutil.rmtree(shared, ignore_errors=True)


def test_version_prints_version_and_api_versions(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("nnf-dm ") and "api versions: 1" in out


def test_install_writes_the_unit_with_the_flags_and_remove_deletes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["install", "--root", str(tmp_path), "--prefix", "/opt/dws", "--socket", "/run/nnf-dm.sock"]
    assert cli.main([*argv, "--nnf-node-name", "rabbit-01", "--simulated"]) == 0
    unit = tmp_path / "etc/systemd/system/nnf-dm.service"
    text = unit.read_text()
    assert "Description=Near-Node Flash (NNF) Data Movement Service" in text
    assert "ExecStart=/opt/dws/bin/nnf-dm \\\n   --socket \\\n   /run/nnf-dm.sock" in text
    assert "--nnf-node-name \\\n   rabbit-01" in text and "--simulated" in text
    assert "WantedBy=multi-user.target" in text
    assert cli.main(argv) == 2  # already installed
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["remove", "--root", str(tmp_path)]) == 0
    assert not unit.exists()
    assert cli.main(["remove", "--root", str(tmp_path)]) == 2


def test_start_stop_status_drive_systemctl_and_explain_when_they_cannot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(["start", "--root", str(tmp_path)]) == 2
    assert "systemd runs units from / only" in capsys.readouterr().err
    # systemd is not running here: a recording systemctl shows the calls made on a real node
    record = tmp_path / "calls"
    fake = tmp_path / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {record}\nexit 3\n')
    fake.chmod(0o755)
    monkeypatch.setenv("NNF_DM_SYSTEMCTL", str(fake))
    monkeypatch.setattr("nnfdm.systemd.unit_path", lambda root="/": tmp_path / "nnf-dm.service")
    assert cli.main(["status"]) == 2
    assert "is not installed" in capsys.readouterr().err
    (tmp_path / "nnf-dm.service").write_text("[Unit]\n")
    assert cli.main(["status"]) == 3  # systemctl's own exit code: not running
    assert cli.main(["stop"]) == 3
    assert record.read_text().splitlines() == ["status nnf-dm.service", "stop nnf-dm.service"]


def test_kubernetes_only_flags_are_accepted_and_documented_as_ignored() -> None:
    args = cli.parser().parse_args(
        ["--kubernetes-service-host=172.0.0.1", "--kubernetes-service-port=7777", "--node-name", "c1"]
    )
    assert args.kubernetes_service_host == "172.0.0.1" and args.node_name == "c1"
    assert "ignored" in cli.parser().format_help()


@needs_root
def test_client_cli_json_and_wait_against_the_simulated_daemon(simulated: Daemon) -> None:
    user = ensure_user("dwsbt-user1")
    env = {
        **simulated.client.env(),
        "NNF_DM_SOCKET": simulated.socket,
        "DW_WORKFLOW_NAME": "w1",
    }

    def client(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [simulated.client.python, "-m", "nnfdm.client_cli", *args],
            env=env,
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            capture_output=True,
            text=True,
            cwd="/",
            check=False,
            timeout=60,
        )

    done = client("create", "/a", "/b", "--wait")
    assert done.returncode == 0, done.stderr
    assert "50%" in done.stderr and "COMPLETED SUCCESS" in done.stdout
    created = client("create", "/a", "/b", "--json")
    uid = json.loads(created.stdout)["uid"]
    status = client("status", uid, "--json")
    assert json.loads(status.stdout)["state"] == "RUNNING"
    missing = client("status", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 3 and "not found" in missing.stderr
    assert client("list", "--json").returncode == 0
    assert uid in json.loads(client("list", "--json").stdout)["uids"]
    nowhere = subprocess.run(
        [simulated.client.python, "-m", "nnfdm.client_cli", "--socket", "/nonexistent.sock", "list"],
        env=env,
        capture_output=True,
        text=True,
        cwd="/",
        check=False,
    )
    assert nowhere.returncode == 1 and "is the daemon running?" in nowhere.stderr


def test_the_slurm_hook_path_never_imports_grpc() -> None:
    code = (
        "import sys, dwsbridge.slurm, dwsbridge.hookclient, dwsbridge.lifecycle;"
        " bad = [m for m in sys.modules if m.split('.')[0] in ('grpc', 'grpclib', 'google', 'nnfdm')];"
        " print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_connection_without_peer_credentials_is_refused() -> None:
    from nnfdm.peercred import NoCredentials, peer_credentials

    a, b = socket.socketpair(socket.AF_UNIX)
    try:
        assert peer_credentials(a).uid == os.getuid()
    finally:
        a.close()
        b.close()
    with socket.socket(socket.AF_INET) as tcp, pytest.raises(NoCredentials):
        peer_credentials(tcp)
