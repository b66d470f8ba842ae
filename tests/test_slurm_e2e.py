"""Issue 4's acceptance on a real single-node Slurm 22.05 (testenv/slurm-cluster), local backend.

Jobs are submitted as an ordinary user (Slurm refuses burst buffers for root). The cluster runs under
its own base directory and ports, started once per session and always stopped.
"""

from __future__ import annotations

import base64
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dwsbridge.config import load_config
from dwsbridge.lifecycle import Lifecycle
from tests.slurm_support import (
    REPO,
    SCRIPT,
    USER,
    WAIT_FOR_GO,
    SlurmCluster,
    release,
    slurm_env,
    slurm_skip_reason,
    text,
    wait_for,
)

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]

BASE = Path(os.environ.get("DWSB_E2E_BASE", "/tmp/dwsb-slurm-pytest"))
JOBDW = "#DW jobdw type=xfs capacity=1GiB name=scratch pool=dws"

if slurm_skip_reason():
    pytest.skip(slurm_skip_reason() or "", allow_module_level=True)


@dataclass
class Cluster(SlurmCluster):
    """The cluster on the local backend, whose workflows this process can read directly."""

    lifecycle: Lifecycle

    def wait_gone(self, job: str, timeout: float = 60.0) -> None:
        wait_for(lambda: not self.lifecycle.exists(f"bb{job}"), f"workflow bb{job} to be torn down", timeout)

    def storage(self, job: str) -> Path:
        return self.lifecycle.config.root / "storage" / "jobs" / f"bb{job}"

    def agent_lines(self, job: str) -> list[str]:
        """The bridge agent's request log lines for this job (one per hook it served)."""
        path = BASE / "log" / "agent.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return [line for line in lines if f" job={job} " in line]

    def log_lines(self, job: str) -> list[str]:
        text = (BASE / "log" / "slurmctld.log").read_text(errors="replace")
        return [line for line in text.splitlines() if "dwsbridge" in line and f"job={job} " in line]


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    env = slurm_env(
        BASE,
        os.environ.get("DWSB_E2E_CTLD_PORT", "6837"),
        os.environ.get("DWSB_E2E_SLURMD_PORT", "6838"),
    )
    try:
        subprocess.run([str(SCRIPT), "start"], env=env, check=True, timeout=120)
        config = load_config(BASE / "dwsbridge.yaml")
        yield Cluster(env, pwd.getpwnam(USER), Lifecycle(config))
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, check=False, timeout=120)
    for daemon in ("slurmctld", "slurmd", "munged", "agent"):
        assert not (BASE / "run" / f"{daemon}.pid").exists(), f"{daemon} left running"


# --- the main path ---------------------------------------------------------------------------------------


def test_stage_in_run_stage_out_and_nothing_left(cluster: Cluster) -> None:
    work = cluster.workdir("stage")
    (work / "in.txt").write_text("hello from stage-in\n")
    os.chown(work / "in.txt", cluster.user.pw_uid, cluster.user.pw_gid)
    body = "\n".join(
        [
            'echo "DW_JOB_scratch=$DW_JOB_scratch"',
            'echo "owner=$(stat -c %U "$DW_JOB_scratch") mode=$(stat -c %a "$DW_JOB_scratch")"',
            'echo "staged_owner=$(stat -c %U "$DW_JOB_scratch/in.txt")"',
            'echo "staged=$(cat "$DW_JOB_scratch/in.txt")"',
            'echo "result of job $SLURM_JOB_ID" > "$DW_JOB_scratch/out.txt"',
        ]
    )
    job = cluster.submit(
        work,
        body,
        JOBDW,
        f"#DW copy_in source={work}/in.txt destination=$DW_JOB_scratch/in.txt",
        f"#DW copy_out source=$DW_JOB_scratch/out.txt destination={work}/result.txt",
    )
    assert cluster.wait_state(job, "COMPLETED", "FAILED", "CANCELLED") == "COMPLETED", cluster.state(job)
    cluster.wait_gone(job)
    out = dict(line.split("=", 1) for line in (work / "job.sh.out").read_text().split("\n") if "=" in line)
    storage = Path(out["DW_JOB_scratch"])
    assert storage.parent == cluster.storage(job)
    assert out["owner"].startswith(USER) and "mode=700" in out["owner"]
    assert out["staged_owner"] == USER
    assert out["staged"] == "hello from stage-in"
    result = work / "result.txt"
    assert result.read_text() == f"result of job {job}\n"
    assert result.stat().st_uid == cluster.user.pw_uid  # staged out as the job's user, not root
    assert not cluster.storage(job).exists()


