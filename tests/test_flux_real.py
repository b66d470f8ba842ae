"""The Flux integration on a real flux-core broker (issue 10), installed as docs/flux.md says.

One instance for the module (owned by an ordinary user; the service runs as root; every job ID is
above 2^53). Each test uses its own jobs and directories. Where no Flux can be had the module skips
with one line saying how to provide one; with DWSB_REQUIRE_FLUX=1 (.ci/run) it fails instead.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testenv import flux_build
from testenv.flux_instance import REPO, FluxInstance, Job, processes_of

JOBDW = "#DW jobdw type=xfs capacity=1GiB name=data"
MIB = 1 << 20  # the instance's `slow` profile copies 2 MiB/s: 32 MiB last ~16 s


def _unavailable(reason: str) -> None:
    if os.environ.get("DWSB_REQUIRE_FLUX") == "1":
        pytest.fail(f"real-Flux tests are required here (DWSB_REQUIRE_FLUX=1): {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def flux() -> Iterator[FluxInstance]:
    if os.geteuid() != 0:
        _unavailable("needs root (the service runs as root; the instance belongs to a test user)")
    prefix = flux_build.find_prefix()
    if prefix is None:
        _unavailable(flux_build.HOW_TO_PROVIDE)
    assert prefix is not None
    from tests.helpers_users import ensure_user

    ensure_user("dwsbt-fluxown")
    ensure_user("dwsbt-fluxevil")
    workdir = Path(tempfile.mkdtemp(prefix="dwsbt-flux-", dir="/tmp"))
    os.chmod(workdir, 0o755)
    instance = FluxInstance(prefix, workdir, pwd.getpwnam("dwsbt-fluxown"))
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def work(flux: FluxInstance, request: pytest.FixtureRequest) -> Path:
    """A directory of the instance owner (the job user) for this test's inputs and outputs."""
    path = flux.workdir / "t" / request.node.name
    path.mkdir(parents=True)
    for p in (path.parent, path):
        os.chown(p, flux.owner.pw_uid, flux.owner.pw_gid)
    return path


def owned(flux: FluxInstance, path: Path, data: bytes | None = None) -> Path:
    if data is None:
        path.mkdir(parents=True, exist_ok=True)
    else:
        path.write_bytes(data)
    os.chown(path, flux.owner.pw_uid, flux.owner.pw_gid)
    return path


def wait_until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.05)


def movers(flux: FluxInstance) -> list[int]:
    return processes_of(flux.owner.pw_uid, "copyoffload.mover")


def partial_files(*dirs: Path) -> list[Path]:
    return [p for d in dirs if d.exists() for p in d.rglob("*.dwsb-part")]


def gone(flux: FluxInstance, job: Job) -> bool:
    return f"fluxjob-{job.jobid}" not in flux.workflows() and not flux.workflow(job).exists()


def script(work: Path, body: str) -> list[str]:
    path = work / "job.sh"
    path.write_text("#!/bin/sh\nset -e\n" + body + "\n")
    os.chmod(path, 0o755)
    return [f"--output={work}/out.txt", str(path)]


def wait_go(work: Path) -> str:
    """Shell lines: tell the test the job runs, then wait until the test says go."""
    return f"touch {work}/running\nwhile [ ! -e {work}/go ]; do sleep 0.05; done"


# --- the normal path -------------------------------------------------------------------------------


