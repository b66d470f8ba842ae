"""What a data-movement request is, independent of gRPC: the calls' arguments, answers and refusals.

The service layer (``service.py``) turns these into the wire's messages and enums; the request book and
the engines never see protobuf.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from copyoffload.client import JobStatus


@dataclass(frozen=True)
class WorkflowRef:
    """A DataMovementWorkflow: the workflow a request belongs to (from DW_WORKFLOW_NAME/NAMESPACE)."""

    name: str
    namespace: str


@dataclass(frozen=True)
class CreateArgs:
    """DataMovementCreateRequest without its workflow."""

    source: str = ""
    destination: str = ""
    dryrun: bool = False
    dcp_options: str = ""
    log_stdout: bool = False
    store_stdout: bool = False
    slots: int = 0
    max_slots: int = 0
    profile: str = ""
    mpirun_options: str = ""


@dataclass(frozen=True)
class WorkflowView:
    """What the daemon needs to know of a Workflow (read from the backend on every call)."""

    name: str
    namespace: str
    uid: int
    gid: int
    desired_state: str
    state: str
    status: str
    env: dict[str, str]
    obj: dict[str, object]

    @property
    def running(self) -> bool:
        """PreRun done: the job runs and may move data (upstream's condition for Create)."""
        return self.desired_state == self.state == "PreRun" and self.status == "Completed"


class Refused(Exception):
    """A call that cannot be served. ``kind`` picks the wire status; the message is for the user."""

    FAILED = "failed"
    INVALID = "invalid"
    NOT_FOUND = "not_found"
    ACTIVE = "active"

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


WRONG_STATE = "Workflow must be in 'PreRun' state and 'Completed' status"


def parse_request_uid(text: str) -> str:
    """Request ids are UUIDs (as upstream's); anything else is ``Request <uid> is invalid``."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise Refused(Refused.INVALID, f"Request {text} is invalid") from None


def not_found(uid: str) -> Refused:
    return Refused(Refused.NOT_FOUND, f"Request {uid} not found")


__all__ = [
    "WRONG_STATE",
    "CreateArgs",
    "JobStatus",
    "Refused",
    "WorkflowRef",
    "WorkflowView",
    "not_found",
    "parse_request_uid",
]