def test_copy_offload_job_gets_a_token_that_verifies_against_the_workflow_key(cluster: Cluster) -> None:
    import jwt

    work = cluster.workdir("token")
    body = "\n".join(
        [
            'echo "TOKEN=$DW_WORKFLOW_TOKEN"',
            'echo "PORT=$NNF_CONTAINER_PORTS"',
            'URL="https://$NNF_CONTAINER_LAUNCHER:$NNF_CONTAINER_PORTS/hello"',
            'AUTH="Authorization: Bearer $DW_WORKFLOW_TOKEN"',
            'V="Accepts-version: 1.0"',
            'echo "HELLO=$(curl -s --cacert "$COPY_OFFLOAD_CERT" -H "$AUTH" -H "$V" "$URL")"',
            "echo READY",
            WAIT_FOR_GO,
        ]
    )
    job = cluster.submit(work, body, JOBDW + " requires=copy-offload")
    name = f"bb{job}"
    try:
        output = work / "job.sh.out"
        wait_for(lambda: "READY" in text(output), "the job to print its token")
        lines = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
        token = lines["TOKEN"]
        secret = cluster.lifecycle.backend.store.get_secret(f"{name}-token-server")  # type: ignore[attr-defined]
        assert secret is not None, "the local backend recorded no token key"
        pem = secret["token.key"]
        der = base64.b64decode("".join(line for line in pem.splitlines() if not line.startswith("-----")))
        claims = jwt.decode(token, der, algorithms=["HS256"], options={"verify_iat": False})
        assert claims["sub"] == "user-container"
        assert lines["HELLO"] == "hello back at ya", "the job could not reach its copy-offload server"
    finally:
        release(work)
    assert cluster.wait_state(job, "COMPLETED", "FAILED") == "COMPLETED"
    cluster.wait_gone(job)
    assert cluster.lifecycle.backend.store.get_secret(f"{name}-token-server") is None  # type: ignore[attr-defined]


def test_bbstat_shows_live_states_of_a_running_job(cluster: Cluster) -> None:
    work = cluster.workdir("bbstat")
    job = cluster.submit(work, WAIT_FOR_GO, JOBDW)
    try:
        cluster.wait_state(job, "RUNNING")
        shown = cluster.run("scontrol", "show", "bbstat", "workflow", job, as_user=True).stdout
        assert shown.strip() == "desiredState=PreRun currentState=PreRun status=Completed"
        listing = cluster.run("scontrol", "show", "bbstat", as_user=True).stdout
        assert re.search(rf"^bb{job}\s+{job}\s+{USER}\s+PreRun\s+PreRun\s+true\s+Completed", listing, re.M), (
            listing
        )
        usage = cluster.run("scontrol", "show", "bbstat", "workflow", "abc", as_user=True).stdout
        assert usage.strip() == "A job ID must contain only digits."
    finally:
        release(work)
    cluster.wait_state(job, "COMPLETED")
    cluster.wait_gone(job)
    gone = cluster.run("scontrol", "show", "bbstat", "workflow", job, as_user=True).stdout
    assert f"No workflow for job {job}" in gone


# --- submit-time checks ------------------------------------------------------------------------------------


def test_invalid_directive_fails_sbatch_naming_the_argument(cluster: Cluster) -> None:
    work = cluster.workdir("invalid")
    script = cluster.write_job(work, "hostname", JOBDW + " colour=blue")
    proc = cluster.sbatch(script, check=False)
    assert proc.returncode != 0
    assert "burst_buffer/lua: line 3: " in proc.stderr
    assert "'colour'" in proc.stderr


def test_job_without_directives_is_untouched(cluster: Cluster) -> None:
    work = cluster.workdir("plain")
    job = cluster.submit(work, "echo plain job")
    assert cluster.wait_state(job, "COMPLETED", "FAILED") == "COMPLETED"
    assert (work / "job.sh.out").read_text() == "plain job\n"
    assert not cluster.lifecycle.exists(f"bb{job}")
    assert cluster.log_lines(job) == []


