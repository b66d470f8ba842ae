"""nnf-dm from inside a real Slurm job (testenv/slurm-cluster, local backend): the job asks the node's
daemon to copy out of its own storage while it runs, as its user, and the request ends with the job."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nnfdm_support import Daemon, generate_stubs, running_daemon
from tests.slurm_support import SCRIPT, USER, SlurmCluster, slurm_env, slurm_skip_reason

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]

BASE = Path(os.environ.get("DWSB_NNFDM_SLURM_BASE", "/tmp/dwsb-slurm-nnfdm"))
JOBDW = "#DW jobdw type=xfs capacity=1GiB name=scratch pool=dws"

if slurm_skip_reason():
    pytest.skip(slurm_skip_reason() or "", allow_module_level=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[SlurmCluster, Daemon]]:
    env = slurm_env(
        BASE,
        os.environ.get("DWSB_NNFDM_CTLD_PORT", "6882"),
        os.environ.get("DWSB_NNFDM_SLURMD_PORT", "6883"),
    )
    work = Path(tempfile.mkdtemp(prefix="dwsbt-nnfdm-slurm-", dir="/tmp"))
    os.chmod(work, 0o755)
    try:
        subprocess.run([str(SCRIPT), "start"], env=env, check=True, timeout=120)
        with running_daemon(
            work,
            generate_stubs(work / "stubs"),
            config=BASE / "dwsbridge.yaml",
            extra=("--sweep-interval", "0.2"),
        ) as daemon:
            yield SlurmCluster(env, pwd.getpwnam(USER)), daemon
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, check=False, timeout=120)
        subprocess.run(["rm", "-rf", str(work)], check=False)


def test_a_job_copies_out_of_its_storage_through_the_daemon(cluster: tuple[SlurmCluster, Daemon]) -> None:
    slurm, daemon = cluster
    work = slurm.workdir("nnfdm")
    pythonpath = daemon.client.env()["PYTHONPATH"]
    client = f"PYTHONPATH={pythonpath} {daemon.client.python} -m nnfdm.client_cli --socket {daemon.socket}"
    body = "\n".join(
        [
            'head -c 100000 /dev/urandom > "$DW_JOB_scratch/result.dat"',
            'sha256sum < "$DW_JOB_scratch/result.dat" > ' + f"{work}/expected.sha",
            f'{client} --json create "$DW_JOB_scratch/result.dat" {work}/copied.dat --wait'
            f" > {work}/create.json",
            f"echo rc=$? > {work}/rc",
            f"{client} --json list > {work}/list.json",
            f"{client} status 00000000-0000-0000-0000-000000000000 2> {work}/missing.err",
            f"echo rc=$? >> {work}/rc",
        ]
    )
    job = slurm.submit(work, body, JOBDW)
    assert slurm.wait_state(job, "COMPLETED", "FAILED", "CANCELLED") == "COMPLETED", (
        work / "job.sh.out"
    ).read_text()
    assert (work / "rc").read_text().split() == ["rc=0", "rc=3"], (work / "create.json").read_text()
    created = json.loads((work / "create.json").read_text())
    assert (created["state"], created["status"]) == ("COMPLETED", "SUCCESS")
    assert created["uid"] in json.loads((work / "list.json").read_text())["uids"]
    copied = work / "copied.dat"
    assert copied.stat().st_uid == slurm.user.pw_uid  # copied as the job's user, not root
    digest = subprocess.run(["sha256sum"], stdin=copied.open("rb"), capture_output=True, check=True).stdout
    assert digest.decode() == (work / "expected.sha").read_text()
    assert (
        f"workflow=bb{job} request={created['uid']} created by uid={slurm.user.pw_uid}" in daemon.log_text()
    )
