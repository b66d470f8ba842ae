"""Starting and stopping a workflow's copy-offload server (the local backend's stand-in for the
NNF user container). The server runs as root, holding the site TLS key and the workflow's token
key, neither readable by the job's user; it copies as the job's user through the data mover."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dwsbridge.backends.local.driver import LocalDriver

READY_TIMEOUT = 15.0
log = logging.getLogger("dwsbridge.local")


def site_certificate(driver: LocalDriver) -> tuple[Path, Path]:
    """The site certificate and key, made once (like the install step upstream) if absent."""
    tls = driver.config.tls_dir
    cert, key = tls / "cert.pem", tls / "key.pem"
    if cert.exists() and key.exists():
        return cert, key
    from copyoffload.certs import make_site_certificate

    tls.mkdir(parents=True, exist_ok=True)
    os.chmod(tls, 0o755)
    names = sorted({driver.config.compute_name, "localhost", socket.gethostname()})
    made_cert, made_key = make_site_certificate(tls, names=names, ips=["127.0.0.1", "::1"])
    os.chmod(made_cert, 0o644)
    os.chmod(made_key, 0o600)
    return made_cert, made_key


def reserve(driver: LocalDriver, obj: dict[str, Any]) -> dict[str, str]:
    """At Setup: start the server held (listening, not yet serving), so its port is known for the job's
    environment and stays ours until PreRun: no other user can bind it in between (11.10)."""
    cert, _ = site_certificate(driver)
    info = _launch(driver, obj, port=0, held=True)
    return {
        "NNF_CONTAINER_LAUNCHER": driver.config.compute_name,
        "NNF_CONTAINER_PORTS": str(info["port"]),
        "NNF_CONTAINER_HOSTNAMES": driver.config.compute_name,
        "COPY_OFFLOAD_CERT": str(cert),
    }


def start(driver: LocalDriver, obj: dict[str, Any]) -> int:
    """At PreRun: let the server held since Setup serve (or, if it is gone, start one on its port)."""
    from dwsbridge.backends.local.driver import DriverError
    from dwsbridge.backends.local.store import is_alive

    name = obj["metadata"]["name"]
    ready = _ready_file(driver, name)
    for record in driver.store.processes(name, "server"):
        if is_alive(record.pid, record.start):
            if _read_ready(ready).get("held", True):  # SIGUSR1 to a serving server does nothing
                os.kill(record.pid, signal.SIGUSR1)
                _wait_ready(ready, name, functools.partial(_gone, record.pid, record.start), held=False)
            return record.pid
    env_status = (obj.get("status") or {}).get("env") or {}
    port = env_status.get("NNF_CONTAINER_PORTS")
    if not port:
        raise DriverError(f"workflow {name}: no copy-offload port was reserved at Setup")
    log.warning("workflow=%s its copy-offload server held since Setup is gone: starting one", name)
    return int(_launch(driver, obj, port=int(port), held=False)["pid"])


def _gone(pid: int, start: str | None) -> bool:
    from dwsbridge.backends.local.store import is_alive

    return not is_alive(pid, start)


def _ready_file(driver: LocalDriver, name: str) -> Path:
    return driver.secrets_dir / name / "server.ready"


def _read_ready(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _wait_ready(path: Path, name: str, exited: Callable[[], bool], *, held: bool) -> dict[str, Any]:
    from dwsbridge.backends.local.driver import DriverError

    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        info = _read_ready(path)
        if info and bool(info.get("held")) == held:
            return info
        if exited():
            raise DriverError(f"workflow {name}: copy-offload server exited at start")
        time.sleep(0.02)
    raise DriverError(f"workflow {name}: copy-offload server did not become ready in {READY_TIMEOUT:g}s")


def _launch(driver: LocalDriver, obj: dict[str, Any], *, port: int, held: bool) -> dict[str, Any]:
    """Start the workflow's server detached from the caller (a Slurm hook must not wait for it)."""
    from dwsbridge.backends.local.driver import DriverError

    name = obj["metadata"]["name"]
    cert, key = site_certificate(driver)
    token_key = driver.token_key_file(name)
    ready = _ready_file(driver, name)
    ready.unlink(missing_ok=True)
    log_path = driver.root / "log" / f"{name}-copy-offload.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DW_WORKFLOW_NAME": name,
        "DW_WORKFLOW_NAMESPACE": obj["metadata"].get("namespace", "default"),
        "NNF_NODE_NAME": driver.config.compute_name,
        # A bridge run from a checkout (not installed into this interpreter) still finds copyoffload.
        "PYTHONPATH": str(Path(__file__).resolve().parents[3]),
    }
    if driver.config.s3:  # the site's S3 settings, the base of every s3:// copy the server runs
        from copyoffload.s3options import S3_OPTIONS_ENV

        env[S3_OPTIONS_ENV] = json.dumps(driver.config.s3)
    command = [
        sys.executable,
        "-m",
        "copyoffload.cli",
        "server",
        "--addr",
        f"127.0.0.1:{port}",
        "--cert",
        str(cert),
        "--cakey",
        str(key),
        "--tokenkey",
        str(token_key),
        "--uid",
        str(obj["spec"]["userID"]),
        "--gid",
        str(obj["spec"]["groupID"]),
        "--ready-file",
        str(ready),
    ]
    if held:
        command.append("--hold")
    if driver.config.copy_offload_profiles:
        command += ["--profiles", str(driver.config.copy_offload_profiles)]
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    if not driver.track_process(obj, "server", proc.pid, {"port": port, "held": held}):
        proc.wait()
        raise DriverError(f"workflow {name}: torn down while its copy-offload server started")
    try:
        return _wait_ready(ready, name, lambda: proc.poll() is not None, held=held)
    except DriverError as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        tail = log_path.read_text(errors="replace")[-500:].strip()
        raise DriverError(f"{exc}: {tail}" if tail else str(exc)) from None
