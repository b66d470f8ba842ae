"""The Flux normal path on the Kubernetes backend, against the DWS stand-in: the same jobtap, service
and eventlog as on the local backend; only the configuration differs. Skips when the stand-in or the
Kubernetes backend is not there."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dwsbridge.config import Config
from tests.flux_support import make_bridge
from tests.test_flux_jobtap import NORMAL

if TYPE_CHECKING:
    from tests.standin_support import RunningStandIn

REPO = Path(__file__).resolve().parents[1]
if not (REPO / "testenv" / "dws_standin" / "testing.py").exists():
    pytest.skip("the DWS stand-in (testenv/dws_standin) is not there yet", allow_module_level=True)
pytest.importorskip("kubernetes")
pytest.importorskip("dwsbridge.backends.kubernetes")


def test_normal_path_on_the_kubernetes_backend(standin: RunningStandIn) -> None:
    config = Config(
        backend="kubernetes", kubeconfig=standin.kubeconfig, state_timeout=30.0, transient_timeout=30.0
    )
    bridge = make_bridge(config)
    job = bridge.run_job(
        userid=os.getuid(), dw="#DW jobdw type=xfs capacity=1GiB name=data requires=copy-offload"
    )
    assert job.names() == NORMAL
    assert job.context("prolog-finish") == {"description": "dws-setup", "status": 0}
    assert job.context("finish") == {"status": 0}
    assert job.context("epilog-finish") == {"description": "dws-epilog", "status": 0}
    variables = job.context("dws_environment")["variables"]
    assert variables["DW_WORKFLOW_NAME"] == f"fluxjob-{job.id}"
    assert "DW_JOB_data" in variables
    assert len(variables["DW_WORKFLOW_TOKEN"].split(".")) == 3
    assert standin.workflow(f"fluxjob-{job.id}") is None  # torn down and deleted
