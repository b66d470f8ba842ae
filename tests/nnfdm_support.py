"""nnf-dm test support: stubs generated from our .proto, a daemon process, and calls made as a user.

Clients run as ordinary users in their own processes (the daemon learns who calls from SO_PEERCRED,
so a test cannot pretend to be someone else in-process). ``calls_as(user, [...])`` runs a list of RPCs
through ``tests/nnfdm_calls.py`` with stubs protoc generated from ``nnfdm/api/datamovement.proto``
into a fresh directory, exactly as upstream's client-py is built.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PROTO = REPO / "nnfdm" / "api" / "datamovement.proto"
CALLS = REPO / "tests" / "nnfdm_calls.py"


def generate_stubs(out: Path) -> Path:
    """``protoc --python_out --grpc_python_out`` of our .proto into ``out`` (world-readable)."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO.parent}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            PROTO.name,
        ],
        check=True,
    )
    for path in [out, *out.iterdir()]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return out


@dataclass(frozen=True)
class ClientPython:
    """How an ordinary user runs Python with grpcio: the venv's interpreter where the user can use
    it, else Debian's with a world-readable copy of grpcio, protobuf and nnfdm (a CI clone may live
    where other users cannot read)."""

    python: str
    path: tuple[str, ...]

    def env(self, *extra: str | Path) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join([*map(str, extra), *self.path])}


def client_python(workdir: Path) -> ClientPython:
    user = pwd.getpwnam("dwsbt-user1")
    probe = subprocess.run(
        [sys.executable, "-c", "import grpc, google.protobuf, nnfdm.client"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        check=False,
    )
    if probe.returncode == 0 and not os.environ.get("DWSB_NNFDM_COPY_CLIENT"):
        return ClientPython(sys.executable, (str(REPO),))
    import importlib

    lib = workdir / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    for name in ("grpc", "google.protobuf", "typing_extensions", "nnfdm"):
        origin = Path(str(importlib.import_module(name).__file__)).resolve()
        top = origin.parent if origin.name == "__init__.py" else origin
        if name == "google.protobuf":
            top = top.parent  # the google namespace (protobuf and _upb)
        if top.is_dir():
            shutil.copytree(
                top, lib / top.name, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True
            )
        else:
            shutil.copy2(top, lib / top.name)
    subprocess.run(["chmod", "-R", "a+rX", str(workdir)], check=True)
    return ClientPython("/usr/bin/python3", (str(lib),))


@dataclass
class Daemon:
    socket: str
    proc: subprocess.Popen[bytes]
    log: Path
    stubs: Path
    client: ClientPython

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def running_daemon(
    workdir: Path, stubs: Path, *, config: Path | None = None, extra: tuple[str, ...] = ()
) -> Iterator[Daemon]:
    """``nnf-dm`` as root on a socket in ``workdir``; always stopped (SIGTERM, then SIGKILL)."""
    sock = workdir / "nnf-dm.sock"
    ready = workdir / "ready"
    ready.unlink(missing_ok=True)
    log = workdir / "nnf-dm.log"
    env = {k: v for k, v in os.environ.items() if k != "DWSBRIDGE_ROOT"}
    if config is not None:
        env["DWSBRIDGE_CONFIG"] = str(config)
    argv = [sys.executable, "-m", "nnfdm.cli", "--socket", str(sock), "--ready-file", str(ready), *extra]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out, env=env, cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nnf-dm did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        yield Daemon(str(sock), proc, log, stubs, client_python(workdir))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def start_calls_as(
    user: pwd.struct_passwd,
    daemon: Daemon,
    calls: list[dict[str, Any]],
    *,
    workflow: str = "",
    namespace: str = "default",
) -> subprocess.Popen[bytes]:
    """``calls`` as ``user`` in a process of their own, running in the background."""
    env = {
        **daemon.client.env(daemon.stubs),
        "DW_WORKFLOW_NAME": workflow,
        "DW_WORKFLOW_NAMESPACE": namespace,
        "NNF_DM_SOCKET": daemon.socket,
    }
    proc = subprocess.Popen(
        [daemon.client.python, str(CALLS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        cwd="/",
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(calls).encode())
    proc.stdin.close()
    return proc


def results_of(proc: subprocess.Popen[bytes], timeout: float = 120) -> list[dict[str, Any]]:
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    if proc.wait(timeout) != 0:
        raise AssertionError(f"client failed ({proc.returncode}): {err.decode(errors='replace')}")
    return list(json.loads(out))


def calls_as(
    user: pwd.struct_passwd,
    daemon: Daemon,
    calls: list[dict[str, Any]],
    *,
    workflow: str = "",
    namespace: str = "default",
    timeout: float = 120,
) -> list[dict[str, Any]]:
    """Run ``calls`` (``{"rpc": "Create", "args": {...}}``; ``"$uid"`` is the last Create's uid) as
    ``user``; return one dict per call: the response's fields (enums by name) or ``{"grpc_error": ...}``."""
    proc = start_calls_as(user, daemon, calls, workflow=workflow, namespace=namespace)
    try:
        return results_of(proc, timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
