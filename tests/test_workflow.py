"""The Workflow model: what we build validates against the CRD; DWS's admission rules hold."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from dwsbridge.errors import AdmissionError
from dwsbridge.workflow import (
    API_VERSION,
    STATES,
    build_workflow,
    check_create,
    check_update,
    is_state_complete,
    workflow_name,
)

CRD = Path(__file__).resolve().parents[2] / "shared" / "dws" / "dataworkflowservices.github.io_workflows.yaml"
DIRECTIVES = ["#DW jobdw type=xfs capacity=10GiB name=scratch requires=copy-offload"]


def crd_schema(version: str = "v1alpha7") -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            return served["schema"]["openAPIV3Schema"]
    raise AssertionError(f"{version} not in CRD")


def wf(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(wlm="slurm", job_id=42, uid=1000, gid=1000, directives=DIRECTIVES)
    args.update(overrides)
    return build_workflow(**args)


def at(state: str, *, ready: bool = True) -> dict[str, Any]:
    obj = wf()
    obj["spec"]["desiredState"] = state
    obj["status"] = {"state": state, "ready": ready, "status": "Completed" if ready else "DriverWait"}
    return obj


def to(obj: dict[str, Any], state: str, hurry: bool = False) -> dict[str, Any]:
    new = copy.deepcopy(obj)
    new["spec"]["desiredState"] = state
    if hurry:
        new["spec"]["hurry"] = True
    return new


@pytest.mark.skipif(not CRD.exists(), reason="../shared/dws not beside the checkout")
@pytest.mark.parametrize("wlm", ["slurm", "flux"])
def test_built_manifest_validates_against_the_crd_schema(wlm: str) -> None:
    jsonschema.validate(wf(wlm=wlm), crd_schema())


@pytest.mark.skipif(not CRD.exists(), reason="../shared/dws not beside the checkout")
def test_crd_schema_check_can_fail() -> None:
    broken = wf()
    del broken["spec"]["userID"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, crd_schema())


def test_names_follow_each_wlm() -> None:
    assert workflow_name("slurm", "17") == "bb17"
    assert workflow_name("flux", 123456789) == "fluxjob-123456789"
    with pytest.raises(ValueError):
        workflow_name("slurm", "12a")
    with pytest.raises(ValueError):
        workflow_name("pbs", "1")


def test_manifest_carries_job_identity_and_our_labels() -> None:
    obj = wf(wlm="flux", job_id=7, uid=1001, gid=1002, namespace="ns1")
    assert obj["apiVersion"] == API_VERSION == "dataworkflowservices.github.io/v1alpha7"
    assert obj["metadata"]["namespace"] == "ns1"
    assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "dwsbridge"
    assert obj["spec"] == {
        "desiredState": "Proposal",
        "dwDirectives": DIRECTIVES,
        "wlmID": "flux",
        "jobID": 7,
        "userID": 1001,
        "groupID": 1002,
        "forceReady": False,
    }


def test_create_is_allowed_in_proposal() -> None:
    check_create(wf())


def test_create_not_in_proposal_is_refused() -> None:
    obj = wf()
    obj["spec"]["desiredState"] = "Setup"
    with pytest.raises(AdmissionError, match="desired state must start in Proposal"):
        check_create(obj)


def test_hurry_on_create_is_refused() -> None:
    obj = wf()
    obj["spec"]["hurry"] = True
    with pytest.raises(AdmissionError, match="hurry"):
        check_create(obj)


def test_status_on_create_is_refused() -> None:
    obj = wf()
    obj["status"] = {"state": "Proposal"}
    with pytest.raises(AdmissionError, match="status"):
        check_create(obj)


def test_create_runs_the_directive_validator() -> None:
    def refuse(texts: list[str]) -> None:
        raise AdmissionError(f"bad: {texts[0]}")

    with pytest.raises(AdmissionError, match="bad: #DW jobdw"):
        check_create(wf(), refuse)


@pytest.mark.parametrize("i", range(len(STATES) - 2))
def test_next_state_is_allowed_once_ready(i: int) -> None:
    check_update(at(STATES[i]), to(at(STATES[i]), STATES[i + 1]))


def test_skipping_a_state_is_refused() -> None:
    with pytest.raises(AdmissionError, match="states cannot be skipped"):
        check_update(at("Proposal"), to(at("Proposal"), "DataIn"))


def test_going_backwards_is_refused() -> None:
    with pytest.raises(AdmissionError, match="DesiredState cannot progress backwards"):
        check_update(at("DataIn"), to(at("DataIn"), "Setup"))


def test_advancing_before_ready_is_refused() -> None:
    with pytest.raises(AdmissionError, match="current desired state not yet achieved"):
        check_update(at("Setup", ready=False), to(at("Setup", ready=False), "DataIn"))


def test_stale_ready_of_the_previous_state_does_not_count() -> None:
    obj = at("Setup")
    obj["spec"]["desiredState"] = "DataIn"  # patched, controller not caught up: status still says Setup
    assert not is_state_complete(obj, "DataIn")
    with pytest.raises(AdmissionError, match="not yet achieved"):
        check_update(obj, to(obj, "PreRun"))


def test_hurry_without_teardown_is_refused() -> None:
    with pytest.raises(AdmissionError, match="hurry"):
        check_update(at("Setup"), to(at("Setup"), "DataIn", hurry=True))


@pytest.mark.parametrize("field", ["wlmID", "jobID", "userID", "groupID", "dwDirectives"])
def test_immutable_fields_cannot_change(field: str) -> None:
    new = at("Setup")
    new["spec"][field] = ["#DW other"] if field == "dwDirectives" else 999
    with pytest.raises(AdmissionError, match="immutable"):
        check_update(at("Setup"), new)


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("ready", [True, False])
def test_teardown_is_allowed_from_any_state(state: str, ready: bool) -> None:
    check_update(at(state, ready=ready), to(at(state, ready=ready), "Teardown", hurry=True))


def test_nothing_leaves_teardown() -> None:
    with pytest.raises(AdmissionError, match="backwards"):
        check_update(at("Teardown"), to(at("Teardown"), "DataOut"))


def test_state_complete_needs_all_three_conditions() -> None:
    assert is_state_complete(at("PreRun"), "PreRun")
    assert not is_state_complete(at("PreRun", ready=False), "PreRun")
    assert not is_state_complete(at("PreRun"), "PostRun")
