"""The DWS stand-in behaves like the API server, webhook and drivers the backend is written against;
and the backend's allocation planning, which needs no cluster at all."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dwsbridge.backends.kubernetes import plan_allocation_sets, rabbits_of
from dwsbridge.config import Config
from dwsbridge.errors import DwsBridgeError
from dwsbridge.lifecycle import Lifecycle
from dwsbridge.workflow import build_workflow
from tests.standin_support import RunningStandIn, StandInError, running_standin

pytest.importorskip("kubernetes")

GROUP_PATH = "/apis/dataworkflowservices.github.io/v1alpha7/namespaces/default"
_job_ids = itertools.count(8000)


def post_workflow(standin: RunningStandIn, *directives: str) -> dict[str, Any]:
    job = next(_job_ids)
    obj = build_workflow(wlm="slurm", job_id=job, uid=1000, gid=1000, directives=list(directives))
    return dict(standin.request("POST", f"{GROUP_PATH}/workflows", obj))


def patch(standin: RunningStandIn, path: str, body: Any, kind: str = "merge") -> Any:
    content_type = {"merge": "application/merge-patch+json", "json": "application/json-patch+json"}[kind]
    return standin.request("PATCH", path, body, content_type=content_type)


def desire(standin: RunningStandIn, name: str, state: str) -> Any:
    """Ask for the workflow's next state, as the WLM does."""
    return patch(standin, f"{GROUP_PATH}/workflows/{name}", {"spec": {"desiredState": state}})


def settled(standin: RunningStandIn, name: str, state: str) -> dict[str, Any]:
    """The workflow once the controller has judged `state` (ready, or an error status)."""
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        obj = standin.workflow(name) or {}
        status = obj.get("status") or {}
        if status.get("state") == state and (
            status.get("ready") or status.get("status") in ("Error", "TransientCondition")
        ):
            return obj
        time.sleep(0.02)
    raise AssertionError(f"{name} never settled in {state}")


def teardown(standin: RunningStandIn, name: str) -> None:
    desire(standin, name, "Teardown")
    settled(standin, name, "Teardown")
    patch(standin, f"{GROUP_PATH}/workflows/{name}", {"metadata": {"finalizers": None}})
    standin.request("DELETE", f"{GROUP_PATH}/workflows/{name}")


# --- API server ----------------------------------------------------------------------------------


def test_update_with_a_stale_resource_version_is_a_409(standin: RunningStandIn) -> None:
    wf = post_workflow(standin)
    name = wf["metadata"]["name"]
    settled(standin, name, "Proposal")
    stale = standin.workflow(name)
    assert stale is not None
    patch(standin, f"{GROUP_PATH}/workflows/{name}", {"metadata": {"annotations": {"touched": "yes"}}})
    with pytest.raises(StandInError) as refused:
        standin.request("PUT", f"{GROUP_PATH}/workflows/{name}", stale)
    assert refused.value.code == 409
    assert refused.value.status["reason"] == "Conflict"
    teardown(standin, name)


def test_delete_with_a_finalizer_leaves_a_deletion_timestamp(standin: RunningStandIn) -> None:
    wf = post_workflow(standin)
    name = wf["metadata"]["name"]
    settled(standin, name, "Proposal")
    standin.request("DELETE", f"{GROUP_PATH}/workflows/{name}")
    obj = standin.workflow(name)
    assert obj is not None and obj["metadata"]["deletionTimestamp"]
    patch(standin, f"{GROUP_PATH}/workflows/{name}", {"metadata": {"finalizers": None}})
    assert standin.workflow(name) is None


def test_label_selector_filters_lists(standin: RunningStandIn) -> None:
    wf = post_workflow(standin)
    name = wf["metadata"]["name"]
    job = wf["spec"]["jobID"]
    chosen = standin.request(
        "GET", f"{GROUP_PATH}/workflows?labelSelector=dwsbridge.github.io/job-id%3D{job}"
    )["items"]
    assert [o["metadata"]["name"] for o in chosen] == [name]
    none = standin.request("GET", f"{GROUP_PATH}/workflows?labelSelector=dwsbridge.github.io/job-id%3Dnope")
    assert none["items"] == []
    teardown(standin, name)


