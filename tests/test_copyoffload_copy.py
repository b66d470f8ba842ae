# ruff: noqa: F401, F811  (pytest fixtures are imported from test_copyoffload_support by name)
"""Copies that really move data (mover, external commands) as the workflow's user; many clients at once."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from copyoffload.client import CopyOffloadClient, CopyOffloadError
from tests.test_copyoffload_support import (
    Running,
    Tls,
    running_server,
    server,
    tls,
    token,
    workflow_key,
)


def client_for(srv: Running) -> CopyOffloadClient:
    assert srv.tls is not None
    return CopyOffloadClient("127.0.0.1", srv.port, token=srv.token, cert=str(srv.tls.cert))


@pytest.fixture
def mover_server(tls: Tls, workflow_key: Path, token: str) -> Running:
    with running_server(tls=tls, key=workflow_key, token=token, gated=False) as srv:
        yield srv  # type: ignore[misc]


def make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    (root / "sub" / "deeper" / "c.txt").write_text("gamma\n" * 1000)
    os.symlink("a.txt", root / "link")


def test_copy_moves_a_tree_and_reports_success(mover_server: Running, tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    make_tree(src)
    with client_for(mover_server) as co:
        st = co.wait(co.copy(str(src), str(dest), slots=2))
    assert (st.state, st.status, st.progress) == ("completed", "success", 100), st
    assert st.command_status.last_message.startswith("Copied ")
    for rel in ("a.txt", "sub/b.bin", "sub/deeper/c.txt"):
        assert (dest / rel).read_bytes() == (src / rel).read_bytes()
    assert os.readlink(dest / "link") == "a.txt"


def test_copy_of_missing_source_fails_with_the_reason(mover_server: Running, tmp_path: Path) -> None:
    with client_for(mover_server) as co:
        st = co.wait(co.copy(str(tmp_path / "missing"), str(tmp_path / "dest")))
    assert (st.state, st.status) == ("completed", "failed")
    assert "missing" in st.message


def test_dry_run_copies_nothing(mover_server: Running, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    with client_for(mover_server) as co:
        assert co.wait(co.copy(str(src), str(tmp_path / "dest"), dry_run=True)).succeeded
    assert not (tmp_path / "dest").exists()


PROFILES = """\
default: default
profiles:
  default: {workers: 2}
  sleeper: {command: ["sleep", "60"]}
  chatty: {command: ["sh", "-c", "echo 'Copied 1 MiB (50%)'; echo 'Copied 2 MiB (100%)'; echo done {source}"]}
  broken: {command: ["sh", "-c", "echo no space left >&2; exit 3"]}
