"""gRPC concerns only: messages in, the request book's calls, messages and enums out.

Errors travel in each response's status and message (as upstream's do), never as gRPC errors, except
where the wire has no place for them: a caller without peer credentials (UNAUTHENTICATED) and a List
of a workflow that is not the caller's (PERMISSION_DENIED; DataMovementListResponse has only uids).
Blocking work runs in threads: quick calls in a small pool, Status waits in their own threads, at most
``max_waits_per_user`` at once per uid (a user's further waits are answered at once), so no user can
stall the daemon for another by waiting.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError

from nnfdm import API_VERSIONS
from nnfdm.api import datamovement_pb2 as pb
from nnfdm.api.datamovement_grpc import DataMoverBase
from nnfdm.model import CreateArgs, JobStatus, Refused, WorkflowRef
from nnfdm.peercred import Caller, NoCredentials, stream_caller

log = logging.getLogger("nnfdm")
T = TypeVar("T")

_STATES = {
    "pending": pb.DataMovementStatusResponse.PENDING,
    "starting": pb.DataMovementStatusResponse.STARTING,
    "running": pb.DataMovementStatusResponse.RUNNING,
    "completed": pb.DataMovementStatusResponse.COMPLETED,
    "cancelling": pb.DataMovementStatusResponse.CANCELLING,
}
_STATUSES = {
    "invalid": pb.DataMovementStatusResponse.INVALID,
    "success": pb.DataMovementStatusResponse.SUCCESS,
    "failed": pb.DataMovementStatusResponse.FAILED,
    "cancelled": pb.DataMovementStatusResponse.CANCELLED,
    "unknown status": pb.DataMovementStatusResponse.UNKNOWN_STATUS,
}


class Book(Protocol):
    """RequestBook (local / kubernetes) or SimulatedBook."""

    def create(self, caller: Caller, ref: WorkflowRef, args: CreateArgs) -> str: ...
    def status(self, caller: Caller, ref: WorkflowRef, uid: str, max_wait: float | None) -> JobStatus: ...
    def status_if_finished(self, caller: Caller, ref: WorkflowRef, uid: str) -> JobStatus | None: ...
    def cancel(self, caller: Caller, ref: WorkflowRef, uid: str) -> None: ...
    def delete(self, caller: Caller, ref: WorkflowRef, uid: str) -> None: ...
    def list(self, caller: Caller, ref: WorkflowRef) -> builtins.list[str]: ...
    def sweep(self) -> builtins.list[WorkflowRef]: ...


class DataMoverService(DataMoverBase):
    def __init__(self, book: Book, *, version: str, max_waits_per_user: int = 64) -> None:
        self.book = book
        self.version = version
        self.max_waits_per_user = max_waits_per_user
        self.calls = ThreadPoolExecutor(max_workers=8, thread_name_prefix="nnf-dm call")
        self._waits: Counter[int] = Counter()
        self._waits_lock = threading.Lock()

    def close(self) -> None:
        self.calls.shutdown(wait=False, cancel_futures=True)

    async def Version(self, stream: Any) -> None:
        await stream.recv_message()
        await stream.send_message(
            pb.DataMovementVersionResponse(version=self.version, apiVersions=list(API_VERSIONS))
        )

    async def Create(self, stream: Any) -> None:
        req = await stream.recv_message()
        caller = _caller(stream)
        args = CreateArgs(
            source=req.source,
            destination=req.destination,
            dryrun=req.dryrun,
            dcp_options=req.dcpOptions,
            log_stdout=req.logStdout,
            store_stdout=req.storeStdout,
            slots=req.slots,
            max_slots=req.maxSlots,
            profile=req.profile,
            mpirun_options=req.mpirunOptions,
        )
        try:
            uid = await self._call(self.book.create, caller, _ref(req), args)
        except Refused as r:
            invalid = r.kind == Refused.INVALID
            status = (
                pb.DataMovementCreateResponse.INVALID if invalid else pb.DataMovementCreateResponse.FAILED
            )
            reply = pb.DataMovementCreateResponse(status=status, message=r.message)
        else:
            reply = pb.DataMovementCreateResponse(uid=uid, status=pb.DataMovementCreateResponse.SUCCESS)
        await stream.send_message(reply)

    async def Status(self, stream: Any) -> None:
        req = await stream.recv_message()
        caller = _caller(stream)
        wait = 0.0 if req.maxWaitTime == 0 else (None if req.maxWaitTime < 0 else float(req.maxWaitTime))
        try:
            if wait == 0:
                status = await self._call(self.book.status, caller, _ref(req), req.uid, 0.0)
            else:
                done = await self._call(self.book.status_if_finished, caller, _ref(req), req.uid)
                if done is not None:  # no waiting thread for a request that is already over
                    status = done
                else:
                    with self._wait_slot(caller) as allowed:
                        status = await self._wait(
                            self.book.status, caller, _ref(req), req.uid, wait if allowed else 0
                        )
        except Refused as r:
            reply = _refused_status(r)
        else:
            reply = _status_reply(status)
        await stream.send_message(reply)

    async def Delete(self, stream: Any) -> None:
        req = await stream.recv_message()
        caller = _caller(stream)
        codes = {
            Refused.NOT_FOUND: pb.DataMovementDeleteResponse.NOT_FOUND,
            Refused.ACTIVE: pb.DataMovementDeleteResponse.ACTIVE,
            Refused.INVALID: pb.DataMovementDeleteResponse.INVALID,
            Refused.FAILED: pb.DataMovementDeleteResponse.INVALID,  # the enum has no FAILED
            Refused.DENIED: pb.DataMovementDeleteResponse.INVALID,
        }
        try:
            await self._call(self.book.delete, caller, _ref(req), req.uid)
        except Refused as r:
            reply = pb.DataMovementDeleteResponse(status=codes[r.kind], message=r.message)
        else:
            reply = pb.DataMovementDeleteResponse(status=pb.DataMovementDeleteResponse.SUCCESS)
        await stream.send_message(reply)

    async def List(self, stream: Any) -> None:
        req = await stream.recv_message()
        caller = _caller(stream)
        try:
            uids = await self._call(self.book.list, caller, _ref(req))
        except Refused as r:
            if r.kind == Refused.NOT_FOUND:
                uids = []
            else:  # the reply has no status field: the reason travels as the gRPC status
                codes = {
                    Refused.DENIED: GrpcStatus.PERMISSION_DENIED,
                    Refused.INVALID: GrpcStatus.INVALID_ARGUMENT,
                }
                raise GRPCError(codes.get(r.kind, GrpcStatus.UNAVAILABLE), r.message) from None
        await stream.send_message(pb.DataMovementListResponse(uids=uids))

    async def Cancel(self, stream: Any) -> None:
        req = await stream.recv_message()
        caller = _caller(stream)
        codes = {
            Refused.NOT_FOUND: pb.DataMovementCancelResponse.NOT_FOUND,
            Refused.INVALID: pb.DataMovementCancelResponse.INVALID,
            Refused.FAILED: pb.DataMovementCancelResponse.FAILED,
            Refused.DENIED: pb.DataMovementCancelResponse.FAILED,
            Refused.ACTIVE: pb.DataMovementCancelResponse.FAILED,
        }
        try:
            await self._call(self.book.cancel, caller, _ref(req), req.uid)
        except Refused as r:
            reply = pb.DataMovementCancelResponse(status=codes[r.kind], message=r.message)
        else:
            reply = pb.DataMovementCancelResponse(status=pb.DataMovementCancelResponse.SUCCESS)
        await stream.send_message(reply)

    # --- plumbing ---------------------------------------------------------------------------------
    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.calls, fn, *args)

    async def _wait(self, fn: Callable[..., T], *args: Any) -> T:
        """A thread of its own per waiting Status (bounded per user by _wait_slot)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def run() -> None:
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the awaiting coroutine
                loop.call_soon_threadsafe(_set_exception, future, exc)
            else:
                loop.call_soon_threadsafe(_set_result, future, result)

        threading.Thread(target=run, name="nnf-dm wait", daemon=True).start()
        return await future

    @contextlib.contextmanager
    def _wait_slot(self, caller: Caller) -> Iterator[bool]:
        with self._waits_lock:
            allowed = self._waits[caller.uid] < self.max_waits_per_user
            if allowed:
                self._waits[caller.uid] += 1
        try:
            yield allowed
        finally:
            if allowed:
                with self._waits_lock:
                    self._waits[caller.uid] -= 1


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _caller(stream: Any) -> Caller:
    try:
        return stream_caller(stream)
    except (NoCredentials, OSError) as exc:
        raise GRPCError(GrpcStatus.UNAUTHENTICATED, f"nnf-dm serves only local callers: {exc}") from None


