"""Issue 11 items 9 and 12 on a real Slurm 22.05, attacked as ordinary users: a job name crafted to
break or fool the orphan sweep, and the workflow token kept out of slurmctld's log and other users'
reach. Own cluster, base directory and ports (DWSB_HOSTILE_CTLD_PORT / _SLURMD_PORT, default 6866/6867).
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers_users import ensure_user
from tests.slurm_support import (
    WAIT_FOR_GO,
    LocalSlurmCluster,
    release,
    slurm_skip_reason,
    start_local_cluster,
    stop_local_cluster,
    text,
    wait_for,
)

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]

BASE = Path(os.environ.get("DWSB_HOSTILE_BASE", "/tmp/dwsb-slurm-hostile"))
JOBDW = "#DW jobdw type=xfs capacity=1GiB name=scratch pool=dws"

if slurm_skip_reason():
    pytest.skip(slurm_skip_reason() or "", allow_module_level=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalSlurmCluster]:
    running = start_local_cluster(
        BASE,
        os.environ.get("DWSB_HOSTILE_CTLD_PORT", "6866"),
        os.environ.get("DWSB_HOSTILE_SLURMD_PORT", "6867"),
    )
    try:
        yield running
    finally:
        stop_local_cluster(running)


def test_a_held_job_with_a_crafted_name_neither_stops_nor_fools_the_orphan_sweep(
    cluster: LocalSlurmCluster,
) -> None:
    orphan = "987001"  # a job id this cluster never issued: its workflow is an orphan
    # Not UTF-8, and a newline that makes `scontrol -o show job` print a line "JobId=987001 ..."
    name = os.fsdecode(b"x\nJobId=" + orphan.encode() + b" \xff\xfe")
    work = cluster.workdir("crafted")
    script = cluster.write_job(work, "true")
    held = cluster.sbatch(script, "--hold", f"--job-name={name}").stdout.strip()
    try:
        shown = subprocess.run(
            ["scontrol", "-o", "show", "job", held], env=cluster.env, capture_output=True, timeout=60
        ).stdout
        assert b"\nJobId=" + orphan.encode() + b" \xff" in shown  # the attack's premise holds
        uid, gid = cluster.user.pw_uid, cluster.user.pw_gid
        workflow = cluster.lifecycle.create(wlm="slurm", job_id=orphan, uid=uid, gid=gid, directives=[JOBDW])
        cluster.lifecycle.advance_to(workflow, "Setup")
        assert cluster.storage(orphan).exists()
        cluster.wait_gone(orphan)  # the agent's sweep (every 5 s here) still runs and is not fooled
        assert not cluster.storage(orphan).exists()
        assert cluster.state(held)[0] == "PENDING"  # the real job is left alone
    finally:
        cluster.run("scancel", held, check=False)


def test_the_token_reaches_the_job_through_its_own_file_never_slurms_log_nor_another_user(
    cluster: LocalSlurmCluster,
) -> None:
    thief_uid, thief_gid = ensure_user("dwsbt-tokenthief")
    work = cluster.workdir("token")
    body = f'echo "TOKEN=$DW_WORKFLOW_TOKEN"\necho READY\n{WAIT_FOR_GO}'
    job = cluster.submit(work, body, JOBDW + " requires=copy-offload")
    name = f"bb{job}"
    try:
        wait_for(lambda: "READY" in text(work / "job.sh.out"), "the job to print its token")
        token = text(work / "job.sh.out").split("TOKEN=", 1)[1].split("\n", 1)[0]
        assert token == cluster.lifecycle.environment(name)["DW_WORKFLOW_TOKEN"]
        assert token.count(".") == 2

        job_file = Path(cluster.lifecycle.config.job_env_dir) / f"{job}.env"
        st = job_file.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, cluster.user.pw_uid)
        for attempt in (["cat", str(job_file)], ["ls", str(job_file.parent)]):
            stolen = subprocess.run(
                attempt, user=thief_uid, group=thief_gid, capture_output=True, text=True, timeout=30
            )
            assert stolen.returncode != 0 and "Permission denied" in stolen.stderr, stolen
            assert token not in stolen.stdout
    finally:
        release(work)
    assert cluster.wait_state(job, "COMPLETED", "FAILED") == "COMPLETED"
    cluster.wait_gone(job)
    assert not job_file.exists()
    log = (cluster.base / "log" / "slurmctld.log").read_text(errors="replace")
    assert "BURST_BUF" in log  # DebugFlags=BurstBuffer is on: slurmctld logs what the hooks hand it
    assert token not in log
