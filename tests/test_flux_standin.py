"""The Flux normal path on the Kubernetes backend, against the DWS stand-in: the same jobtap, service
and eventlog as on the local backend; only the configuration differs. Skips when the stand-in or the
Kubernetes backend is not there."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dwsbridge.config import Config
from tests.flux_support import make_bridge
from tests.test_flux_jobtap import NORMAL

REPO = Path(__file__).resolve().parents[1]
if not (REPO / "testenv" / "dws_standin" / "testing.py").exists():
    pytest.skip("the DWS stand-in (testenv/dws_standin) is not there yet", allow_module_level=True)
pytest.importorskip("kubernetes")
pytest.importorskip("dwsbridge.backends.kubernetes")
sys.path.insert(0, str(REPO / "testenv"))

from dws_standin import testing  # noqa: E402


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[testing.RunningStandIn]:
    directory = tmp_path_factory.mktemp("flux-standin")
    running = testing.start(directory)
    try:
        yield running
    finally:
        testing.stop(directory)


def test_normal_path_on_the_kubernetes_backend(standin: testing.RunningStandIn) -> None:
    config = Config(
        backend="kubernetes", kubeconfig=standin.kubeconfig, state_timeout=30.0, transient_timeout=30.0
    )
    bridge = make_bridge(config)
    jobid = bridge.jm.submit(
        userid=os.getuid(), dw="#DW jobdw type=xfs capacity=1GiB name=data requires=copy-offload"
    )
    bridge.jm.run()
    job = bridge.job(jobid)
    assert job.names() == NORMAL
    assert job.context("prolog-finish") == {"description": "dws-setup", "status": 0}
    assert job.context("finish") == {"status": 0}
    assert job.context("epilog-finish") == {"description": "dws-epilog", "status": 0}
    variables = job.context("dws_environment")["variables"]
    assert variables["DW_WORKFLOW_NAME"] == f"fluxjob-{jobid}"
    assert "DW_JOB_data" in variables
    assert len(variables["DW_WORKFLOW_TOKEN"].split(".")) == 3
    assert standin.workflow(f"fluxjob-{jobid}") is None  # torn down and deleted
