"""The daemon's bookkeeping: which requests exist, whose they are, and when they are forgotten.

Every call names a workflow. The book reads that workflow from the backend (local store or DWS) on
each call and refuses unless the caller (uid from SO_PEERCRED) is the workflow's user, so one user can
never create, see, cancel or delete requests of another's workflow. A request id another user made is
answered exactly as an unknown one. How a request actually runs is the engine's business
(``local.LocalEngine``: our mover; ``forward.ForwardEngine``: the workflow's copy-offload server).
"""

from __future__ import annotations

import builtins
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from nnfdm.model import (
    WRONG_STATE,
    CreateArgs,
    JobStatus,
    Refused,
    WorkflowRef,
    WorkflowView,
    check_create_args,
    not_found,
    parse_request_uid,
    too_many,
)
from nnfdm.peercred import Caller

log = logging.getLogger("nnfdm")


class Engine(Protocol):
    """Runs requests. Handles are the engine's own; the book only stores and passes them back."""

    def start(self, workflow: WorkflowView, caller: Caller, args: CreateArgs, request: str) -> Any:
        """Start a request (raise Refused); return its handle."""
        ...

    def status(self, handle: Any, max_wait: float | None) -> JobStatus:
        """The request's status, waiting up to ``max_wait`` s (None: until done) for it to finish."""
        ...

    def cancel(self, handle: Any) -> None: ...

    def release(self, workflow: WorkflowRef, handles: list[Any]) -> None:
        """The workflow has ended: cancel what still runs and drop what the engine keeps for it."""
        ...


WorkflowSource = Callable[[WorkflowRef], WorkflowView | None]


@dataclass
class Entry:
    uid: str
    workflow: WorkflowRef
    owner: int
    handle: Any
    store_stdout: bool