# --- cancellation ---------------------------------------------------------------------------------


def test_scancel_hurry_on_a_running_job_skips_stage_out_and_removes_storage(cluster: Cluster) -> None:
    work = cluster.workdir("hurry")
    job = cluster.submit(
        work,
        'echo data > "$DW_JOB_scratch/out.txt"\necho STARTED\n' + WAIT_FOR_GO,
        JOBDW,
        f"#DW copy_out source=$DW_JOB_scratch/out.txt destination={work}/result.txt",
    )
    cluster.wait_state(job, "RUNNING")
    wait_for(lambda: "STARTED" in text(work / "job.sh.out"), "the job to start writing")
    assert cluster.storage(job).exists()
    cluster.run("scancel", "--hurry", job, as_user=True)
    cluster.wait_gone(job)
    cluster.wait_state(job, "CANCELLED", "COMPLETED", "FAILED")
    assert not (work / "result.txt").exists(), "copy_out ran despite --hurry"
    assert not cluster.storage(job).exists()
    lines = cluster.log_lines(job)
    assert any(f"workflow=bb{job} job={job} desiredState=Teardown hurry=True" in line for line in lines), (
        lines
    )
    assert not any("copy_out: copying" in line for line in lines)


def test_job_cancelled_while_pending_is_torn_down(cluster: Cluster) -> None:
    work = cluster.workdir("pending")
    blocker = cluster.submit(work, WAIT_FOR_GO, "#SBATCH --exclusive", name="block.sh")
    try:
        cluster.wait_state(blocker, "RUNNING")
        job = cluster.submit(work, "echo never", JOBDW)
        # Slurm stages a pending job in ahead of its start: wait for its workflow to exist.
        wait_for(lambda: cluster.lifecycle.exists(f"bb{job}"), f"workflow bb{job} for pending job")
        assert cluster.state(job)[0] == "PENDING"
        cluster.run("scancel", job, as_user=True)
        cluster.wait_gone(job)
        assert cluster.wait_state(job, "CANCELLED") == "CANCELLED"
        assert not cluster.storage(job).exists()
        assert not (work / "job.sh.out").exists()
    finally:
        release(work)
    cluster.wait_state(blocker, "COMPLETED")


@pytest.mark.parametrize("kind", ["missing", "root-only"])
def test_failing_copy_in_holds_the_job_naming_the_directive(cluster: Cluster, kind: str) -> None:
    work = cluster.workdir(f"copyin-{kind}")
    source = work / "in.txt"
    if kind == "root-only":
        source.write_text("secret\n")
        os.chmod(source, 0o600)  # owned by root: the job's user may not read it
    directive = f"#DW copy_in source={source} destination=$DW_JOB_scratch/in.txt"
    job = cluster.submit(work, "echo never", JOBDW, directive)

    def held() -> str | None:
        state, reason = cluster.state(job)
        return reason if state == "PENDING" and "slurm_bb_data_in" in reason else None

    reason = str(wait_for(held, f"job {job} to be held by a failed stage-in"))
    assert reason.startswith("burst_buffer/lua: slurm_bb_data_in: ")
    assert directive in reason
    assert ("Permission denied" if kind == "root-only" else str(source)) in reason
    cluster.wait_gone(job)  # Flags=TeardownFailure tears down at once
    cluster.run("scancel", job, as_user=True)
    assert cluster.wait_state(job, "CANCELLED") == "CANCELLED"
    assert not cluster.storage(job).exists()
    assert not (work / "job.sh.out").exists()


# --- the bridge agent ---------------------------------------------------------------------------------