def _ref(req: Any) -> WorkflowRef:
    return WorkflowRef(req.workflow.name, req.workflow.namespace)


def _refused_status(r: Refused) -> pb.DataMovementStatusResponse:
    codes = {
        Refused.NOT_FOUND: pb.DataMovementStatusResponse.NOT_FOUND,
        Refused.INVALID: pb.DataMovementStatusResponse.INVALID,
        Refused.FAILED: pb.DataMovementStatusResponse.FAILED,
        Refused.DENIED: pb.DataMovementStatusResponse.FAILED,
        Refused.ACTIVE: pb.DataMovementStatusResponse.FAILED,
    }
    return pb.DataMovementStatusResponse(
        state=pb.DataMovementStatusResponse.UNKNOWN_STATE, status=codes[r.kind], message=r.message
    )


def _status_reply(status: JobStatus) -> pb.DataMovementStatusResponse:
    cs = status.command_status
    return pb.DataMovementStatusResponse(
        state=_STATES.get(status.state, pb.DataMovementStatusResponse.UNKNOWN_STATE),
        status=_STATUSES.get(status.status, pb.DataMovementStatusResponse.UNKNOWN_STATUS),
        message=status.message,
        commandStatus=pb.DataMovementCommandStatus(
            command=cs.command,
            progress=cs.progress,
            elapsedTime=cs.elapsed_time,
            lastMessage=cs.last_message,
            lastMessageTime=cs.last_message_time,
        ),
        startTime=status.start_time,
        endTime=status.end_time,
    )


__all__ = ["Book", "DataMoverService"]