class RequestBook:
    """Thread-safe: the service calls it from worker threads."""

    def __init__(
        self,
        engine: Engine,
        workflows: WorkflowSource,
        *,
        default_namespace: str = "default",
        max_active_per_user: int = 256,
    ) -> None:
        self.engine = engine
        self._lookup = workflows
        self._default_namespace = default_namespace
        self._max_active_per_user = max_active_per_user
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._held: Counter[int] = Counter()  # requests per owner, reserved before they start
        self._by_workflow: dict[WorkflowRef, set[str]] = {}

    # --- the calls ------------------------------------------------------------------------------
    def create(self, caller: Caller, ref: WorkflowRef, args: CreateArgs) -> str:
        workflow = self._workflow_for(caller, ref, must_exist=Refused.FAILED)
        if not workflow.running:
            raise Refused(Refused.FAILED, WRONG_STATE)
        check_create_args(args)
        ref = WorkflowRef(workflow.name, workflow.namespace)
        with self._lock:
            mine = self._held[caller.uid]
            if mine >= self._max_active_per_user:
                raise too_many(mine)
            self._held[caller.uid] += 1  # reserved now: concurrent Creates cannot pass the cap together
        request = str(uuid.uuid4())
        try:
            handle = self.engine.start(workflow, caller, args, request)
        except BaseException:
            with self._lock:
                self._held[caller.uid] -= 1
            raise
        with self._lock:
            self._entries[request] = Entry(request, ref, caller.uid, handle, args.store_stdout)
            self._by_workflow.setdefault(ref, set()).add(request)
        log.info(
            "workflow=%s request=%s created by uid=%d: %r -> %r%s",
            ref.name,
            request,
            caller.uid,
            args.source,
            args.destination,
            " (dry run)" if args.dryrun else "",
        )
        return request

    def status(self, caller: Caller, ref: WorkflowRef, uid: str, max_wait: float | None) -> JobStatus:
        entry = self._entry(caller, ref, uid)
        return self._shown(entry, self.engine.status(entry.handle, max_wait))

    def status_if_finished(self, caller: Caller, ref: WorkflowRef, uid: str) -> JobStatus | None:
        """The status when the request is over (or the call is refused); None when waiting would wait."""
        entry = self._entry(caller, ref, uid)
        status = self.engine.status(entry.handle, 0)
        return self._shown(entry, status) if status.finished else None

    @staticmethod
    def _shown(entry: Entry, status: JobStatus) -> JobStatus:
        if entry.store_stdout and status.finished and not status.message:
            return replace(status, message=status.command_status.last_message)
        return status

    def cancel(self, caller: Caller, ref: WorkflowRef, uid: str) -> None:
        entry = self._entry(caller, ref, uid)
        self.engine.cancel(entry.handle)
        log.info("workflow=%s request=%s cancelled by uid=%d", entry.workflow.name, uid, caller.uid)

    def delete(self, caller: Caller, ref: WorkflowRef, uid: str) -> None:
        entry = self._entry(caller, ref, uid)
        if not self.engine.status(entry.handle, 0).finished:
            raise Refused(Refused.ACTIVE, f"Request {entry.uid} is still active: cancel it or wait for it")
        with self._lock:
            if self._entries.pop(entry.uid, None) is not None:
                self._held[entry.owner] -= 1
            self._by_workflow.get(entry.workflow, set()).discard(entry.uid)

    def list(self, caller: Caller, ref: WorkflowRef) -> builtins.list[str]:
        workflow = self._workflow_for(caller, ref, must_exist=Refused.NOT_FOUND)
        if workflow.desired_state != "PreRun":
            self.forget(WorkflowRef(workflow.name, workflow.namespace))
        with self._lock:
            return sorted(self._by_workflow.get(WorkflowRef(workflow.name, workflow.namespace), ()))

    # --- the workflow's end -----------------------------------------------------------------------
    def sweep(self) -> builtins.list[WorkflowRef]:
        """Forget the requests of every workflow that has left PreRun (PostRun, Teardown) or is gone."""
        with self._lock:
            refs = [r for r, uids in self._by_workflow.items() if uids]
        ended = []
        for ref in refs:
            workflow = self._lookup(ref)
            if workflow is None or workflow.desired_state != "PreRun":
                ended.append(ref)
                self.forget(ref)
        return ended

    def forget(self, ref: WorkflowRef) -> None:
        with self._lock:
            uids = self._by_workflow.pop(ref, set())
            entries = [self._entries.pop(u) for u in uids if u in self._entries]
            for entry in entries:
                self._held[entry.owner] -= 1
        if entries:
            log.info("workflow=%s ended: %d requests cancelled and forgotten", ref.name, len(entries))
        self.engine.release(ref, [e.handle for e in entries])

    # --- checks ----------------------------------------------------------------------------------
    def _workflow_for(self, caller: Caller, ref: WorkflowRef, *, must_exist: str) -> WorkflowView:
        if not ref.name:
            raise Refused(
                Refused.INVALID,
                "workflow name must be supplied (DataMovementWorkflow.name: $DW_WORKFLOW_NAME)",
            )
        ref = WorkflowRef(ref.name, ref.namespace or self._default_namespace)
        workflow = self._lookup(ref)
        if workflow is None:
            raise Refused(must_exist, f"workflow {ref.name} not found in namespace {ref.namespace}")
        if workflow.uid != caller.uid:
            log.warning(
                "workflow=%s refused uid=%d: the workflow belongs to uid=%d",
                ref.name,
                caller.uid,
                workflow.uid,
            )
            raise Refused(
                Refused.DENIED,
                f"workflow {ref.name} belongs to another user: nnf-dm serves only your own workflows",
            )
        return workflow

    def _entry(self, caller: Caller, ref: WorkflowRef, uid: str) -> Entry:
        workflow = self._workflow_for(caller, ref, must_exist=Refused.NOT_FOUND)
        key = parse_request_uid(uid)
        if workflow.desired_state != "PreRun":  # the job has ended: its requests end with it
            self.forget(WorkflowRef(workflow.name, workflow.namespace))
        with self._lock:
            entry = self._entries.get(key)
        if (
            entry is None
            or entry.owner != caller.uid
            or entry.workflow != WorkflowRef(workflow.name, workflow.namespace)
        ):
            raise not_found(uid)
        return entry