def test_crd_schema_refuses_a_bad_object_with_422(standin: RunningStandIn) -> None:
    obj = build_workflow(wlm="slurm", job_id=next(_job_ids), uid=1000, gid=1000, directives=[])
    obj["spec"]["desiredState"] = "Sideways"
    with pytest.raises(StandInError) as refused:
        standin.request("POST", f"{GROUP_PATH}/workflows", obj)
    assert refused.value.code == 422
    assert 'spec.desiredState: Unsupported value: "Sideways"' in refused.value.status["message"]


def test_webhook_refuses_skipping_a_state_with_403(standin: RunningStandIn) -> None:
    name = post_workflow(standin)["metadata"]["name"]
    settled(standin, name, "Proposal")
    with pytest.raises(StandInError) as refused:
        desire(standin, name, "DataIn")
    assert refused.value.code == 403
    assert refused.value.status["message"] == (
        'admission webhook "vworkflow.kb.io" denied the request: states cannot be skipped'
    )
    teardown(standin, name)


# --- the drivers ---------------------------------------------------------------------------------


def test_setup_fails_when_the_wlm_left_servers_empty(standin: RunningStandIn) -> None:
    name = post_workflow(standin, "#DW jobdw type=xfs capacity=1GiB name=scratch")["metadata"]["name"]
    settled(standin, name, "Proposal")
    desire(standin, name, "Setup")
    status = settled(standin, name, "Setup")["status"]
    assert status["status"] == "Error"
    assert "no allocation sets" in status["message"]
    teardown(standin, name)


def test_prerun_fails_on_empty_computes(standin: RunningStandIn) -> None:
    name = post_workflow(standin)["metadata"]["name"]
    for state in ("Proposal", "Setup", "DataIn"):
        if state != "Proposal":
            desire(standin, name, state)
        settled(standin, name, state)
    desire(standin, name, "PreRun")
    status = settled(standin, name, "PreRun")["status"]
    assert status["status"] == "Error"
    assert "lists no compute nodes" in status["message"]
    teardown(standin, name)


def test_a_waiting_driver_entry_completes_with_a_json_patch(standin: RunningStandIn) -> None:
    name = post_workflow(standin, "#DW Proposal action=wait")["metadata"]["name"]
    obj = settled_or_waiting(standin, name)
    index = next(i for i, d in enumerate(obj["status"]["drivers"]) if d["watchState"] == "Proposal")
    patch(
        standin,
        f"{GROUP_PATH}/workflows/{name}",
        [{"op": "replace", "path": f"/status/drivers/{index}/completed", "value": True}],
        kind="json",
    )
    assert settled(standin, name, "Proposal")["status"]["status"] == "Completed"
    teardown(standin, name)


def settled_or_waiting(standin: RunningStandIn, name: str) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        obj = standin.workflow(name) or {}
        if (obj.get("status") or {}).get("drivers"):
            return obj
        time.sleep(0.02)
    raise AssertionError(f"{name} got no driver entries")


