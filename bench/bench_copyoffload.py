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
    cpu_us: float | None = None  # server CPU time per request (robust to a loaded machine)


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


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(
    url: str, connections: int, duration: int, script: Path, target: str, server_pid: int | None = None
) -> Result:
    threads = min(connections, 2)
    cpu_before = cpu_seconds(server_pid) if server_pid else 0.0
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
    cpu_us = None
    if server_pid:
        requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        cpu_us = (cpu_seconds(server_pid) - cpu_before) / max(1, requests) * 1e6
    return Result(target, connections, rps, p50, p99, errors, cpu_us)


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

        server, port = start_server(work, cert, key, token_key, "ready.json")
        procs.append(server)
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
            results.append(run_wrk(ours, c, args.duration, script, "copyoffload /status", server.pid))
            results.append(run_wrk(ref, c, args.duration, script, "nginx static file"))
            print(results[-2], results[-1], sep="\n", flush=True)
        with hostile_connections(port, HOSTILE):
            results.append(run_wrk(ours, 16, args.duration, script, HOSTILE_PEER_CHECK, server.pid))
        print(results[-1], flush=True)
        capped, capped_port = start_server(
            work, cert, key, token_key, "ready-capped.json", "--any-local-user"
        )
        procs.append(capped)
        with CopyOffloadClient("127.0.0.1", capped_port, token=token, cert=str(cert)) as co:
            capped_job = co.copy("/bench/src", "/bench/dest")
        capped_url = f"https://127.0.0.1:{capped_port}/status/{capped_job}?maxWaitSecs=0"
        with hostile_connections(capped_port, HOSTILE):
            results.append(run_wrk(capped_url, 16, args.duration, script, HOSTILE_CAP_ONLY, capped.pid))
        print(results[-1], flush=True)
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


def start_server(
    work: Path, cert: Path, key: Path, token_key: Path, ready_name: str, *extra: str
) -> tuple[subprocess.Popen[bytes], int]:
    """A mock server (copies run until it stops) as root for the bench's own uid; its port."""
    ready = work / ready_name
    env = {**os.environ, "DW_WORKFLOW_NAME": "bench", "NNF_NODE_NAME": "rabbit-0", "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "copyoffload.cli", "server", "--addr", "127.0.0.1:0", "--cert", str(cert)]
    argv += ["--cakey", str(key), "--tokenkey", str(token_key), "--mock-forever"]
    argv += ["--uid", str(os.getuid()), "--gid", str(os.getgid()), "--ready-file", str(ready), *extra]
    server = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not ready.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError("copy-offload server did not start")
        time.sleep(0.05)
    return server, int(json.loads(ready.read_text())["port"])


HOSTILE = 1000
HOSTILE_PEER_CHECK = f"copyoffload /status, {HOSTILE:,} hostile idle connections (peer uid check)"
HOSTILE_CAP_ONLY = f"copyoffload /status, {HOSTILE:,} hostile idle connections (stranger cap only)"

# Another user's process holding HOSTILE idle connections, re-opening each one the server closes (1/s).
HOLDER = """
import resource, select, socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
def connect():
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return None
held = [connect() for _ in range(count)]
print("holding", flush=True)
while True:
    time.sleep(1)
    live = [s for s in held if s is not None]
    readable = select.select(live, [], [], 0)[0] if live else []
    for i, s in enumerate(held):
        if s is None or s in readable:
            if s is not None:
                s.close()
            held[i] = connect()
"""


class hostile_connections:
    """Run HOLDER as another user (nobody, when we are root) for the duration of the block."""

    def __init__(self, port: int, count: int) -> None:
        self.argv = [sys.executable, "-c", HOLDER, str(port), str(count)]
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> None:
        kwargs: dict[str, object] = (
            {"user": 65534, "group": 65534, "extra_groups": []} if os.geteuid() == 0 else {}
        )
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True, cwd="/", **kwargs)  # type: ignore[call-overload]
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "holding":
            raise RuntimeError("the hostile holder did not start")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


def render(results: list[Result], duration: int) -> str:
    rows = [
        f"| {r.connections} | {r.target} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} | "
        + (f"{r.cpu_us:.0f} |" if r.cpu_us is not None else "- |")
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
            "The last column is our server's user+system CPU time per request (from /proc): steadier",
            "than requests/s when other work shares the machine, yet not immune to it (shared cores).",
            "",
            f"Machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()},",
            f"{ssl.OPENSSL_VERSION}. Run with `.venv/bin/python -m bench.bench_copyoffload`;",
            f"{time.strftime('%Y-%m-%d')}.",
            "",
            "| connections | server | requests/s | p50 ms | p99 ms | errors | server CPU µs/request |",
            "|---:|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"Goal (>= {GOAL_RPS:,.0f} requests/s at 16 connections with p99 < {GOAL_P99_MS:.0f} ms): "
            f"**{verdict}** ({at16.rps:,.0f} requests/s, p99 {at16.p99_ms:.2f} ms).",
            "",
            f"The last two rows: another local user (nobody) holds {HOSTILE:,} idle connections to the",
            "server while wrk measures, re-opening each one the server closes once a second. With the peer",
            "uid check (the default) the server closes them at accept; with `--any-local-user` only the cap",
            "on connections without an admitted request (64, oldest evicted) and their 10 s deadline act.",
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
