"""The DWS Workflow resource: how we build it, its states, and DWS's admission rules.

This is the one place that knows what DWS's webhook allows on create and update, and what "a state is
complete" means. The local backend, the Kubernetes stand-in and the tests all use it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dwsbridge.errors import AdmissionError

GROUP = "dataworkflowservices.github.io"
VERSION = "v1alpha7"
SERVED_VERSIONS = ("v1alpha7", "v1alpha6")
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Workflow"
PLURAL = "workflows"

STATES = ("Proposal", "Setup", "DataIn", "PreRun", "PostRun", "DataOut", "Teardown")
PROPOSAL, SETUP, DATA_IN, PRE_RUN, POST_RUN, DATA_OUT, TEARDOWN = STATES
STATUSES = ("Completed", "DriverWait", "TransientCondition", "Error")

WLMS = ("slurm", "flux")
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_WLM = "dwsbridge.github.io/wlm"
LABEL_JOB = "dwsbridge.github.io/job-id"
MANAGED_BY = "dwsbridge"
IMMUTABLE_SPEC_FIELDS = ("wlmID", "jobID", "userID", "groupID", "dwDirectives")


def finalizer(wlm: str) -> str:
    """The WLM's own finalizer: DWS keeps the Workflow until the WLM says it is done with it."""
    return f"dwsbridge.github.io/{wlm}"


def state_index(state: str) -> int:
    try:
        return STATES.index(state)
    except ValueError:
        raise AdmissionError(f"unknown state {state!r}; states are {', '.join(STATES)}") from None


def workflow_name(wlm: str, job_id: int | str) -> str:
    """`bb<jobid>` for Slurm (as the upstream plugin names it), `fluxjob-<id>` for Flux."""
    job = str(job_id).strip()
    if not job.isdigit():
        raise ValueError(f"job id must contain only digits, not {job_id!r}")
    if wlm == "slurm":
        return f"bb{int(job)}"
    if wlm == "flux":
        return f"fluxjob-{int(job)}"
    raise ValueError(f"unknown workload manager {wlm!r}; expected one of {', '.join(WLMS)}")


def build_workflow(
    *,
    wlm: str,
    job_id: int | str,
    uid: int,
    gid: int,
    directives: Sequence[str],
    namespace: str = "default",
) -> dict[str, Any]:
    """The Workflow a WLM creates for a job: desiredState Proposal, our labels and finalizer."""
    name = workflow_name(wlm, job_id)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_WLM: wlm, LABEL_JOB: str(job_id)},
            "finalizers": [finalizer(wlm)],
        },
        "spec": {
            "desiredState": PROPOSAL,
            "dwDirectives": [str(d) for d in directives],
            "wlmID": wlm,
            "jobID": int(job_id) if str(job_id).isdigit() else str(job_id),
            "userID": int(uid),
            "groupID": int(gid),
            "forceReady": False,
        },
    }


def check_create(
    obj: Mapping[str, Any], validate_directives: Callable[[list[str]], None] | None = None
) -> None:
    """Refuse a create the way DWS's webhook does; `validate_directives` raises AdmissionError."""
    spec = obj.get("spec") or {}
    if spec.get("desiredState") != PROPOSAL:
        raise AdmissionError(f"desired state must start in {PROPOSAL}")
    if spec.get("hurry"):
        raise AdmissionError("the hurry flag may not be set on creation")
    if obj.get("status"):
        raise AdmissionError("the status cannot be set on creation")
    for key in ("wlmID", "jobID", "userID", "groupID"):
        if key not in spec:
            raise AdmissionError(f"spec.{key}: Required value")
    directives = spec.get("dwDirectives")
    if not isinstance(directives, list):
        raise AdmissionError("spec.dwDirectives: Required value")
    if validate_directives is not None:
        validate_directives([str(d) for d in directives])


def check_update(old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Refuse an update the way DWS's webhook does (immutables, hurry, state order, readiness)."""
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    for key in IMMUTABLE_SPEC_FIELDS:
        if old_spec.get(key) != new_spec.get(key):
            raise AdmissionError(f"spec.{key}: Forbidden: field is immutable")
    new_state = new_spec.get("desiredState", "")
    old_state = old_spec.get("desiredState", "")
    if new_spec.get("hurry") and new_state != TEARDOWN:
        raise AdmissionError(
            "spec.hurry: Forbidden: the hurry flag may only be set with desiredState Teardown"
        )
    if old_spec.get("hurry") and not new_spec.get("hurry"):
        raise AdmissionError("spec.hurry: Forbidden: the hurry flag may not be cleared")
    if new_state == old_state:
        return
    new_i, old_i = state_index(new_state), state_index(old_state)
    if old_state == TEARDOWN or new_i < old_i:
        raise AdmissionError("DesiredState cannot progress backwards")
    if new_state == TEARDOWN:
        return
    if new_i > old_i + 1:
        raise AdmissionError("states cannot be skipped")
    if not is_state_complete(old, old_state):
        raise AdmissionError("current desired state not yet achieved")


def is_state_complete(obj: Mapping[str, Any], state: str) -> bool:
    """Done means desiredState == status.state == state and ready; a stale `ready` of the old state
    right after a desiredState patch does not count."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return bool(spec.get("desiredState") == state and status.get("state") == state and status.get("ready"))


def is_failed(obj: Mapping[str, Any]) -> bool:
    """Status Error is fatal in every state: the WLM goes to Teardown (TransientCondition may recover)."""
    return (obj.get("status") or {}).get("status") == "Error"


def advanced(obj: Mapping[str, Any], state: str, *, hurry: bool = False) -> dict[str, Any]:
    """A copy of `obj` with desiredState (and hurry, for Teardown) set, as one update."""
    new = copy.deepcopy(dict(obj))
    new["spec"]["desiredState"] = state
    if hurry:
        new["spec"]["hurry"] = True
    return new