def test_normal_path_stages_in_and_out_and_the_job_gets_its_environment(
    flux: FluxInstance, work: Path
) -> None:
    owned(flux, work / "in")
    owned(flux, work / "in" / "input.txt", b"input data\n")
    owned(flux, work / "results")
    dw = (
        f"{JOBDW} #DW copy_in source={work}/in destination=$DW_JOB_data/"
        f" #DW copy_out source=$DW_JOB_data/out destination={work}/results/"
    )
    body = (
        'env | grep -E "^(DW_|FLUX_JOB_ID)" | sort > ' + f"{work}/env.txt\n"
        'mkdir "$DW_JOB_data/out"\n'
        'tr a-z A-Z < "$DW_JOB_data/in/input.txt" > "$DW_JOB_data/out/result.txt"\n' + wait_go(work)
    )
    mark = flux.log_mark()
    job = flux.submit(*script(work, body), dw=dw)
    wait_until(lambda: (work / "running").exists(), 60, "the job runs")
    storage = flux.workflow(job) / "data"
    info = storage.stat()
    assert (info.st_uid, info.st_mode & 0o777) == (flux.owner.pw_uid, 0o700)
    evil = pwd.getpwnam("dwsbt-fluxevil")
    peek = subprocess.run(
        ["cat", str(storage / "in" / "input.txt")], user=evil.pw_uid, group=evil.pw_gid, capture_output=True
    )
    assert peek.returncode != 0 and b"Permission denied" in peek.stderr
    hurry = subprocess.run(  # another user cannot hurry (or cancel) the job and lose its stage-out
        [flux.flux_cmd, "job", "raise", "--type=dws-hurry", job.jobid],
        env=flux.env(),
        user=evil.pw_uid,
        group=evil.pw_gid,
        capture_output=True,
    )
    assert hurry.returncode != 0 and b"ermission denied" in hurry.stderr, hurry.stderr
    (work / "go").touch()
    flux.wait_event(job, "clean")
    assert (work / "results" / "out" / "result.txt").read_text() == "INPUT DATA\n"
    assert (work / "results" / "out" / "result.txt").stat().st_uid == flux.owner.pw_uid
    env = dict(line.split("=", 1) for line in (work / "env.txt").read_text().splitlines())
    assert env["DW_WORKFLOW_NAME"] == f"fluxjob-{job.jobid}"
    assert env["DW_JOB_data"] == str(storage)
    names = flux.eventlog(job)
    assert names.count("dws_environment") == 1 and "dws_epilog_done" in names and "exception" not in names
    assert gone(flux, job)
    created = [
        line for line in flux.service_lines(mark) if f"fluxjob-{job.jobid}" in line and " created " in line
    ]
    assert len(created) == 1, created  # a workflow create is logged once


def test_batch_script_form_is_accepted_and_gets_the_environment(flux: FluxInstance, work: Path) -> None:
    batch = work / "batch.sh"
    batch.write_text(
        "#!/bin/sh\n"
        '#FLUX: -S dw="""\n'
        f"#FLUX: {JOBDW}\n"
        "#FLUX: #DW copy_out source=$DW_JOB_data/o.txt destination=" + f"{work}/o.txt\n"
        '#FLUX: """\n'
        'echo "$DW_JOB_data" > "$DW_JOB_data/o.txt"\n'
    )
    out = flux.flux("batch", "-n1", f"--output={work}/batch.out", str(batch)).stdout.split()[-1]
    job = flux.job(out)
    flux.wait_event(job, "clean")
    assert (work / "o.txt").read_text().strip() == str(flux.workflow(job) / "data")
    assert gone(flux, job)


def test_a_site_preset_names_the_directives(flux: FluxInstance, work: Path) -> None:
    job = flux.submit(*script(work, f'echo "$DW_JOB_data" > {work}/path.txt'), dw="small")
    flux.wait_event(job, "clean")
    assert (work / "path.txt").read_text().strip() == str(flux.workflow(job) / "data")
    assert gone(flux, job)


def test_bad_directives_are_refused_at_submit(flux: FluxInstance, work: Path) -> None:
    before = set(flux.workflows())
    done = flux.flux("submit", "-S", "dw=#DW jobdw type=bogus capacity=1GiB name=data", "true", check=False)
    assert done.returncode != 0
    assert done.stderr.startswith("[Errno 22] #DW jobdw type=bogus capacity=1GiB name=data: argument 'type'")
    done = flux.flux("submit", "-S", f"dw={JOBDW}", "-S", "dw_failure_tolerance=-1", "true", check=False)
    assert done.returncode != 0 and "dw_failure_tolerance" in done.stderr
    assert set(flux.workflows()) == before


