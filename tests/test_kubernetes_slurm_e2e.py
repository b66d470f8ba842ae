"""Issue 6's Slurm acceptance: the real single-node Slurm (testenv/slurm-cluster) runs #DW jobs end to
end with the Kubernetes backend pointed at the DWS stand-in (testenv/dws-standin).

DWS sets the job's environment only at PreRun, after Slurm's paths hook: these jobs get DW_JOB_* and
DW_WORKFLOW_TOKEN through the file pre_run writes and the TaskProlog exports. The stand-in and the
cluster run under their own directories and ports for this module and are always stopped (the cluster
first: its stop tears down what is left, which needs the stand-in).
"""

from __future__ import annotations

import base64
import os
import pwd
import socket
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.slurm_support import (
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
from tests.standin_support import RunningStandIn, running_standin

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]

BASE = Path(os.environ.get("DWSB_E2E_K8S_BASE", "/tmp/dwsb-slurm-k8s-pytest"))
STANDIN_DIR = BASE.with_name(BASE.name + "-standin")
NODE = "dwsbnode"
JOBDW = "#DW jobdw type=xfs capacity=1GiB name=scratch pool=dws requires=copy-offload"
WORKFLOWS = "/apis/dataworkflowservices.github.io/v1alpha7"


def _skip_reason() -> str | None:
    if reason := slurm_skip_reason():
        return reason
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        return "the kubernetes client is not installed"
    return None


if _skip_reason():
    pytest.skip(_skip_reason() or "", allow_module_level=True)


@dataclass
class Cluster(SlurmCluster):
    """The cluster on the Kubernetes backend, whose workflows live in the DWS stand-in."""

    standin: RunningStandIn
    wait_timeout: ClassVar[float] = 90.0

    def workflow(self, job: str) -> dict[str, Any] | None:
        return self.standin.workflow(f"bb{job}")

    def wait_gone(self, job: str, timeout: float = 90.0) -> None:
        wait_for(lambda: self.workflow(job) is None, f"workflow bb{job} to be deleted", timeout)

    def env_file(self, job: str) -> Path:
        return BASE / "dwsroot" / "job-env" / f"{job}.env"

    def all_workflows(self) -> list[str]:
        items = self.standin.request("GET", f"{WORKFLOWS}/workflows")["items"]
        return sorted(item["metadata"]["name"] for item in items)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    computes = ",".join([NODE, socket.gethostname(), "localhost"])
    with running_standin(STANDIN_DIR, "--computes", computes) as standin:
        env = slurm_env(
            BASE,
            os.environ.get("DWSB_E2E_K8S_CTLD_PORT", "6847"),
            os.environ.get("DWSB_E2E_K8S_SLURMD_PORT", "6848"),
            DWSB_SLURM_BACKEND="kubernetes",
            DWSB_SLURM_KUBECONFIG=str(standin.kubeconfig),
        )
        try:
            # stop first: a cluster left running from an earlier run may have another backend configured
            subprocess.run([str(SCRIPT), "stop"], env=env, check=False, timeout=120)
            subprocess.run([str(SCRIPT), "start"], env=env, check=True, timeout=120)
            yield Cluster(env, pwd.getpwnam(USER), standin)
        finally:
            subprocess.run([str(SCRIPT), "stop"], env=env, check=False, timeout=180)
    for daemon in ("slurmctld", "slurmd", "munged"):
        assert not (BASE / "run" / f"{daemon}.pid").exists(), f"{daemon} left running"
    assert not (STANDIN_DIR / "pid").exists(), "the DWS stand-in was left running"


def output_vars(work: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text(work / "job.sh.out").splitlines() if "=" in line)


# --- the main path ---------------------------------------------------------------------------------------


