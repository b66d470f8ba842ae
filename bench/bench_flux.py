"""Flux benchmarks on a real flux-core 0.88.0 instance (testenv/flux_instance.py), local backend, set up
as the Flux tests set it up (`dwsbridge flux install`; the service as root; the instance owned by a
test user):

  1. overhead of a `dw` job, submit to `clean`: the same one-task job with and without `-S dw=...`
     (jobdw only, and jobdw + copy_in + copy_out of a small file), median of --repeats;
  2. submit rate: `flux submit --cc=1-N --urgency=0` of N held jobs with and without `dw` (every dw
     job goes through the validator plugin in job-ingest), median of --rounds.

Run as root: `.venv/bin/python -m bench.bench_flux [--jobs 100] [--repeats 5] [--no-write]`. Figures go
into BENCHMARKS.md, section "## Flux (real broker)".
"""

from __future__ import annotations

import argparse
import os
import platform
import pwd
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.markdown import write_section
from bench.usage import prog
from testenv import flux_build
from testenv.flux_instance import FluxInstance, processes_of

REPO = Path(__file__).resolve().parent.parent
OWNER = "dwsbt-fluxown"
JOBDW = "#DW jobdw type=xfs capacity=1GiB name=data"


def one_job(flux: FluxInstance, dw: str | None) -> float:
    """Seconds from submit to the job's `clean` event."""
    started = time.monotonic()
    job = flux.submit("true", dw=dw)
    flux.wait_event(job, "clean", 120)
    return time.monotonic() - started


def submit_rate(flux: FluxInstance, jobs: int, dw: str | None, *, service: bool = True) -> float:
    """Jobs per second accepted by `flux submit --cc=1-N` (held, so none runs). Without the service
    only the validator works (its cost alone); with it, Proposal of each job runs meanwhile."""
    if not service:
        flux.kill_service()
    extra = ["-S", f"dw={dw}"] if dw else []
    started = time.monotonic()
    out = flux.flux("submit", f"--cc=1-{jobs}", "--urgency=0", *extra, "true", timeout=600).stdout.split()
    elapsed = time.monotonic() - started
    assert len(out) == jobs, out[-3:]
    flux.flux("cancel", *out, timeout=600)
    for jobid in out:
        flux.flux("job", "wait-event", "-t", "120", jobid, "clean", timeout=130)
    deadline = time.monotonic() + 120
    while flux.workflows() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not service:
        flux.start_service()
    return jobs / elapsed


def hurry_latency(flux: FluxInstance, source: Path) -> float:
    """Seconds from `flux cancel` of a job in a slow copy_in to its copy process gone (partial file
    removed): the hurried teardown."""
    dw = f"{JOBDW} #DW copy_in source={source} destination=$DW_JOB_data/ profile=slow"
    job = flux.submit("true", dw=dw)
    storage = flux.workflow(job) / "data"
    deadline = time.monotonic() + 60
    while not list(storage.rglob("*.dwsb-part")):
        if time.monotonic() > deadline:
            raise RuntimeError("the slow copy_in did not start")
        time.sleep(0.02)
    started = time.monotonic()
    flux.flux("cancel", job.jobid)
    while processes_of(flux.owner.pw_uid, "copyoffload.mover"):
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    flux.wait_event(job, "clean", 60)
    return elapsed