def test_hooks_run_through_the_agent_and_in_process_without_it(cluster: Cluster) -> None:
    """testenv starts the agent (DWSB_SLURM_AGENT=0 would not); with it stopped, every hook falls back
    to running the bridge in-process and the job runs all the same."""
    work = cluster.workdir("agent")
    served = cluster.submit(work, "echo $DW_JOB_scratch", JOBDW, name="served.sh")
    assert cluster.wait_state(served, "COMPLETED", "FAILED") == "COMPLETED"
    cluster.wait_gone(served)
    hooks = {line.split(" hook=")[1].split()[0] for line in cluster.agent_lines(served)}
    assert {"setup", "data_in", "paths", "pre_run", "post_run", "data_out", "job_teardown"} <= hooks
    cluster.run(str(SCRIPT), "agent-stop")
    try:
        job = cluster.submit(work, "echo $DW_JOB_scratch", JOBDW, name="inprocess.sh")
        assert cluster.wait_state(job, "COMPLETED", "FAILED") == "COMPLETED"
        cluster.wait_gone(job)
        assert (work / "inprocess.sh.out").read_text().strip().endswith(f"/bb{job}/scratch")
        assert cluster.agent_lines(job) == []
        assert any("job_teardown" in line and "rc=success" in line for line in cluster.log_lines(job))
    finally:
        cluster.run(str(SCRIPT), "agent-start")


# --- many at once -----------------------------------------------------------------------------------


def test_ten_jobs_at_once_all_complete_with_nothing_left(cluster: Cluster) -> None:
    work = cluster.workdir("ten")
    (work / "in.txt").write_text("shared input\n")
    jobs = []
    for i in range(10):
        jobs.append(
            cluster.submit(
                work,
                f'cd "$DW_JOB_scratch" && cat in.txt > out.txt && echo {i} >> out.txt',
                JOBDW,
                f"#DW copy_in source={work}/in.txt destination=$DW_JOB_scratch/in.txt",
                f"#DW copy_out source=$DW_JOB_scratch/out.txt destination={work}/out{i}.txt",
                name=f"job{i}.sh",
            )
        )
    for job in jobs:
        assert cluster.wait_state(job, "COMPLETED", "FAILED", "CANCELLED", timeout=120) == "COMPLETED"
    for job in jobs:
        cluster.wait_gone(job)
    for i in range(10):
        assert (work / f"out{i}.txt").read_text() == f"shared input\n{i}\n"
    names = {s.name for s in cluster.lifecycle.list()}
    assert not names & {f"bb{job}" for job in jobs}
    assert not any(cluster.storage(job).exists() for job in jobs)


# --- copy-offload from inside a job (issue 5) --------------------------------------------------------


def test_job_uses_the_copyoffload_client_to_copy_out_of_its_storage(cluster: Cluster) -> None:
    work = cluster.workdir("offload")
    lib = work / "lib"
    shutil.copytree(REPO / "copyoffload", lib / "copyoffload", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chmod", "-R", "a+rX", str(lib)], check=True)
    body = "\n".join(
        [
            "set -e",
            'head -c 3000000 /dev/urandom > "$DW_JOB_scratch/big.bin"',
            f"export PYTHONPATH={lib}",
            f'/usr/bin/python3 -m copyoffload.cli copy "$DW_JOB_scratch/big.bin" {work}/ --wait --json'
            f" > {work}/copy.json",
            f"/usr/bin/python3 -m copyoffload.cli list > {work}/list.txt",
            f'cmp "$DW_JOB_scratch/big.bin" {work}/big.bin && echo MATCH',
        ]
    )
    job = cluster.submit(
        work, body, JOBDW + " requires=copy-offload", "#DW container name=co profile=copy-offload-default"
    )
    assert cluster.wait_state(job, "COMPLETED", "FAILED", "CANCELLED") == "COMPLETED", (
        cluster.state(job),
        text(work / "job.sh.out"),
    )
    cluster.wait_gone(job)
    import json

    status = json.loads((work / "copy.json").read_text())
    assert (status["state"], status["status"]) == ("completed", "success"), status
    assert status["commandStatus"]["progress"] == 100
    assert "MATCH" in text(work / "job.sh.out")
    assert (work / "big.bin").stat().st_uid == cluster.user.pw_uid
    assert not cluster.storage(job).exists()


def test_the_agent_tears_down_a_workflow_whose_job_slurm_has_forgotten(cluster: Cluster) -> None:
    job = "987654"  # a job id this cluster never issued: its workflow is an orphan
    name = cluster.lifecycle.create(
        wlm="slurm", job_id=job, uid=cluster.user.pw_uid, gid=cluster.user.pw_gid, directives=[JOBDW]
    )
    cluster.lifecycle.advance_to(name, "Setup")
    assert cluster.storage(job).exists()
    cluster.wait_gone(job)
    assert not cluster.storage(job).exists()