def test_a_dw_job_gets_its_prerun_environment_and_a_token_that_verifies(cluster: Cluster) -> None:
    from copyoffload.tokens import verify_token

    body = "\n".join(
        [
            "env | grep -E '^(DW_|NNF_)' | sort",
            'echo "owner=$(stat -c %U "$HOME" 2>/dev/null)"',
            "echo READY",
            WAIT_FOR_GO,
        ]
    )
    work = cluster.workdir("main")
    job = cluster.submit(work, body, JOBDW)
    name = f"bb{job}"
    try:
        wait_for(lambda: "READY" in text(work / "job.sh.out"), f"job {job} to print its environment")
        seen = output_vars(work)
        workflow = cluster.workflow(job)
        assert workflow is not None
        dws_env = workflow["status"]["env"]
        assert seen["DW_JOB_scratch"] == dws_env["DW_JOB_scratch"]
        assert seen["DW_JOB_scratch"].startswith("/mnt/nnf/")  # the stand-in's nnf-sos mount path
        assert seen["DW_JOBS"] == f"scratch:{dws_env['DW_JOB_scratch']}"
        assert (seen["DW_WORKFLOW_NAME"], seen["DW_WORKFLOW_NAMESPACE"]) == (name, "default")

        secret = cluster.standin.request("GET", f"/api/v1/namespaces/default/secrets/{name}-token-server")
        key = base64.b64decode(secret["data"]["token.key"])
        assert verify_token(seen["DW_WORKFLOW_TOKEN"], key, workflow=name)["sub"] == "user-container"

        st = cluster.env_file(job).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, cluster.user.pw_uid)
        assert stat.S_IMODE(cluster.env_file(job).parent.stat().st_mode) == 0o711
    finally:
        release(work)
    assert cluster.wait_state(job, "COMPLETED", "FAILED", "CANCELLED") == "COMPLETED", cluster.state(job)
    cluster.wait_gone(job)
    assert not cluster.env_file(job).exists()
    assert not any(s.startswith(f"{name}-") for s in secret_names(cluster))


def secret_names(cluster: Cluster) -> list[str]:
    items = cluster.standin.request("GET", "/api/v1/namespaces/default/secrets")["items"]
    return [item["metadata"]["name"] for item in items]


def test_bbstat_and_kubectl_show_the_running_jobs_workflow(cluster: Cluster) -> None:
    work = cluster.workdir("watch")
    job = cluster.submit(work, "echo STARTED\n" + WAIT_FOR_GO, JOBDW)
    try:
        cluster.wait_state(job, "RUNNING")
        wait_for(lambda: "STARTED" in text(work / "job.sh.out"), f"job {job} to start")
        shown = cluster.run("scontrol", "show", "bbstat", "workflow", job, as_user=True).stdout
        assert shown.strip() == "desiredState=PreRun currentState=PreRun status=Completed"
        listing = cluster.run(
            "kubectl",
            "--kubeconfig",
            str(cluster.standin.kubeconfig),
            "--cache-dir",
            str(BASE / "kube-cache"),  # not ./.kube: the command runs without $HOME
            "get",
            "workflows.dataworkflowservices.github.io",
            "-A",
        ).stdout
        assert any(line.split()[:2] == ["default", f"bb{job}"] for line in listing.splitlines()), listing
    finally:
        release(work)
    assert cluster.wait_state(job, "COMPLETED", "FAILED", "CANCELLED") == "COMPLETED"
    cluster.wait_gone(job)


# --- cancellation -------------------------------------------------------------------------------------------


def test_scancel_hurry_sets_hurry_and_teardown_in_one_update_and_deletes_the_workflow(
    cluster: Cluster,
) -> None:
    work = cluster.workdir("hurry")
    job = cluster.submit(work, "echo STARTED\n" + WAIT_FOR_GO, JOBDW)
    name = f"bb{job}"
    cluster.wait_state(job, "RUNNING")
    wait_for(lambda: "STARTED" in text(work / "job.sh.out"), f"job {job} to start")
    assert cluster.env_file(job).exists()
    cluster.run("scancel", "--hurry", job, as_user=True)
    cluster.wait_gone(job)
    cluster.wait_state(job, "CANCELLED", "COMPLETED", "FAILED")

    writes = [r for r in cluster.standin.requests() if r["path"].endswith(f"/workflows/{name}")]
    teardowns = [r for r in writes if spec_of(r).get("desiredState") == "Teardown"]
    assert teardowns, writes
    assert spec_of(teardowns[0]).get("hurry") is True, teardowns[0]
    states = [spec_of(r).get("desiredState") for r in writes]
    assert "DataOut" not in states, states  # copy_out never runs in a hurry
    assert any(r["method"] == "DELETE" for r in writes), writes
    assert not cluster.env_file(job).exists()


def spec_of(request: dict[str, Any]) -> dict[str, Any]:
    """The spec a recorded write sent (merge patch or update); {} for anything else."""
    body = request.get("body")
    spec = body.get("spec") if isinstance(body, dict) else None
    return spec if isinstance(spec, dict) else {}


def test_nothing_is_left_behind(cluster: Cluster) -> None:
    wait_for(lambda: not cluster.run("squeue", "-h").stdout.strip(), "every job to finish")
    assert cluster.all_workflows() == []
    assert not any(name.startswith("bb") for name in secret_names(cluster))
    assert list((BASE / "dwsroot" / "job-env").iterdir()) == []
