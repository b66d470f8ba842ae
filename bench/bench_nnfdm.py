"""Benchmark: nnf-dm (gRPC on a Unix socket) against the copy-offload server (HTTPS), same requests.

    .venv/bin/python -m bench.bench_nnfdm [--requests 1000] [--no-write]      (as root)

One workflow of an ordinary user in PreRun on the local backend (with requires=copy-offload, so the
bridge starts its copy-offload server too) and one `nnf-dm` daemon. Client processes run as that
user and make dry-run requests, each a round trip of Create + Status(maxWaitTime=-1) (HTTP: POST
/trial + GET /status?maxWaitSecs=-1). Latency: median and p99 with 1 and 16
concurrent clients; throughput: --requests round trips spread over 16 clients, wall time from the
first start to the last end. Writes the "## nnf-dm daemon" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pwd
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.markdown import write_section
from bench.usage import prog

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## nnf-dm daemon"
USER = "dwsbt-bench"
DIRECTIVES = [
    "#DW jobdw type=xfs capacity=1GiB name=scratch requires=copy-offload",
    "#DW container name=co profile=copy-offload-default",
]


@dataclass
class Row:
    transport: str
    clients: int
    round_trips: int
    p50_ms: float
    p99_ms: float
    per_second: float


def worker(mode: str, count: int, go: str) -> None:
    """As the workflow's user: wait for ``go``, make ``count`` round trips, print timings as JSON."""
    source = os.environ["DW_JOB_scratch"]  # noqa: SIM112 (DWS's spelling)
    if mode == "grpc":
        from nnfdm.client import DataMovementClient

        dm = DataMovementClient()
        dm.version()  # connected before the clock starts, as the HTTP client's first call is below

        def round_trip() -> str:
            uid = dm.create(source, source + "/copy", dryrun=True)
            status = dm.status(uid, -1)
            assert status.status == "SUCCESS", status
            return uid

        def clean_up(uid: str) -> None:
            pass  # not deleted, as the HTTP server's are not: the daemon's per-user cap is raised

    else:
        from copyoffload.client import CopyOffloadClient

        co = CopyOffloadClient()
        co.hello()

        def round_trip() -> str:
            job = co.copy(source, source + "/copy", dry_run=True)
            status = co.status(job, -1)
            assert status.status == "success", status
            return job

        def clean_up(uid: str) -> None:
            pass  # the server forgets finished requests itself

    while not os.path.exists(go):
        time.sleep(0.001)
    latencies = []
    started = time.time()
    for _ in range(count):
        t0 = time.perf_counter()
        uid = round_trip()
        latencies.append(time.perf_counter() - t0)
        clean_up(uid)
    print(json.dumps({"start": started, "end": time.time(), "latencies": latencies}))


def run(mode: str, clients: int, total: int, env: dict[str, str], base: Path) -> Row:
    user = pwd.getpwnam(USER)
    go = base / f"go-{mode}-{clients}"
    go.unlink(missing_ok=True)
    per_client = max(1, total // clients)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.bench_nnfdm", "worker", mode, str(per_client), str(go)],
            cwd=ROOT,
            env=env,
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            stdout=subprocess.PIPE,
        )
        for _ in range(clients)
    ]
    time.sleep(1.5 + 0.1 * clients)  # every client imported and connected
    go.touch()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            sys.exit(f"bench: a {mode} client failed")
        results.append(json.loads(out))
    latencies = sorted(x for r in results for x in r["latencies"])
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return Row(
        "nnf-dm gRPC (Unix socket)" if mode == "grpc" else "copy-offload HTTPS (TLS 1.3)",
        clients,
        len(latencies),
        statistics.median(latencies) * 1000,
        p99 * 1000,
        len(latencies) / wall,
    )


def median_row(runs: list[Row]) -> Row:
    """Each figure's median over the runs (the machine is shared: single runs vary)."""
    first = runs[0]
    return Row(
        first.transport,
        first.clients,
        first.round_trips,
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        statistics.median(r.per_second for r in runs),
    )


