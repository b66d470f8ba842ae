"""#DW validation on the submit path (issues 11.2, 12.2): import cost, `dwsbridge validate`, and
job_process for a normal script and for the 1 MB flood script, in-process (what the bridge agent
spends) and as slurmctld starts the hook (through the agent), plus a series that shows the
cross-directive checks are linear. Needs root only for the agent rows (skipped otherwise).

Figures go into BENCHMARKS.md, section "## Directive validation (job_process)".
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.markdown import write_section
from bench.usage import prog

REPO = Path(__file__).resolve().parent.parent
PYTHON = REPO / ".venv" / "bin" / "python"
MARKDOWN = REPO / "BENCHMARKS.md"
SECTION = "## Directive validation (job_process)"
SERIES = (1000, 2000, 4000, 8000, 16000)  # directives: half jobdw, half copy_in, an eighth bad
CPU = time.process_time


def median_ms(fn: Callable[[], object], runs: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median of `runs` calls, by `clock` (time.process_time for in-process work: the machine is shared,
    so CPU time is what a job costs, whatever else runs)."""
    times = []
    for _ in range(runs):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times) * 1000


def import_ms(statement: str, module: str, runs: int = 11) -> float:
    """Median cumulative `-X importtime` of `module` when `statement` runs in a fresh interpreter."""
    found = []
    for _ in range(runs):
        err = subprocess.run(
            [str(PYTHON), "-X", "importtime", "-c", statement], capture_output=True, text=True, check=True
        ).stderr
        for line in err.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) == 3 and parts[2] == module:
                found.append(int(parts[1]) / 1000)
    return statistics.median(found)


def spread(ours: list[float], theirs: list[float], baseline: str | None, digits: int) -> str:
    """`median (fastest)` of our runs, and of the baseline's when there is one."""

    def one(times: list[float]) -> str:
        return f"{statistics.median(times):.{digits}f} ms (fastest {min(times):.{digits}f})"

    return one(ours) + (f"; commit {baseline}, interleaved: {one(theirs)}" if theirs else "")


