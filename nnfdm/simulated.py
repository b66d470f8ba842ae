"""``--simulated``: answers as upstream's simulated server does and touches no data.

Create returns a random UUID; the first Status of a request says RUNNING (progress 50, a dcp-style
last message), later ones COMPLETED/SUCCESS; an unparsable id is ``Request <uid> is invalid``, an
unknown one ``Request <uid> not found``. Better than upstream: requests are still the caller's own.
"""

from __future__ import annotations

import builtins
import threading
import uuid

from copyoffload.client import CommandStatus, JobStatus
from nnfdm.model import (
    CreateArgs,
    Refused,
    WorkflowRef,
    check_create_args,
    not_found,
    parse_request_uid,
    too_many,
)
from nnfdm.peercred import Caller


class SimulatedBook:
    def __init__(self, *, max_per_user: int = 256) -> None:
        self._max_per_user = max_per_user
        self._lock = threading.Lock()
        self._requests: dict[str, tuple[int, WorkflowRef, CreateArgs, bool]] = {}

    def create(self, caller: Caller, ref: WorkflowRef, args: CreateArgs) -> str:
        check_create_args(args)
        uid = str(uuid.uuid4())
        with self._lock:
            mine = sum(1 for owner, *_rest in self._requests.values() if owner == caller.uid)
            if mine >= self._max_per_user:
                raise too_many(mine)
            self._requests[uid] = (caller.uid, ref, args, False)
        return uid

    def status(self, caller: Caller, ref: WorkflowRef, uid: str, max_wait: float | None) -> JobStatus:
        key = self._key(caller, uid)
        with self._lock:
            owner, wf, args, seen = self._requests[key]
            self._requests[key] = (owner, wf, args, True)
        if not seen:
            command = f"mpirun --allow-run-as-root dcp --progress 1 {args.source} {args.destination}"
            return JobStatus(
                state="running",
                status="unknown status",
                command_status=CommandStatus(
                    command=command,
                    progress=50,
                    elapsed_time="1s",
                    last_message="Copied 50.000 MiB (50%) in 1.000 secs (50.000 MiB/s) 1 secs left ...",
                ),
            )
        return JobStatus(state="completed", status="success", message=f"Request {key} completed successfully")

    def status_if_finished(self, caller: Caller, ref: WorkflowRef, uid: str) -> JobStatus | None:
        self._key(caller, uid)
        return None  # every Status counts in the simulated sequence, waiting or not

    def cancel(self, caller: Caller, ref: WorkflowRef, uid: str) -> None:
        self._key(caller, uid)

    def delete(self, caller: Caller, ref: WorkflowRef, uid: str) -> None:
        key = self._key(caller, uid)
        with self._lock:
            self._requests.pop(key, None)

    def list(self, caller: Caller, ref: WorkflowRef) -> builtins.list[str]:
        with self._lock:
            return sorted(u for u, (owner, *_rest) in self._requests.items() if owner == caller.uid)

    def sweep(self) -> builtins.list[WorkflowRef]:
        return []

    def _key(self, caller: Caller, uid: str) -> str:
        key = parse_request_uid(uid)
        with self._lock:
            entry = self._requests.get(key)
        if entry is None or entry[0] != caller.uid:
            raise not_found(uid)
        return key


__all__ = ["Refused", "SimulatedBook"]
