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
    DENIED = "denied"  # not the caller's workflow: FAILED on the wire where the enum has it
    INVALID = "invalid"
    NOT_FOUND = "not_found"
    ACTIVE = "active"

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


WRONG_STATE = "Workflow must be in 'PreRun' state and 'Completed' status"
PATH_MAX = 4096  # Linux's: a longer path names nothing, and would only bloat the logs


def check_create_args(args: CreateArgs) -> None:
    """The checks every mode makes before accepting a request (INVALID with what to fix)."""
    if not args.source:
        raise Refused(Refused.INVALID, "source path must be supplied")
    if not args.destination:
        raise Refused(Refused.INVALID, "destination path must be supplied")
    for name, path in (("source", args.source), ("destination", args.destination)):
        if len(path.encode("utf-8", "surrogateescape")) > PATH_MAX:
            raise Refused(Refused.INVALID, f"{name} path is longer than {PATH_MAX} bytes")
    for name, value in (("slots", args.slots), ("maxSlots", args.max_slots)):
        if value < -1:
            raise Refused(
                Refused.INVALID, f"{name} must be -1 (defer to profile), 0 (disable), or a positive integer"
            )


def too_many(count: int) -> Refused:
    return Refused(
        Refused.FAILED, f"too many requests ({count}): delete finished requests before creating more"
    )


def parse_request_uid(text: str) -> str:
    """Request ids are UUIDs (as upstream's); anything else is ``Request <uid> is invalid``."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise Refused(Refused.INVALID, f"Request {text} is invalid") from None


def not_found(uid: str) -> Refused:
    return Refused(Refused.NOT_FOUND, f"Request {uid} not found")


__all__ = [
    "PATH_MAX",
    "WRONG_STATE",
    "CreateArgs",
    "JobStatus",
    "Refused",
    "WorkflowRef",
    "WorkflowView",
    "check_create_args",
    "not_found",
    "parse_request_uid",
    "too_many",
]
