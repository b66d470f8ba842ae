"""Benchmark: /status of the copy-offload server over TLS 1.3 with keep-alive, against nginx as the limit.

    .venv/bin/python -m bench.bench_copyoffload [--duration 10] [--no-write]

Load comes from wrk (a C load generator, so it does not compete for our server's GIL), at 1, 16 and 64
concurrent connections. The reference is nginx (one worker) serving a small static file over TLS 1.3 on
the same machine. Installs wrk and nginx-light from Debian when missing (needs root). Writes the figures
to the "## Copy-offload server" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.markdown import write_section
from bench.usage import prog

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Copy-offload server"
CONNECTIONS = (1, 16, 64)
GOAL_RPS, GOAL_P99_MS = 2000.0, 50.0


@dataclass
class Result:
    target: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def ensure_tools() -> None:
    missing = [pkg for tool, pkg in (("wrk", "wrk"), ("nginx", "nginx-light")) if not _which(tool)]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"bench: install {' '.join(missing)} (apt-get install {' '.join(missing)}) or run as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    subprocess.run(["apt-get", "update", "-q", *lock], check=False, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *lock, *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def _which(tool: str) -> str | None:
    return shutil.which(tool) or next(
        (p for p in (f"/usr/sbin/{tool}", f"/usr/bin/{tool}") if os.access(p, os.X_OK)), None
    )


def wait_port(port: int, timeout: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(url: str, connections: int, duration: int, script: Path, target: str) -> Result:
    threads = min(connections, 2)
    out = subprocess.run(
        [
            _which("wrk") or "wrk",
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{duration}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(g) for g in m.groups())
    return Result(target, connections, rps, p50, p99, errors)


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_protocols TLSv1.3;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {dir}/www;
        location / {{ default_type application/json; }}
    }}
}}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog("bench.bench_copyoffload"), description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    ensure_tools()

    sys.path.insert(0, str(ROOT))
    from copyoffload import certs, tokens
    from copyoffload.client import CopyOffloadClient

    work = Path(tempfile.mkdtemp(prefix="bench-copyoffload-"))
    work.chmod(0o755)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        cert, key = certs.make_site_certificate(work / "tls", ["localhost"], ["127.0.0.1"])
        (work / "tls").chmod(0o755)
        token_key = work / "token_key.pem"
        tokens.write_key_file(token_key)
        token = tokens.mint_token(token_key.read_bytes(), "bench")

        ready = work / "ready.json"
        env = {
            **os.environ,
            "DW_WORKFLOW_NAME": "bench",
            "NNF_NODE_NAME": "rabbit-0",
            "PYTHONPATH": str(ROOT),
        }
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "copyoffload.cli",
                "server",
                "--addr",
                "127.0.0.1:0",
                "--cert",
                str(cert),
                "--cakey",
                str(key),
                "--tokenkey",
                str(token_key),
                "--mock",
                "--uid",
                str(os.getuid()),
                "--gid",
                str(os.getgid()),
                "--ready-file",
                str(ready),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        procs.append(server)
        deadline = time.monotonic() + 30
        while not ready.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("copy-offload server did not start")
            time.sleep(0.05)
        port = int(json.loads(ready.read_text())["port"])
        with CopyOffloadClient("127.0.0.1", port, token=token, cert=str(cert)) as co:
            job = co.copy("/bench/src", "/bench/dest")  # a mock copy: running until the server stops
            status_body = json.dumps(co.status(job).raw, separators=(",", ":")) + "\n"

        script = work / "headers.lua"
        script.write_text(
            f'wrk.headers["Accepts-version"] = "1.0"\nwrk.headers["Authorization"] = "Bearer {token}"\n'
        )
        (work / "www").mkdir()
        (work / "www" / "status.json").write_text(status_body)
        (work / "www").chmod(0o755)
        (work / "www" / "status.json").chmod(0o644)
        nginx_port = free_port()
        conf = work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=work, port=nginx_port, cert=cert, key=key))
        nginx = subprocess.Popen(
            [_which("nginx") or "nginx", "-p", str(work), "-e", "stderr", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
        )
        procs.append(nginx)
        wait_port(nginx_port)

        ours = f"https://127.0.0.1:{port}/status/{job}?maxWaitSecs=0"
        ref = f"https://127.0.0.1:{nginx_port}/status.json"
        results: list[Result] = []
        for c in CONNECTIONS:
            results.append(run_wrk(ours, c, args.duration, script, "copyoffload /status"))
            results.append(run_wrk(ref, c, args.duration, script, "nginx static file"))
            print(results[-2], results[-1], sep="\n", flush=True)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM if proc is procs[0] else signal.SIGQUIT)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(work, ignore_errors=True)

    section = render(results, args.duration)
    print(section)
    if not args.no_write:
        write_section(ROOT / "BENCHMARKS.md", section)
    at16 = next(r for r in results if r.connections == 16 and r.target.startswith("copyoffload"))
    return 0 if at16.rps >= GOAL_RPS and at16.p99_ms < GOAL_P99_MS and at16.errors == 0 else 1


def render(results: list[Result], duration: int) -> str:
    rows = [
        f"| {r.connections} | {r.target} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |"
        for r in results
    ]
    at16 = next(r for r in results if r.connections == 16 and r.target.startswith("copyoffload"))
    verdict = "met" if at16.rps >= GOAL_RPS and at16.p99_ms < GOAL_P99_MS and at16.errors == 0 else "NOT met"
    cpu = _cpu_model()
    return "\n".join(
        [
            SECTION,
            "",
            "`GET /status/<job>?maxWaitSecs=0` with a valid bearer token and `Accepts-version: 1.0`,",
            f"over TLS 1.3 with keep-alive, measured by wrk ({duration} s per row, `--latency`; 1 wrk thread",
            "at 1 connection, 2 otherwise) against `copyoffload server` (one Python process, a thread per",
            "connection: `copyoffload/server/transport.py`). The limit: nginx (1 worker) serving that JSON",
            "as a static file over TLS 1.3 on the same machine. Server and load generator share the cores.",
            "",
            f"Machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()},",
            f"{ssl.OPENSSL_VERSION}. Run with `.venv/bin/python -m bench.bench_copyoffload`;",
            f"{time.strftime('%Y-%m-%d')}.",
            "",
            "| connections | server | requests/s | p50 ms | p99 ms | errors |",
            "|---:|---|---:|---:|---:|---:|",
            *rows,
            "",
            f"Goal (>= {GOAL_RPS:,.0f} requests/s at 16 connections with p99 < {GOAL_P99_MS:.0f} ms): "
            f"**{verdict}** ({at16.rps:,.0f} requests/s, p99 {at16.p99_ms:.2f} ms).",
            "",
        ]
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
