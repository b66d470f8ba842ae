"""Every benchmark in turn: `make bench`, or `.venv/bin/python -m bench.run [--quick] [--only NAME]`.

Each module keeps its own command line; this runs them one after another as separate processes (they
start clusters and servers of their own) and updates their sections of BENCHMARKS.md unless
--no-write. A module that fails is reported and the others still run; the exit status says whether
all passed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.usage import prog

REPO = Path(__file__).resolve().parent.parent
MARKDOWN = REPO / "BENCHMARKS.md"


NEEDS_ROOT = {
    "bench_slurm": "runs the Slurm test cluster",
    "bench_flux": "runs a real Flux with a root service",
    "bench_nnfdm": "runs clients as an ordinary user",
    "bench_storage": "mounts storage",
}


def commands(quick: bool, write: bool) -> dict[str, list[str]]:
    """Module name -> its arguments."""
    return {
        "bench_mover": [
            *(["--quick"] if quick else []),
            *(["--write-markdown", str(MARKDOWN)] if write else []),
        ],
        "bench_copyoffload": [*(["--duration", "3"] if quick else []), *([] if write else ["--no-write"])],
        "bench_slurm": [
            *(["--jobs", "50", "--rounds", "1", "--repeats", "3"] if quick else []),
            *([] if write else ["--no-write"]),
        ],
        "bench_kubernetes": [*(["--repeat", "3"] if quick else []), *([] if write else ["--no-write"])],
        "bench_flux": [
            *(["--jobs", "50", "--rounds", "1", "--repeats", "3"] if quick else []),
            *([] if write else ["--no-write"]),
        ],
        "bench_nnfdm": [
            *(["--requests", "200", "--repeats", "1"] if quick else []),
            *([] if write else ["--no-write"]),
        ],
        "bench_directives": [*(["--runs", "11"] if quick else []), *([] if write else ["--no-write"])],
        "bench_storage": [
            *(["--dirs", "20000", "--repeat", "5"] if quick else []),
            *([] if write else ["--no-write"]),
        ],
        "bench_s3": [*(["--rounds", "1"] if quick else []), *([] if write else ["--no-write"])],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog("bench.run"), description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs of every benchmark")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these modules (e.g. bench_slurm)")
    args = parser.parse_args(argv)
    failed = []
    for name, extra in commands(args.quick, not args.no_write).items():
        if args.only and name not in args.only:
            continue
        if name in NEEDS_ROOT and os.geteuid() != 0:
            print(f"== {name}: skipped ({NEEDS_ROOT[name]}: needs root)", flush=True)
            continue
        command = [sys.executable, "-m", f"bench.{name}", *extra]
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        started = time.monotonic()
        rc = subprocess.run(command, cwd=REPO, check=False).returncode
        print(f"== {name}: exit {rc} after {time.monotonic() - started:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
