"""Starting and stopping a workflow's copy-offload server (the local backend's stand-in for the
NNF user container). The server runs as root, holding the site TLS key and the workflow's token
key, neither readable by the job's user; it copies as the job's user through the data mover."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dwsbridge.backends.local.driver import LocalDriver

READY_TIMEOUT = 15.0


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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reserve(driver: LocalDriver, obj: dict[str, Any]) -> dict[str, str]:
    """At Setup: choose the port and certificate, so the job's environment is known before PreRun."""
    cert, _ = site_certificate(driver)
    port = free_port()
    return {
        "NNF_CONTAINER_LAUNCHER": driver.config.compute_name,
        "NNF_CONTAINER_PORTS": str(port),
        "NNF_CONTAINER_HOSTNAMES": driver.config.compute_name,
        "COPY_OFFLOAD_CERT": str(cert),
    }


def start(driver: LocalDriver, obj: dict[str, Any]) -> int:
    """At PreRun: start the server detached from the caller (a Slurm hook must not wait for it)."""
    from dwsbridge.backends.local.driver import DriverError
    from dwsbridge.backends.local.store import is_alive

    name = obj["metadata"]["name"]
    for record in driver.store.processes(name, "server"):
        if is_alive(record.pid, record.start):
            return record.pid
    env_status = (obj.get("status") or {}).get("env") or {}
    port = env_status.get("NNF_CONTAINER_PORTS")
    if not port:
        raise DriverError(f"workflow {name}: no copy-offload port was reserved at Setup")
    cert, key = site_certificate(driver)
    token_key = driver.token_key_file(name)
    run_dir = driver.secrets_dir / name
    ready = run_dir / "server.ready"
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
    if not driver.track_process(obj, "server", proc.pid, {"port": int(port)}):
        proc.wait()
        raise DriverError(f"workflow {name}: torn down while its copy-offload server started")
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if ready.exists():
            return proc.pid
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-500:].strip()
            raise DriverError(f"workflow {name}: copy-offload server exited at start: {tail}")
        time.sleep(0.02)
    raise DriverError(f"workflow {name}: copy-offload server did not become ready in {READY_TIMEOUT:g}s")
