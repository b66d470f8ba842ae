"""S3 staging on a real single-node Slurm (testenv/slurm-cluster), local backend: a job's `#DW copy_in`
takes its input from an S3 bucket, the job writes a result, and `#DW copy_out` puts it in the bucket
after the job, all with the credentials in the job user's own ~/.aws.

Ports (override with the environment): DWSB_S3_E2E_CTLD_PORT=6893, DWSB_S3_E2E_SLURMD_PORT=6894; the S3
server: DWSB_S3_PORT (6891) + 1.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dwsbridge.config import load_config
from dwsbridge.lifecycle import Lifecycle
from tests.helpers_users import shared_tmpdir
from tests.s3_support import DEFAULT_PORT, S3Server, give_credentials, running_s3_server, user_with_home
from tests.slurm_support import SCRIPT, SlurmCluster, slurm_env, slurm_skip_reason, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.root, pytest.mark.timeout(240)]

BASE = Path(os.environ.get("DWSB_S3_E2E_BASE", "/tmp/dwsb-slurm-s3"))
JOB_USER = "dwsbt-s3slurm"
BUCKET = "dwsbt-slurm-data"

if slurm_skip_reason():
    pytest.skip(slurm_skip_reason() or "", allow_module_level=True)
pytest.importorskip("boto3")
pytest.importorskip("moto")


class Cluster(SlurmCluster):
    """Jobs submitted as JOB_USER (a user with a home and S3 credentials), not the shared dwsbuser."""

    def run(self, *cmd: str, as_user: bool = False, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = list(cmd)
        if as_user:
            argv = ["runuser", "-u", JOB_USER, "--", "env", f"SLURM_CONF={self.env['SLURM_CONF']}", *argv]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60, check=check)


@pytest.fixture(scope="module")
def server() -> Iterator[S3Server]:
    port = int(os.environ.get("DWSB_S3_PORT", DEFAULT_PORT)) + 1
    with running_s3_server({"job": [BUCKET]}, port=port) as srv:
        yield srv


@pytest.fixture(scope="module")
def cluster(server: S3Server) -> Iterator[tuple[Cluster, Lifecycle]]:
    with shared_tmpdir() as homes:
        user = user_with_home(JOB_USER, Path(homes))
        give_credentials(user, server, "job")
        env = slurm_env(
            BASE,
            os.environ.get("DWSB_S3_E2E_CTLD_PORT", "6893"),
            os.environ.get("DWSB_S3_E2E_SLURMD_PORT", "6894"),
            DWSB_SLURM_USER=JOB_USER,
        )
        try:
            subprocess.run([str(SCRIPT), "start"], env=env, check=True, timeout=120)
            yield Cluster(env, pwd.getpwnam(JOB_USER)), Lifecycle(load_config(BASE / "dwsbridge.yaml"))
        finally:
            subprocess.run([str(SCRIPT), "stop"], env=env, check=False, timeout=120)
    for daemon in ("slurmctld", "slurmd", "munged", "agent"):
        assert not (BASE / "run" / f"{daemon}.pid").exists(), f"{daemon} left running"


def test_a_job_stages_its_input_from_s3_and_its_result_lands_in_s3(
    server: S3Server, cluster: tuple[Cluster, Lifecycle]
) -> None:
    slurm, lifecycle = cluster
    client = server.client()
    data = os.urandom(2_000_000)
    client.put_object(Bucket=BUCKET, Key="inputs/run1/data.bin", Body=data)
    client.put_object(Bucket=BUCKET, Key="inputs/run1/params.txt", Body=b"steps=3\n")
    work = slurm.workdir("s3job")
    body = "\n".join(
        [
            'cd "$DW_JOB_scratch"',
            "sha256sum input/data.bin | cut -d' ' -f1 > output/data.sha256",
            'echo "job $SLURM_JOB_ID read $(cat input/params.txt)" > output/report.txt',
        ]
    )
    job = slurm.submit(
        work,
        f'mkdir -p "$DW_JOB_scratch/output"\n{body}',
        "#DW jobdw type=xfs capacity=1GiB name=scratch pool=dws",
        f"#DW copy_in source=s3://{BUCKET}/inputs/run1/ destination=$DW_JOB_scratch/input",
        f"#DW copy_out source=$DW_JOB_scratch/output destination=s3://{BUCKET}/results/run1/",
    )
    assert slurm.wait_state(job, "COMPLETED", "FAILED", "CANCELLED") == "COMPLETED", (
        slurm.state(job),
        (work / "job.sh.out").read_text(errors="replace") if (work / "job.sh.out").exists() else "",
    )
    wait_for(lambda: not lifecycle.exists(f"bb{job}"), f"workflow bb{job} to be torn down", 60)
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix="results/run1/").get("Contents", [])
    results = {o["Key"]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}
    assert results == {
        "results/run1/data.sha256": (hashlib.sha256(data).hexdigest() + "\n").encode(),
        "results/run1/report.txt": f"job {job} read steps=3\n".encode(),
    }
    log = (BASE / "log" / "slurmctld.log").read_text(errors="replace")
    for secret in server.secrets():
        assert secret not in log