def measure(requests: int, repeats: int) -> list[Row]:
    from dwsbridge.backends.local.backend import LocalBackend
    from dwsbridge.config import Config
    from dwsbridge.lifecycle import Lifecycle
    from tests.helpers_users import ensure_user

    uid, gid = ensure_user(USER)
    base = Path(tempfile.mkdtemp(prefix="dwsbt-bench-nnfdm-", dir="/tmp"))
    os.chmod(base, 0o755)
    root = base / "root"
    (base / "config.yaml").write_text(f"root: {root}\n")
    config = Config(root=root)
    lc = Lifecycle(config, LocalBackend(config))
    name = lc.create(wlm="slurm", job_id=os.getpid(), uid=uid, gid=gid, directives=DIRECTIVES)
    sock = base / "nnf-dm.sock"
    daemon = None
    try:
        lc.walk(name, ["Setup", "DataIn", "PreRun"])
        env = {
            "PATH": "/usr/bin:/bin",
            **lc.environment(name),
            "NNF_DM_SOCKET": str(sock),
            "DW_WORKFLOW_NAME": name,
            "DW_WORKFLOW_NAMESPACE": "default",
        }
        daemon = subprocess.Popen(
            [
                *(sys.executable, "-m", "nnfdm.cli", "--socket", str(sock)),
                *("--ready-file", str(base / "ready"), "--max-requests-per-user", "1000000"),
            ],
            cwd=ROOT,
            env={**os.environ, "DWSBRIDGE_CONFIG": str(base / "config.yaml"), "NNF_DM_LOG_LEVEL": "WARNING"},
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not (base / "ready").exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                sys.exit("bench: nnf-dm did not start")
            time.sleep(0.05)
        rows = []
        for clients, total in ((1, 200), (16, requests)):
            for mode in ("grpc", "http"):
                runs = []
                for _ in range(repeats):  # alternating would be fairer; the runs are long enough
                    runs.append(run(mode, clients, total, env, base))
                    print(runs[-1], flush=True)
                rows.append(median_row(runs))
        return rows
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(15)
        lc.teardown(name)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def markdown(rows: list[Row], requests: int, repeats: int, load: float) -> str:
    lines = [
        SECTION,
        "",
        "Dry-run requests from client processes running as the workflow's user (not root): a round trip is",
        "Create + Status(maxWaitTime=-1) for nnf-dm (`nnfdm.client`, grpcio, Unix socket; the daemon is",
        "grpclib on asyncio, caller from SO_PEERCRED, checked against the workflow in the local store on",
        "every call), and POST /trial + GET /status?maxWaitSecs=-1 for the workflow's copy-offload server",
        "(`copyoffload.client`, keep-alive TLS 1.3, bearer token). Both run each request as a JobTable job.",
        f"Command: `.venv/bin/python -m bench.bench_nnfdm --requests {requests} --repeats {repeats}`",
        f"(as root; each figure the median of {repeats} runs),",
        f"{time.strftime('%Y-%m-%d')}; {os.cpu_count()} cores (1-minute load {load:.1f} at the start: the",
        f"machine is shared), Python {platform.python_version()}; servers and clients share the cores.",
        "Round trips/s: over the wall time of all clients",
        f"(16 clients: the throughput of {requests} dry-run requests).",
        "",
        "| transport | clients | round trips | median ms | p99 ms | round trips/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        figures = f"{r.round_trips:,} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.per_second:,.0f}"
        lines.append(f"| {r.transport} | {r.clients} | {figures} |")
    lines += [
        "",
        "The gap is the server's HTTP/2: grpclib is pure Python (h2); one call takes about 0.8 ms end to",
        "end even for Version (on the simulated daemon, no store), against the copy-offload server's",
        "HTTP/1.1 on a kept-alive TLS connection. We serve with grpclib because grpcio's server gives a",
        "handler no way to reach its connection's socket, so it cannot learn the caller from SO_PEERCRED",
        "(docs/nnf-dm.md). Create also reads the workflow from the store and starts the copy's thread; a",
        "Status whose request is already done is answered without a waiting thread.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if args and args[0] == "worker":
        worker(args[1], int(args[2]), args[3])
        return 0
    parser = argparse.ArgumentParser(
        prog=prog("bench.bench_nnfdm"), description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--requests", type=int, default=1000, help="round trips over 16 clients")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; each figure's median")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    opts = parser.parse_args(args)
    if os.geteuid() != 0:
        sys.exit("bench: run as root (the clients run as an ordinary user)")
    load = os.getloadavg()[0]
    rows = measure(opts.requests, max(1, opts.repeats))
    text = markdown(rows, opts.requests, max(1, opts.repeats), load)
    print(text)
    if not opts.no_write:
        write_section(ROOT / "BENCHMARKS.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