def validator_cost(n: int = 2000) -> float:
    """Microseconds per `Validator.validate` of a `dw` job, in-process (the plugin loaded by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dwsbridge_flux_entry", REPO / "flux" / "jobtap_plugin.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    validator = module.Validator()
    job = {"jobspec": {"attributes": {"system": {"dw": JOBDW}}}}
    assert validator.validate(job) is None
    started = time.perf_counter()
    for _ in range(n):
        validator.validate(job)
    return (time.perf_counter() - started) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog("bench.bench_flux"), description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--jobs", type=int, default=100, help="jobs per submit-rate round (%(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="submit-rate rounds (%(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="single jobs per kind (%(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_flux: run as root (the service runs as root)", file=sys.stderr)
        return 2
    prefix = flux_build.find_prefix()
    if prefix is None:
        print(f"bench_flux: {flux_build.HOW_TO_PROVIDE}", file=sys.stderr)
        return 3
    from tests.helpers_users import ensure_user

    ensure_user(OWNER)
    workdir = Path(tempfile.mkdtemp(prefix="dwsbt-flux-bench-", dir="/tmp"))
    os.chmod(workdir, 0o755)
    flux = FluxInstance(prefix, workdir, pwd.getpwnam(OWNER))
    try:
        flux.start()
        data = workdir / "data"
        data.mkdir()
        (data / "in.txt").write_bytes(b"x" * 4096)
        for path in (data, data / "in.txt"):
            os.chown(path, flux.owner.pw_uid, flux.owner.pw_gid)
        copies = (
            f"{JOBDW} #DW copy_in source={data}/in.txt destination=$DW_JOB_data/in.txt"
            f" #DW copy_out source=$DW_JOB_data/in.txt destination={data}/out.txt"
        )
        one_job(flux, JOBDW)  # warm up: the validator's and the service's first imports
        kinds = {"plain": None, "jobdw": JOBDW, "jobdw + copy_in + copy_out": copies}
        samples: dict[str, list[float]] = {name: [] for name in kinds}
        for _ in range(args.repeats):  # interleaved, so that load from elsewhere hits every kind alike
            for name, dw in kinds.items():
                samples[name].append(one_job(flux, dw))
        walls = {name: statistics.median(values) for name, values in samples.items()}
        rounds = (
            ("plain", None, True),
            ("dw", JOBDW, True),
            ("plain, service stopped", None, False),
            ("dw, service stopped", JOBDW, False),
        )
        rate_samples: dict[str, list[float]] = {name: [] for name, _, _ in rounds}
        for _ in range(args.rounds):
            for name, dw, service in rounds:
                rate_samples[name].append(submit_rate(flux, args.jobs, dw, service=service))
        rates = {name: statistics.median(values) for name, values in rate_samples.items()}
        slow = data / "slow.bin"
        slow.write_bytes(os.urandom(32 << 20))
        os.chown(slow, flux.owner.pw_uid, flux.owner.pw_gid)
        hurry = statistics.median(hurry_latency(flux, slow) for _ in range(3))
    finally:
        flux.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    plain = walls["plain"]
    lines = [
        "## Flux (real broker)",
        "",
        f"`python -m bench.bench_flux` on a real flux-core {flux_build.VERSION} single-broker instance"
        f" ({platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}), local backend,"
        " installed with `dwsbridge flux install` (validator, perilog prolog/epilog, shell plugin; the"
        " service as root). Goals: overhead under 1 s per job, `dw` submit rate at least 0.8x plain.",
        "",
        f"| one job, submit to `clean` (median of {args.repeats}) | seconds | overhead vs plain |",
        "|---|---|---|",
    ]
    for name, wall in walls.items():
        lines.append(f"| {name} | {wall:.2f} | {'' if name == 'plain' else f'+{wall - plain:.2f} s'} |")
    lines += [
        "",
        f"| `flux submit --cc=1-{args.jobs} --urgency=0` (median of {args.rounds})"
        " | plain jobs/s | `dw` jobs/s | ratio |",
        "|---|---|---|---|",
    ]
    for label, suffix in (
        ("service running (it runs each Proposal meanwhile)", ""),
        ("service stopped (the validator alone)", ", service stopped"),
    ):
        plain_rate, dw_rate = rates["plain" + suffix], rates["dw" + suffix]
        lines.append(f"| {label} | {plain_rate:.0f} | {dw_rate:.0f} | {dw_rate / plain_rate:.2f}x |")
    lines += [
        "",
        f"Hurried teardown: `flux cancel` of a job in a slow copy_in (2 MiB/s of 32 MiB) to its copy stopped"
        f" and its partial file removed: {hurry:.2f} s (median of 3; includes the `flux cancel` command).",
        "",
        f'`dw` jobs: `-S dw="{JOBDW}"`. '
        "The overhead is the service's walk (Proposal at submit; Setup, DataIn, PreRun held by the prolog;"
        " PostRun, DataOut, Teardown held by the epilog) plus the perilog commands (`flux python` each)."
        f" In-process, `Validator.validate` of a `dw` job takes {validator_cost():.0f} us, so the submit"
        " rates differ by the noise of a shared 2-core machine (rounds are interleaved; the spread between"
        " runs is larger than the gap) more than by the validator.",
    ]
    section = "\n".join(lines) + "\n"
    print(section)
    if not args.no_write:
        write_section(REPO / "BENCHMARKS.md", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
