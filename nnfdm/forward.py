"""The kubernetes backend's engine: each request goes to the workflow's copy-offload server.

With real DWS the data moves on the Rabbit, so this node only relays: the server's address comes from
the workflow's environment (``NNF_CONTAINER_LAUNCHER``, first of ``NNF_CONTAINER_PORTS``), the token
from the workflow's token secret (``<workflow>-token``, read with the daemon's credentials, never shown
to anyone), the CA certificate from ``COPY_OFFLOAD_CERT`` or the site default. A workflow without a
copy-offload server is refused with a message that says how to get one.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from copyoffload.client import (
    DEFAULT_CERT,
    CopyOffloadClient,
    CopyOffloadConnectionError,
    CopyOffloadError,
    JobStatus,
)
from dwsbridge.backends.local.driver import DriverError, LocalDriver, ParsedDirective
from nnfdm.model import CreateArgs, Refused, WorkflowRef, WorkflowView
from nnfdm.peercred import Caller

NO_COPY_OFFLOAD = (
    "workflow {name} has no copy-offload server: the kubernetes backend moves data through it"
    " (add requires=copy-offload to the jobdw and '#DW container name=... profile=copy-offload-default')"
)


@dataclass(frozen=True)
class RemoteHandle:
    workflow: WorkflowRef
    connect: Callable[[], CopyOffloadClient]
    job: str


class ForwardEngine:
    def __init__(
        self,
        token_of: Callable[[WorkflowView], str | None],
        *,
        node: str = "localhost",
        cert: str | None = None,
    ) -> None:
        self._token_of = token_of
        self.node = node
        self.cert = cert
        self._lock = threading.Lock()
        self._clients: dict[WorkflowRef, CopyOffloadClient] = {}

    def start(self, workflow: WorkflowView, caller: Caller, args: CreateArgs, request: str) -> RemoteHandle:
        env = workflow.env
        token = self._token_of(workflow)
        if not env.get("NNF_CONTAINER_PORTS") or not env.get("NNF_CONTAINER_LAUNCHER") or not token:
            raise Refused(Refused.FAILED, NO_COPY_OFFLOAD.format(name=workflow.name))
        try:
            source = LocalDriver.resolve_path(args.source, env, _directive("source"))
            dest = LocalDriver.resolve_path(args.destination, env, _directive("destination"))
        except DriverError as exc:
            raise Refused(Refused.INVALID, str(exc)) from None
        ref = WorkflowRef(workflow.name, workflow.namespace)
        cert = env.get("COPY_OFFLOAD_CERT") or self.cert or DEFAULT_CERT
        environ = {**env, "DW_WORKFLOW_NAME": workflow.name, "DW_WORKFLOW_NAMESPACE": workflow.namespace}

        def connect(timeout: float = 30.0) -> CopyOffloadClient:
            return CopyOffloadClient(token=token, cert=cert, environ=environ, timeout=timeout)

        client = self._client(ref, connect)
        try:
            job = client.copy(
                source,
                dest,
                profile=args.profile,
                slots=args.slots,
                max_slots=args.max_slots,
                dry_run=args.dryrun,
                compute_name=self.node,
            )
        except CopyOffloadError as exc:
            raise Refused(Refused.FAILED, f"copy-offload server refused the request: {exc}") from None
        except (CopyOffloadConnectionError, OSError) as exc:
            raise Refused(
                Refused.FAILED, f"copy-offload server of {workflow.name} unreachable: {exc}"
            ) from None
        return RemoteHandle(ref, connect, job)

    def status(self, handle: RemoteHandle, max_wait: float | None) -> JobStatus:
        wait = -1 if max_wait is None else math.ceil(max_wait)
        try:
            if wait == 0:
                return self._client(handle.workflow, handle.connect).status(handle.job, 0)
            with handle.connect() as client:  # its own connection: a long wait blocks no other call
                return client.status(handle.job, wait)
        except CopyOffloadError as exc:
            if exc.code == 404:
                return JobStatus(state="completed", status="unknown status", message="request not found")
            raise Refused(Refused.FAILED, f"copy-offload server: {exc}") from None
        except (CopyOffloadConnectionError, OSError) as exc:
            raise Refused(Refused.FAILED, f"copy-offload server unreachable: {exc}") from None

    def cancel(self, handle: RemoteHandle) -> None:
        try:
            self._client(handle.workflow, handle.connect).cancel(handle.job)
        except CopyOffloadError as exc:
            if exc.code != 404:
                raise Refused(Refused.FAILED, f"copy-offload server: {exc}") from None
        except (CopyOffloadConnectionError, OSError) as exc:
            raise Refused(Refused.FAILED, f"copy-offload server unreachable: {exc}") from None

    def release(self, workflow: WorkflowRef, handles: list[Any]) -> None:
        for handle in handles:
            with contextlib.suppress(Refused):  # the server may have gone with its workflow
                self.cancel(handle)
        with self._lock:
            client = self._clients.pop(workflow, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close()

    def _client(self, ref: WorkflowRef, connect: Callable[[], CopyOffloadClient]) -> CopyOffloadClient:
        with self._lock:
            client = self._clients.get(ref)
            if client is None:
                client = self._clients[ref] = connect()
            return client


def _directive(text: str) -> ParsedDirective:
    return ParsedDirective(-1, text, "nnf-dm", {})
