"""The Python client library for nnf-dm (grpcio stubs generated from ``api/datamovement.proto``).

The workflow is taken from ``DW_WORKFLOW_NAME`` / ``DW_WORKFLOW_NAMESPACE`` (as upstream's clients do)
unless given; the socket from ``NNF_DM_SOCKET`` or ``/var/run/nnf-dm.sock``. Example::

    from nnfdm.client import DataMovementClient
    with DataMovementClient() as dm:
        uid = dm.create("$DW_JOB_scratch/out", "/lus/me/out")
        status = dm.wait(uid)                  # server-side waits, no polling
        print(status.state, status.status, status.message)
        dm.delete(uid)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nnfdm import DEFAULT_SOCKET


class ClientError(Exception):
    """The daemon answered with a failure (``status`` is the wire's enum name) or could not be reached."""

    def __init__(self, message: str, status: str = "") -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Status:
    """DataMovementStatusResponse with its enums as names (``RUNNING``, ``SUCCESS``, ...)."""

    state: str
    status: str
    message: str = ""
    command: str = ""
    progress: int = 0
    elapsed_time: str = ""
    last_message: str = ""
    last_message_time: str = ""
    start_time: str = ""
    end_time: str = ""

    @property
    def finished(self) -> bool:
        return self.state == "COMPLETED"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def workflow_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    env = os.environ if environ is None else environ
    return env.get("DW_WORKFLOW_NAME", ""), env.get("DW_WORKFLOW_NAMESPACE", "default")


class DataMovementClient:
    def __init__(
        self,
        socket: str | None = None,
        *,
        workflow: str | None = None,
        namespace: str | None = None,
        timeout: float = 30.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        import grpc

        from nnfdm.api import datamovement_pb2_grpc

        env = os.environ if environ is None else environ
        name, ns = workflow_from_env(env)
        self.workflow = workflow if workflow is not None else name
        self.namespace = namespace if namespace is not None else ns
        self.socket = socket or env.get("NNF_DM_SOCKET") or DEFAULT_SOCKET
        self.timeout = timeout
        self._channel = grpc.insecure_channel("unix://" + os.path.abspath(self.socket))
        self._stub = datamovement_pb2_grpc.DataMoverStub(self._channel)

    def __enter__(self) -> DataMovementClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # --- the API ----------------------------------------------------------------------------------
    def version(self) -> tuple[str, list[str]]:
        from google.protobuf import empty_pb2

        reply = self._rpc("Version", empty_pb2.Empty())
        return reply.version, list(reply.apiVersions)

    def create(
        self,
        source: str,
        destination: str,
        *,
        dryrun: bool = False,
        profile: str = "",
        slots: int = -1,
        max_slots: int = -1,
        log_stdout: bool = False,
        store_stdout: bool = False,
        dcp_options: str = "",
        mpirun_options: str = "",
    ) -> str:
        """Start a request; return its uid. Raises ClientError (status FAILED or INVALID)."""
        pb = self._pb()
        reply = self._rpc(
            "Create",
            pb.DataMovementCreateRequest(
                workflow=self._workflow(),
                source=source,
                destination=destination,
                dryrun=dryrun,
                dcpOptions=dcp_options,
                logStdout=log_stdout,
                storeStdout=store_stdout,
                slots=slots,
                maxSlots=max_slots,
                profile=profile,
                mpirunOptions=mpirun_options,
            ),
        )
        if reply.status != pb.DataMovementCreateResponse.SUCCESS:
            name = pb.DataMovementCreateResponse.Status.Name(reply.status)
            raise ClientError(reply.message or name, name)
        return str(reply.uid)

    def status(self, uid: str, max_wait: int = 0) -> Status:
        """The request's status; the daemon waits up to ``max_wait`` s (negative: until done)."""
        pb = self._pb()
        timeout = None if max_wait < 0 else self.timeout + max_wait
        reply = self._rpc(
            "Status",
            pb.DataMovementStatusRequest(workflow=self._workflow(), uid=uid, maxWaitTime=max_wait),
            timeout=timeout,
        )
        cls = pb.DataMovementStatusResponse
        status = Status(
            state=cls.State.Name(reply.state),
            status=cls.Status.Name(reply.status),
            message=reply.message,
            command=reply.commandStatus.command,
            progress=reply.commandStatus.progress,
            elapsed_time=reply.commandStatus.elapsedTime,
            last_message=reply.commandStatus.lastMessage,
            last_message_time=reply.commandStatus.lastMessageTime,
            start_time=reply.startTime,
            end_time=reply.endTime,
        )
        if status.status in ("NOT_FOUND", "INVALID") and status.state == "UNKNOWN_STATE":
            raise ClientError(status.message or status.status, status.status)
        return status

    def wait(
        self, uid: str, *, timeout: float | None = None, on_progress: Callable[[Status], None] | None = None
    ) -> Status:
        """Wait until the request finishes (or ``timeout`` s pass); ``on_progress`` sees each update."""
        import math
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            # with a display: one update a second (the daemon still waits, no polling)
            step = 1 if on_progress is not None else -1 if remaining is None else max(1, math.ceil(remaining))
            status = self.status(uid, step)
            if on_progress is not None:
                on_progress(status)
            if status.finished or (deadline is not None and time.monotonic() >= deadline):
                return status

    def cancel(self, uid: str) -> None:
        pb = self._pb()
        reply = self._rpc("Cancel", pb.DataMovementCancelRequest(workflow=self._workflow(), uid=uid))
        if reply.status != pb.DataMovementCancelResponse.SUCCESS:
            name = pb.DataMovementCancelResponse.Status.Name(reply.status)
            raise ClientError(reply.message or name, name)

    def delete(self, uid: str) -> None:
        """Forget a finished request (ClientError with status ACTIVE while it still runs)."""
        pb = self._pb()
        reply = self._rpc("Delete", pb.DataMovementDeleteRequest(workflow=self._workflow(), uid=uid))
        if reply.status != pb.DataMovementDeleteResponse.SUCCESS:
            name = pb.DataMovementDeleteResponse.Status.Name(reply.status)
            raise ClientError(reply.message or name, name)

    def list(self) -> list[str]:
        pb = self._pb()
        return list(self._rpc("List", pb.DataMovementListRequest(workflow=self._workflow())).uids)

    # --- plumbing ---------------------------------------------------------------------------------
    @staticmethod
    def _pb() -> Any:
        from nnfdm.api import datamovement_pb2

        return datamovement_pb2

    def _workflow(self) -> Any:
        return self._pb().DataMovementWorkflow(name=self.workflow, namespace=self.namespace)

    def _rpc(self, method: str, request: Any, timeout: float | None = -1.0) -> Any:
        import grpc

        try:
            return getattr(self._stub, method)(request, timeout=self.timeout if timeout == -1.0 else timeout)
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            details = exc.details() if hasattr(exc, "details") else str(exc)
            if code == "UNAVAILABLE":
                details = f"cannot reach nnf-dm at {self.socket}: {details} (is the daemon running?)"
            raise ClientError(details or code, code) from None