def test_copy_offload_from_inside_the_job(flux: FluxInstance, work: Path) -> None:
    """The per-job server is started by a service run from a checkout (issue 10 item 6)."""
    owned(flux, work / "dest")
    dw = f"{JOBDW} requires=copy-offload #DW container name=co profile=copy-offload-default"
    body = (
        'head -c 3000000 /dev/urandom > "$DW_JOB_data/big.bin"\n'
        f"export PYTHONPATH={REPO}\n"
        f'/usr/bin/python3 -m copyoffload.cli copy "$DW_JOB_data/big.bin" {work}/dest/ --wait --json'
        f" > {work}/copy.json\n"
        f'cmp "$DW_JOB_data/big.bin" {work}/dest/big.bin && echo MATCH'
    )
    job = flux.submit(*script(work, body), dw=dw)
    flux.wait_event(job, "clean")
    output = (work / "out.txt").read_text() if (work / "out.txt").exists() else ""
    assert "MATCH" in output, (flux.eventlog(job), output, flux.service_lines()[-10:])
    status = json.loads((work / "copy.json").read_text())
    assert (status["state"], status["status"]) == ("completed", "success"), status
    assert gone(flux, job)


def test_failed_stage_in_raises_and_the_job_never_runs(flux: FluxInstance, work: Path) -> None:
    dw = f"{JOBDW} #DW copy_in source={work}/missing destination=$DW_JOB_data/"
    job = flux.submit(*script(work, f"touch {work}/ran"), dw=dw)
    flux.wait_event(job, "clean")
    names = flux.eventlog(job)
    assert "start" not in names and "exception" in names
    note = flux.flux("job", "eventlog", job.jobid).stdout
    assert "DWS workflow interactions failed:" in note and "missing" in note
    assert not (work / "ran").exists()
    assert gone(flux, job)


# --- cancellation ----------------------------------------------------------------------------------


def test_cancel_before_it_runs_tears_down(flux: FluxInstance, work: Path) -> None:
    job = flux.submit("--urgency=0", "true", dw=JOBDW)
    wait_until(lambda: f"fluxjob-{job.jobid}" in flux.workflows(), 30, "the workflow exists")
    flux.flux("cancel", job.jobid)
    flux.wait_event(job, "clean")
    wait_until(lambda: gone(flux, job), 10, "the workflow is torn down")


def slow_stage_in(flux: FluxInstance, work: Path, size: int = 32 * MIB) -> tuple[Job, Path]:
    """A job whose copy_in runs at the slow profile's rate; returns once the copy is under way."""
    src = owned(flux, work / "in")
    owned(flux, src / "big.bin", os.urandom(size))
    dw = f"{JOBDW} #DW copy_in source={src} destination=$DW_JOB_data/ profile=slow"
    job = flux.submit(*script(work, f"touch {work}/ran"), dw=dw)
    storage = flux.workflow(job) / "data"
    wait_until(lambda: partial_files(storage), 30, "the slow copy_in is under way")
    return job, storage


def test_cancel_during_stage_in_kills_the_copy_at_once(flux: FluxInstance, work: Path) -> None:
    mark = flux.log_mark()
    job, _ = slow_stage_in(flux, work)
    flux.flux("cancel", job.jobid)
    wait_until(lambda: not movers(flux), 3, "the copy is killed")
    wait_until(lambda: gone(flux, job), 5, "the workflow is torn down")
    flux.wait_event(job, "clean", 20)
    assert "start" not in flux.eventlog(job)
    assert not (work / "ran").exists()
    assert not any(
        f"fluxjob-{job.jobid}" in line and "DataIn complete" in line for line in flux.service_lines(mark)
    )


def test_plain_cancel_of_a_running_job_stages_out(flux: FluxInstance, work: Path) -> None:
    owned(flux, work / "results")
    dw = f"{JOBDW} #DW copy_out source=$DW_JOB_data/r.txt destination={work}/results/r.txt"
    body = 'echo partial > "$DW_JOB_data/r.txt"\n' + wait_go(work)
    job = flux.submit(*script(work, body), dw=dw)
    wait_until(lambda: (work / "running").exists(), 60, "the job runs")
    flux.flux("cancel", job.jobid)
    flux.wait_event(job, "clean")
    assert (work / "results" / "r.txt").read_text() == "partial\n"
    assert gone(flux, job)