"""


@pytest.fixture
def command_server(tls: Tls, workflow_key: Path, token: str, tmp_path: Path) -> Running:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(PROFILES)
    with running_server(tls=tls, key=workflow_key, token=token, gated=False, profiles=str(profiles)) as srv:
        yield srv  # type: ignore[misc]


def test_cancel_kills_a_running_copy(command_server: Running) -> None:
    with client_for(command_server) as co:
        name = co.copy("/a", "/b", profile="sleeper")
        pid = 0
        for _ in range(200):
            pid = command_server.server.table._jobs[name].child_pid
            if pid:
                break
            time.sleep(0.02)
        assert pid
        co.cancel(name)
        st = co.wait(name)
    assert (st.state, st.status) == ("completed", "cancelled")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_external_command_progress_and_last_message(command_server: Running) -> None:
    with client_for(command_server) as co:
        st = co.wait(co.copy("/from", "/to", profile="chatty"))
    assert st.succeeded and st.progress == 100
    assert st.command_status.last_message == "done /from"
    assert st.command_status.command.startswith("sh -c")


def test_external_command_failure_is_reported(command_server: Running) -> None:
    with client_for(command_server) as co:
        st = co.wait(co.copy("/from", "/to", profile="broken"))
    assert (st.status, st.message) == ("failed", "sh exited with status 3: no space left")


def test_two_hundred_concurrent_clients_while_copies_run(server: Running) -> None:
    names = [server.trial() for _ in range(4)]
    baseline = threading.active_count()
    errors: list[str] = []
    barrier = threading.Barrier(200)

    def client_loop() -> None:
        try:
            with client_for(server) as co:
                barrier.wait(30)
                for i in range(5):
                    st = co.status(names[i % len(names)])
                    if st.state not in ("running", "pending", "starting"):
                        errors.append(f"unexpected state {st.state}")
                    if sorted(co.list()) != sorted(names):
                        errors.append("list mismatch")
                    co.hello()
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=client_loop) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert server.request("GET", "/hello")[:2] == (200, b"hello back at ya\n")
    # Connection threads go away with their clients: memory stays bounded.
    for _ in range(100):
        if threading.active_count() <= baseline + 5:
            break
        time.sleep(0.05)
    assert threading.active_count() <= baseline + 5


def wait_for_file(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        if proc.poll() is not None:
            raise AssertionError(f"server exited early: {proc.stdout.read() if proc.stdout else ''!r}")
        time.sleep(0.05)
    raise AssertionError("server never became ready")


@pytest.fixture
def ordinary_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user")
    name = f"dwsbco{os.getpid()}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield pwd.getpwnam(name)  # type: ignore[misc]
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def open_dir() -> Path:
    """A directory every user can traverse (pytest's tmp_path sits under a root-only 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="dwsb-co-"))
    path.chmod(0o755)
    try:
        yield path  # type: ignore[misc]
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.root
def test_server_process_copies_as_the_workflow_user(
    ordinary_user: pwd.struct_passwd, tls: Tls, workflow_key: Path, token: str, open_dir: Path
) -> None:
    tmp_path = open_dir
    src, dest_parent = tmp_path / "src", tmp_path / "out"
    make_tree(src)
    for path in [src, *src.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    secret = tmp_path / "root-only"
    secret.write_text("root's\n")
    secret.chmod(0o600)
    dest_parent.mkdir()
    os.chown(dest_parent, ordinary_user.pw_uid, ordinary_user.pw_gid)
    ready = tmp_path / "ready.json"
    env = {
        **os.environ,
        "DW_WORKFLOW_NAME": "bb42",
        "DW_WORKFLOW_NAMESPACE": "default",
        "NNF_NODE_NAME": "rabbit-9",
    }
    argv = [sys.executable, "-m", "copyoffload.cli", "server", "--addr", "127.0.0.1:0"]
    argv += ["--cert", str(tls.cert), "--cakey", str(tls.key), "--tokenkey", str(workflow_key)]
    argv += [
        "--uid",
        str(ordinary_user.pw_uid),
        "--gid",
        str(ordinary_user.pw_gid),
        "--ready-file",
        str(ready),
    ]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        info = wait_for_file(ready, proc)
        assert info["pid"] == proc.pid and info["url"] == f"https://127.0.0.1:{info['port']}"
        with CopyOffloadClient("127.0.0.1", int(info["port"]), token=token, cert=str(tls.cert)) as co:
            name = co.copy(str(src), str(dest_parent / "copy"))
            assert name.startswith("rabbit-9--nnf-copy-offload-node-")
            st = co.wait(name)
            assert st.succeeded, st
            for path in (dest_parent / "copy").rglob("*"):
                owner = path.lstat()
                assert (owner.st_uid, owner.st_gid) == (ordinary_user.pw_uid, ordinary_user.pw_gid), path
            assert (dest_parent / "copy" / "sub" / "b.bin").read_bytes() == (
                src / "sub" / "b.bin"
            ).read_bytes()
            # The user cannot read what only root can: the server lends no rights.
            st = co.wait(co.copy(str(secret), str(dest_parent / "stolen")))
            assert st.status == "failed" and "ermission denied" in st.message
            assert not (dest_parent / "stolen").exists()
            with pytest.raises(CopyOffloadError):
                co.copy(str(src), "")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert not ready.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