def extract(commit: str, into: Path) -> Path:
    """`dwsbridge/` as it was at `commit` (git archive), for an interleaved comparison."""
    into.mkdir()
    archive = subprocess.run(
        ["git", "archive", commit, "dwsbridge"], cwd=REPO, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def write(path: Path, text: str) -> Path:
    path.write_text(text + "\0")  # as Slurm hands scripts to hooks
    return path


class Agent:
    """`dwsbridge agent` on a private socket, as testenv/slurm-cluster runs it (root only)."""

    def __init__(self, work: Path, config: Path) -> None:
        self.socket = work / "agent.sock"
        self.log = open(work / "agent.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                str(PYTHON),
                "-I",
                "-m",
                "dwsbridge",
                "agent",
                "--socket",
                str(self.socket),
                "--config",
                str(config),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the bridge agent did not start")
            time.sleep(0.05)

    def hook(self, config: Path, script: Path) -> tuple[float, float]:
        """One job_process hook process as burst_buffer.lua starts it: (wall ms, CPU ms)."""
        from dwsbridge.cli.slurm import launcher_code

        env = {
            "PATH": "/usr/bin:/bin",
            "DWSBRIDGE_CONFIG": str(config),
            "DWSBRIDGE_AGENT_SOCKET": str(self.socket),
        }
        argv = [str(PYTHON), "-I", "-S", "-c", launcher_code(str(REPO)), "job_process", str(script)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=False)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return wall * 1000, (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog("bench.bench_directives"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=41, help="runs per hook-process row (default 41)")
    parser.add_argument("--no-write", action="store_true", help="print, do not update BENCHMARKS.md")
    parser.add_argument(
        "--baseline", metavar="COMMIT", help="also time `validate` with this commit's dwsbridge, interleaved"
    )
    args = parser.parse_args(argv)

    import logging

    from dwsbridge.config import load_config
    from dwsbridge.slurm import SlurmHooks, run_hook

    logging.getLogger("dwsbridge").setLevel(logging.CRITICAL)  # each refusal is logged in full
    from testenv.hostile_jobs import flood_script, normal_script

    work = Path(tempfile.mkdtemp(prefix="dwsb-bench-directives-"))
    try:
        config = work / "dwsbridge.yaml"
        config.write_text(f"root: {work / 'root'}\norphan_sweep_interval: 0\n")
        roomy = work / "roomy.yaml"
        roomy.write_text(config.read_text() + "max_directives: 20000\nmax_directive_bytes: 4MiB\n")
        normal = write(work / "normal.sh", normal_script())
        flood = write(work / "flood.sh", flood_script())
        rows: list[tuple[str, str]] = []

        # imports and the validate CLI; with --baseline, interleaved with that commit's code
        cli = import_ms("import dwsbridge.cli, dwsbridge.directives", "dwsbridge.cli")
        directives = import_ms("import dwsbridge.cli, dwsbridge.directives", "dwsbridge.directives")
        re2 = import_ms("import re2", "re2")
        example = str(REPO / "examples" / "slurm-job.sh")

        def validate(source: Path) -> None:
            env = {"PATH": "/usr/bin:/bin", "DWSBRIDGE_CONFIG": str(config), "PYTHONPATH": str(source)}
            argv = [str(PYTHON), "-m", "dwsbridge", "validate", "--wlm", "slurm", example]
            subprocess.run(argv, env=env, capture_output=True, cwd=work, check=True)

        baseline = extract(args.baseline, work / "baseline") if args.baseline else None
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(21):
            ours.append(median_ms(lambda: validate(REPO), 1))
            if baseline is not None:
                theirs.append(median_ms(lambda baseline=baseline: validate(baseline), 1))
        rows += [
            ("import `dwsbridge.cli`", f"{cli:.1f} ms"),
            (
                "import `dwsbridge.directives`",
                f"{directives:.1f} ms",
            ),
            ("import `re2` (google-re2: only for a site pattern outside the plain subset)", f"{re2:.1f} ms"),
            (
                "`dwsbridge validate --wlm slurm examples/slurm-job.sh` end to end, median of 21",
                spread(ours, theirs, args.baseline, 0),
            ),
        ]

        # job_process in-process: what the agent spends per job (everything imported, ruleset cached)
        hooks, roomy_hooks = SlurmHooks(load_config(config)), SlurmHooks(load_config(roomy))

        def job_process(on: SlurmHooks, script: Path) -> str:
            return run_hook(on, "job_process", [str(script)]).payload

        job_process(hooks, normal)
        job_process(roomy_hooks, normal)
        normal_ms = median_ms(lambda: job_process(hooks, normal), 201, CPU)
        flood_ms = median_ms(lambda: job_process(hooks, flood), 21, CPU)
        rows.append(
            ("job_process in-process, normal script (4 directives), median of 201", f"{normal_ms:.2f} ms CPU")
        )
        rows.append(
            (
                "job_process in-process, 1 MB flood (refused: max_directives), median of 21",
                f"{flood_ms:.1f} ms CPU",
            )
        )
        series = []
        for count in SERIES:
            script = write(work / f"series{count}.sh", flood_script(count // 2, count // 2, count // 8))
            ms = median_ms(lambda script=script: job_process(roomy_hooks, script), 7, CPU)
            series.append((count, ms, len(job_process(roomy_hooks, script))))
        base = series[0][1] / series[0][0]
        times = " / ".join(f"{ms:.0f}" for _, ms, _ in series)
        rates = " / ".join(f"{ms / n / base:.2f}x" for n, ms, _ in series)
        rows.append(
            (
                "job_process in-process, limits raised, 1k/2k/4k/8k/16k directives (1/8 bad), median of 7",
                f"{times} ms CPU (per directive: {rates} that at 1k)",
            )
        )
        rows.append(("error message for those, bytes", " / ".join(f"{m:,}" for _, _, m in series)))

        # through the agent, as burst_buffer.lua starts the hook process
        if os.geteuid() == 0:
            agent = Agent(work, config)
            try:
                agent.hook(config, normal)
                normal_hook = [agent.hook(config, normal) for _ in range(args.runs)]
                rss = agent.rss_kib()
                flood_hook = [agent.hook(config, flood) for _ in range(11)]
                grown = agent.rss_kib() - rss
            finally:
                agent.stop()
            rows.append(
                (
                    f"job_process hook process through the agent, normal script, median of {args.runs}",
                    f"{statistics.median(w for w, _ in normal_hook):.1f} ms wall, "
                    f"{statistics.median(c for _, c in normal_hook):.1f} ms CPU",
                )
            )
            rows.append(
                (
                    "same, 1 MB flood script (refused at max_directives), median of 11",
                    f"{statistics.median(w for w, _ in flood_hook):.1f} ms wall; "
                    f"agent RSS {grown // 1024:+d} MiB",
                )
            )

        # no agent: the hook process runs the bridge itself (Python start, imports, the ruleset)
        def in_process(source: Path) -> float:
            env = {"PATH": "/usr/bin:/bin", "DWSBRIDGE_CONFIG": str(config), "PYTHONPATH": str(source)}
            argv = [str(PYTHON), "-m", "dwsbridge.slurm", "job_process", str(normal)]
            return median_ms(lambda: subprocess.run(argv, env=env, capture_output=True, cwd=work), 1)

        ours, theirs = [], []
        for _ in range(21):
            ours.append(in_process(REPO))
            if baseline is not None:
                theirs.append(in_process(baseline))
        rows.append(
            (
                "job_process hook process without an agent (`python -m dwsbridge.slurm`), normal script, "
                "median of 21",
                spread(ours, theirs, args.baseline, 1) + " wall",
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = "\n".join(f"| {what} | {figure} |" for what, figure in rows)
    text = f"""{SECTION}

Command: `{prog("bench.bench_directives")}` (as root for the agent rows), {time.strftime("%Y-%m-%d")};
{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, shared machine.

| what | figure |
|---|---|
{table}

Before issue 11.2 the cross-directive checks were quadratic: the 1 MB flood (8,000 jobdw + 8,000 copy_in,
2,000 bad references) took 10.5 s of CPU here (19-24 s in slurmctld as reported), a 128 MB error
message and +270 MB of RSS. Now a job over `max_directives` (default 1000) or `max_directive_bytes`
(256 KiB) is refused before it is parsed, every check is a lookup, and at most `max_errors` (20)
problems are reported, then "... and N more". Rule patterns mean what they mean to Go (RE2): the
bundled ruleset's patterns are all plain (dwsbridge/regexp.py), which Python's `re` answers the same
way in linear time, so the submit path imports `re2` only for a site pattern that needs it; the agent
compiles a ruleset once, so no pattern costs it anything per job. `--baseline COMMIT` times the same
commands with that commit's code, interleaved (the machine is shared: compare within a run).
"""
    print(text)
    if not args.no_write:
        write_section(MARKDOWN, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