def test_hurried_cancel_of_a_running_job_skips_stage_out(flux: FluxInstance, work: Path) -> None:
    owned(flux, work / "results")
    dw = f"{JOBDW} #DW copy_out source=$DW_JOB_data/r.txt destination={work}/results/r.txt"
    body = 'echo partial > "$DW_JOB_data/r.txt"\n' + wait_go(work)
    job = flux.submit(*script(work, body), dw=dw)
    wait_until(lambda: (work / "running").exists(), 60, "the job runs")
    flux.flux("job", "raise", "--type=dws-hurry", job.jobid, "hurry up")
    flux.wait_event(job, "clean")
    assert not (work / "results" / "r.txt").exists()
    assert gone(flux, job)


def slow_stage_out(flux: FluxInstance, work: Path, mib: int) -> tuple[Job, Path]:
    results = owned(flux, work / "results")
    dw = f"{JOBDW} #DW copy_out source=$DW_JOB_data/big.bin destination={results}/ profile=slow"
    body = f'head -c {mib * MIB} /dev/urandom > "$DW_JOB_data/big.bin"'
    job = flux.submit(*script(work, body), dw=dw)
    wait_until(lambda: partial_files(results), 60, "the slow copy_out is under way")
    return job, results


def test_cancel_during_stage_out_hurries_and_leaves_no_partial_file(flux: FluxInstance, work: Path) -> None:
    job, results = slow_stage_out(flux, work, 32)
    flux.flux("cancel", job.jobid)
    wait_until(lambda: not movers(flux), 3, "the copy_out is killed")
    flux.wait_event(job, "clean", 10)
    assert list(results.iterdir()) == []
    assert gone(flux, job)


def test_epilog_timeout_aborts_the_copy_and_releases_the_job(flux: FluxInstance, work: Path) -> None:
    job, results = slow_stage_out(flux, work, 64)  # 32 s of copy_out; the epilog waits 10 s
    flux.wait_event(job, "clean", 30)
    wait_until(lambda: not movers(flux), 3, "the copy_out is killed")
    names = flux.eventlog(job)
    assert "exception" in names
    assert "dws-epilog-timeout" in flux.flux("job", "eventlog", job.jobid).stdout
    assert list(results.iterdir()) == []
    wait_until(lambda: gone(flux, job), 5, "the workflow is torn down")


# --- job IDs above 2^53 ----------------------------------------------------------------------------


def test_jobs_with_ids_above_2_53_get_their_own_environment(flux: FluxInstance, work: Path) -> None:
    body = f'echo "$FLUX_JOB_ID $DW_WORKFLOW_NAME $DW_JOB_data" > {work}/env.$FLUX_JOB_ID'
    path = work / "job.sh"
    path.write_text("#!/bin/sh\n" + body + "\n")
    os.chmod(path, 0o755)
    for _ in range(10):  # odd IDs (a double rounds them away) come from jobs ingested in the same ms
        submit = ["submit", "--cc=1-8", "--urgency=0", "-S", f"dw={JOBDW}", f"--output={work}/out.{{cc}}"]
        jobs = [flux.job(j) for j in flux.flux(*submit, str(path)).stdout.split()]
        if any(int(j.jobid) % 2 for j in jobs):
            break
        flux.flux("cancel", *(j.jobid for j in jobs))
    assert all(int(j.jobid) > 2**53 for j in jobs)
    assert any(int(j.jobid) % 2 for j in jobs), "no two jobs were ingested in the same millisecond"
    for job in jobs:
        flux.flux("job", "urgency", job.jobid, "16")
    for job in jobs:
        flux.wait_event(job, "clean")
    for job in jobs:
        files = [p for p in work.glob("env.*") if flux.job(p.name[4:]).jobid == job.jobid]
        assert len(files) == 1, (job, sorted(p.name for p in work.glob("env.*")))
        _, name, storage = files[0].read_text().split()
        assert name == f"fluxjob-{job.jobid}"
        assert storage == str(flux.workflow(job) / "data")


