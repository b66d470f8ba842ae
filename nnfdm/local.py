"""The local backend's engine: requests run on this node with our mover, as the caller.

Paths are resolved as the local driver resolves copy_in/copy_out (``$DW_JOB_<name>/...``), ``profile``
names one of the site's ``data_movement_profiles``, and each copy is a copy-offload ``JobTable`` job
(one table per workflow and caller ids), so progress, last messages, cancellation and waiting without
polling are exactly the copy-offload server's. Every copy's process is registered with the workflow
in the local store, so a teardown (hurry or not) kills it at once, like any copy_in/copy_out.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

from copyoffload.client import JobStatus
from copyoffload.jobs import (
    CopyAborted,
    CopyFailed,
    CopyRequest,
    JobTable,
    Profile,
    RequestRejected,
    _describe_result,
)
from dwsbridge.backends.local.driver import DriverError, LocalDriver, ParsedDirective
from dwsbridge.backends.local.store import Store
from dwsbridge.config import Config
from nnfdm.model import CreateArgs, Refused, WorkflowRef, WorkflowView
from nnfdm.peercred import Caller

log = logging.getLogger("nnfdm")

COPY_KIND = "copy"  # the local driver's record kind for copies: teardown SIGKILLs them


@dataclasses.dataclass(frozen=True)
class LocalHandle:
    table: JobTable
    job: str


class LocalEngine:
    def __init__(self, config: Config, *, node: str = "localhost", max_running: int = 4) -> None:
        self.config = config
        self.node = node
        self.max_running = max_running
        # resolve_path and copy_options read only the config: this driver's store is never used
        self._driver = LocalDriver(config, Store(config.root))
        self._lock = threading.Lock()
        self._tables: dict[tuple[WorkflowRef, int, int], JobTable] = {}

    def start(self, workflow: WorkflowView, caller: Caller, args: CreateArgs, request: str) -> LocalHandle:
        driver = self._driver
        env = {k: str(v) for k, v in workflow.env.items()}
        try:
            source = driver.resolve_path(args.source, env, _as_directive("source"))
            dest = driver.resolve_path(args.destination, env, _as_directive("destination"))
            options = driver.copy_options(_as_directive("request", profile=args.profile))
        except DriverError as exc:
            raise Refused(Refused.INVALID, str(exc)) from None
        copy = CopyRequest(
            compute_name=self.node,
            source_path=source,
            destination_path=dest,
            dryrun=args.dryrun,
            dcp_options=args.dcp_options,
            log_stdout=args.log_stdout,
            store_stdout=args.store_stdout,
            # 0 is proto3's "not set": upstream then leaves slots out of mpirun's hostfile, i.e. the
            # default parallelism, so 0 defers to the profile here (copy-offload's 0 means serial)
            slots=-1 if args.slots == 0 else args.slots,
            max_slots=-1 if args.max_slots == 0 else args.max_slots,
            dm_profile=args.profile,
            mpirun_options=args.mpirun_options,
            workflow_name=workflow.name,
            workflow_namespace=workflow.namespace,
        )
        table = self._table(workflow, caller)
        try:
            job = table.submit(copy, Profile(args.profile or "default", workers=options.workers))
        except RequestRejected as exc:
            raise Refused(Refused.FAILED, str(exc)) from None
        return LocalHandle(table, job.name)

    def status(self, handle: LocalHandle, max_wait: float | None) -> JobStatus:
        wire = handle.table.status(handle.job, max_wait)
        if wire is None:  # evicted: the table keeps its latest 1,000 finished requests
            return JobStatus(state="completed", status="unknown status", message="request forgotten")
        return JobStatus.from_wire(wire)

    def cancel(self, handle: LocalHandle) -> None:
        handle.table.cancel(handle.job)

    def release(self, workflow: WorkflowRef, handles: list[Any]) -> None:
        with self._lock:
            tables = [t for key, t in self._tables.items() if key[0] == workflow]
            for key in [k for k in self._tables if k[0] == workflow]:
                del self._tables[key]
        for table in tables:
            table.close(cancel=True, timeout=0)

    def close(self) -> None:
        with self._lock:
            tables = list(self._tables.values())
            self._tables.clear()
        for table in tables:
            table.close(cancel=True, timeout=10)

    # --- plumbing ---------------------------------------------------------------------------------
    def _table(self, workflow: WorkflowView, caller: Caller) -> JobTable:
        """One table per workflow and caller ids: the copy runs as the caller's uid and gid."""
        key = (WorkflowRef(workflow.name, workflow.namespace), caller.uid, caller.gid)
        with self._lock:
            table = self._tables.get(key)
            if table is None:
                copier = _Copier(self.config, workflow.obj)
                table = JobTable(
                    node=self.node,
                    copier=copier,
                    uid=caller.uid,
                    gid=caller.gid,
                    max_running=self.max_running,
                )
                self._tables[key] = table
            return table


class _Copier:
    """Our mover as the caller, with the profile's options; its process registered for teardown."""

    def __init__(self, config: Config, obj: dict[str, Any]) -> None:
        self.config = config
        self.obj = obj

    def __call__(
        self,
        request: CopyRequest,
        *,
        profile: Profile,
        workers: int,
        uid: int,
        gid: int,
        progress: Callable[[Any], None],
        cancel: threading.Event,
        on_child: Callable[[int], None],
    ) -> str:
        from copyoffload import mover

        name = request.workflow_name
        store = Store(self.config.root)  # this thread's own connection (sqlite3 objects are per thread)
        driver = LocalDriver(self.config, store)
        children: list[int] = []

        def register(pid: int) -> None:
            children.append(pid)
            on_child(pid)
            driver.track_process(self.obj, COPY_KIND, pid, {"by": "nnf-dm"})

        def report(p: Any) -> None:
            progress(p)
            if request.log_stdout:
                log.info("workflow=%s copy %r: %.1f%%", name, request.source_path, p.percent)

        try:
            options = dataclasses.replace(
                driver.copy_options(_as_directive("request", profile=request.dm_profile)), workers=workers
            )
            result = mover.copy_as_user(
                request.source_path,
                request.destination_path,
                uid=uid,
                gid=gid,
                options=options,
                progress=report,
                cancel=cancel,
                on_child=register,
            )
        except mover.CopyCancelled:
            log.info("workflow=%s copy %r cancelled", name, request.source_path)
            raise CopyAborted() from None
        except (mover.CopyError, DriverError) as exc:
            log.info("workflow=%s copy %r failed: %s", name, request.source_path, exc)
            raise CopyFailed(str(exc)) from None
        finally:
            for pid in children:
                store.remove_process(name, COPY_KIND, pid)
            store.close()
        message = _describe_result(result)
        log.info(
            "workflow=%s copy %r -> %r: %s", name, request.source_path, request.destination_path, message
        )
        return message


def _as_directive(text: str, **args: str) -> ParsedDirective:
    """A stand-in directive, so the driver's messages name what the caller sent (``source: ...``)."""
    return ParsedDirective(-1, text, "nnf-dm", dict(args))