def test_kubectl_patch_completes_a_waiting_state(standin: RunningStandIn) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    name = post_workflow(standin, "#DW Proposal action=wait")["metadata"]["name"]
    obj = settled_or_waiting(standin, name)
    index = next(i for i, d in enumerate(obj["status"]["drivers"]) if d["watchState"] == "Proposal")
    out = subprocess.run(
        [
            kubectl,
            "--kubeconfig",
            str(standin.kubeconfig),
            "patch",
            "workflows.dataworkflowservices.github.io",
            name,
            "--type=json",
            "-p",
            f'[{{"op":"replace","path":"/status/drivers/{index}/completed","value":true}}]',
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"HOME": str(standin.directory), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert settled(standin, name, "Proposal")["status"]["ready"] is True
    teardown(standin, name)


# --- version probe -------------------------------------------------------------------------------


def test_backend_uses_v1alpha6_when_the_cluster_serves_no_v1alpha7(tmp_path: Path) -> None:
    from dws_standin.__main__ import default_crd_dir

    crds = tmp_path / "crds"
    shutil.copytree(default_crd_dir(), crds)
    for path in crds.glob("dataworkflowservices.github.io_*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            if version["name"] == "v1alpha7":
                version["served"] = False
            if version["name"] == "v1alpha6":
                version["storage"] = True
        path.write_text(yaml.safe_dump(crd))
    with running_standin(tmp_path / "state", "--crd-dir", str(crds)) as running:
        lc = Lifecycle(Config(backend="kubernetes", kubeconfig=running.kubeconfig, state_timeout=30))
        backend: Any = lc.backend
        assert backend.version == "v1alpha6"
        name = lc.create(wlm="flux", job_id=next(_job_ids), uid=1000, gid=1000, directives=[])
        lc.walk(name, ["Setup", "DataIn", "PreRun", "PostRun", "DataOut"])
        lc.teardown(name)
        assert not lc.exists(name)


# --- allocation planning (no cluster) ---------------------------------------------------------------

RABBITS = {"rabbit-0": ["c0", "c1"], "rabbit-1": ["c2", "c3"], "rabbit-2": ["c4"]}


def test_system_configuration_maps_rabbits_to_computes() -> None:
    system = {
        "spec": {
            "storageNodes": [
                {"type": "Rabbit", "name": "r0", "computesAccess": [{"name": "a", "index": 0}]},
                {"type": "Other", "name": "x"},
            ]
        }
    }
    assert rabbits_of(system) == {"r0": ["a"]}


def test_per_compute_allocation_gives_each_rabbit_one_per_node_it_serves() -> None:
    plan = plan_allocation_sets(
        [{"label": "xfs", "allocationStrategy": "AllocatePerCompute", "minimumCapacity": 100}],
        ["c0", "c1", "c2"],
        RABBITS,
    )
    assert plan == [
        {
            "label": "xfs",
            "allocationSize": 100,
            "storage": [
                {"name": "rabbit-0", "allocationCount": 2},
                {"name": "rabbit-1", "allocationCount": 1},
            ],
        }
    ]


def test_across_servers_splits_capacity_over_the_counted_rabbits_nearest_first() -> None:
    plan = plan_allocation_sets(
        [
            {
                "label": "ost",
                "allocationStrategy": "AllocateAcrossServers",
                "minimumCapacity": 100,
                "constraints": {"count": 3},
            }
        ],
        ["c2"],
        RABBITS,
    )
    assert plan[0]["allocationSize"] == 34
    assert [s["name"] for s in plan[0]["storage"]] == ["rabbit-1", "rabbit-0", "rabbit-2"]


def test_single_server_allocation_uses_one_rabbit() -> None:
    plan = plan_allocation_sets(
        [{"label": "mgt", "allocationStrategy": "AllocateSingleServer", "minimumCapacity": 7}],
        ["c4", "c0"],
        RABBITS,
    )
    assert plan == [
        {"label": "mgt", "allocationSize": 7, "storage": [{"name": "rabbit-2", "allocationCount": 1}]}
    ]


def test_unknown_computes_fall_back_to_the_first_rabbit() -> None:
    plan = plan_allocation_sets(
        [{"label": "xfs", "allocationStrategy": "AllocatePerCompute", "minimumCapacity": 5}],
        ["elsewhere"],
        RABBITS,
    )
    assert plan[0]["storage"] == [{"name": "rabbit-0", "allocationCount": 1}]


def test_too_few_rabbits_for_the_count_is_an_error() -> None:
    with pytest.raises(DwsBridgeError, match="needs 9 Rabbits"):
        plan_allocation_sets(
            [
                {
                    "label": "ost",
                    "allocationStrategy": "AllocateAcrossServers",
                    "minimumCapacity": 5,
                    "constraints": {"count": 9},
                }
            ],
            ["c0"],
            RABBITS,
        )