# --- the service killed and restarted --------------------------------------------------------------


def test_service_restart_never_reruns_finished_jobs(flux: FluxInstance, work: Path) -> None:
    owned(flux, work / "in")
    owned(flux, work / "in" / "v.txt", b"first\n")
    owned(flux, work / "results")
    dw = (
        f"{JOBDW} #DW copy_in source={work}/in/v.txt destination=$DW_JOB_data/v.txt"
        f" #DW copy_out source=$DW_JOB_data/v.txt destination={work}/results/v.txt"
    )
    job = flux.submit(*script(work, "true"), dw=dw)
    flux.wait_event(job, "clean")
    assert (work / "results" / "v.txt").read_text() == "first\n"
    owned(flux, work / "in" / "v.txt", b"second\n")
    flux.kill_service()
    mark = flux.log_mark()
    flux.start_service()
    time.sleep(1)  # what a replaying service would do, it does at once
    assert (work / "results" / "v.txt").read_text() == "first\n"
    assert not any(job.jobid in line for line in flux.service_lines(mark))
    assert gone(flux, job)


def test_service_killed_while_the_job_runs_does_not_redo_setup(flux: FluxInstance, work: Path) -> None:
    owned(flux, work / "results")
    dw = f"{JOBDW} #DW copy_out source=$DW_JOB_data/r.txt destination={work}/results/r.txt"
    body = 'echo done > "$DW_JOB_data/r.txt"\n' + wait_go(work)
    job = flux.submit(*script(work, body), dw=dw)
    wait_until(lambda: (work / "running").exists(), 60, "the job runs")
    flux.kill_service()
    mark = flux.log_mark()
    flux.start_service()
    (work / "go").touch()
    flux.wait_event(job, "clean")
    assert flux.eventlog(job).count("dws_environment") == 1
    lines = [line for line in flux.service_lines(mark) if job.jobid in line]
    assert not any("desiredState=Setup" in line or "desiredState=PreRun" in line for line in lines), lines
    assert (work / "results" / "r.txt").read_text() == "done\n"
    assert gone(flux, job)


def test_service_killed_during_stage_in_leaves_no_partial_file(flux: FluxInstance, work: Path) -> None:
    """The mover's reader is gone: it cancels and removes its partial output (item 5); the job,
    cancelled while the service is down, is cleaned up when it comes back."""
    job, storage = slow_stage_in(flux, work)
    flux.kill_service()
    wait_until(lambda: not movers(flux), 5, "the orphaned mover exits")
    assert partial_files(storage) == []
    flux.flux("cancel", job.jobid)
    flux.wait_event(job, "clean", 20)
    flux.start_service()
    wait_until(lambda: gone(flux, job), 10, "the workflow of the job that ended meanwhile is torn down")
    assert not movers(flux)


def test_service_killed_during_stage_out_resumes_it(flux: FluxInstance, work: Path) -> None:
    job, results = slow_stage_out(flux, work, 3)
    flux.kill_service()
    wait_until(lambda: not movers(flux), 5, "the orphaned mover exits")
    assert partial_files(results) == []
    flux.start_service()
    flux.wait_event(job, "clean", 30)
    assert (results / "big.bin").stat().st_size == 3 * MIB
    assert partial_files(results) == []
    assert "dws-epilog-timeout" not in flux.flux("job", "eventlog", job.jobid).stdout
    assert gone(flux, job)


def test_service_killed_before_the_job_runs_picks_it_up(flux: FluxInstance, work: Path) -> None:
    job = flux.submit("--urgency=0", *script(work, f"touch {work}/ran"), dw=JOBDW)
    wait_until(lambda: f"fluxjob-{job.jobid}" in flux.workflows(), 30, "the workflow exists")
    flux.kill_service()
    flux.start_service()
    flux.flux("job", "urgency", job.jobid, "16")
    flux.wait_event(job, "clean")
    assert (work / "ran").exists()
    assert "exception" not in flux.eventlog(job)
    assert gone(flux, job)
