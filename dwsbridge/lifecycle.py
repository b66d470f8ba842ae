"""The one place that walks a Workflow through its states, for any WLM and any backend."""

from __future__ import annotations

import builtins
import datetime
import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dwsbridge.backends.base import Backend, Pool
from dwsbridge.config import Config, load_config
from dwsbridge.errors import WorkflowFailed, WorkflowNotFound
from dwsbridge.workflow import (
    PROPOSAL,
    STATES,
    TEARDOWN,
    build_workflow,
    is_failed,
    is_state_complete,
    workflow_name,
)

log = logging.getLogger("dwsbridge.lifecycle")


@dataclass(frozen=True)
class WorkflowStatus:
    """What `scontrol show bbstat` and `dwsbridge status` show about one workflow."""

    name: str
    wlm: str
    job_id: str
    uid: int
    gid: int
    desired: str
    current: str
    ready: bool
    status: str
    message: str
    hurry: bool
    age: float  # seconds since creation

    @classmethod
    def of(cls, obj: dict[str, Any]) -> WorkflowStatus:
        spec, status, meta = obj["spec"], obj.get("status") or {}, obj["metadata"]
        return cls(
            name=meta["name"],
            wlm=str(spec.get("wlmID", "")),
            job_id=str(spec.get("jobID", "")),
            uid=int(spec.get("userID", -1)),
            gid=int(spec.get("groupID", -1)),
            desired=spec.get("desiredState", ""),
            current=status.get("state", ""),
            ready=bool(status.get("ready")),
            status=status.get("status", ""),
            message=status.get("message", ""),
            hurry=bool(spec.get("hurry")),
            age=_age(meta.get("creationTimestamp")),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _age(timestamp: str | None) -> float:
    if not timestamp:
        return 0.0
    created = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return max(0.0, (datetime.datetime.now(datetime.UTC) - created).total_seconds())


def make_backend(config: Config) -> Backend:
    """The configured backend; the Kubernetes client is imported only when it is the one chosen."""
    if config.backend == "kubernetes":
        from dwsbridge.backends.kubernetes import KubernetesBackend

        return KubernetesBackend(config)
    from dwsbridge.backends.local.backend import LocalBackend

    return LocalBackend(config)


class Lifecycle:
    def __init__(self, config: Config | None = None, backend: Backend | None = None) -> None:
        self.config = config or load_config()
        self._backend = backend

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = make_backend(self.config)
        return self._backend

    def close(self) -> None:
        """Release what the backend holds, if it was made (the local store's database connection)."""
        close = getattr(self._backend, "close", None)
        if close is not None:
            close()

    def create(self, *, wlm: str, job_id: int | str, uid: int, gid: int, directives: Sequence[str]) -> str:
        """Create the job's Workflow and see Proposal through; on failure nothing is left behind."""
        obj = build_workflow(
            wlm=wlm,
            job_id=job_id,
            uid=uid,
            gid=gid,
            directives=list(directives),
            namespace=self.config.namespace,
        )
        name = obj["metadata"]["name"]
        self.backend.create(obj)
        log.info("workflow=%s job=%s created for uid=%s gid=%s", name, job_id, uid, gid)
        try:
            self.advance_to(name, PROPOSAL)
        except BaseException:
            self.teardown(name, hurry=True, quiet=True)
            raise
        return name

    def advance_to(
        self, name: str, state: str, *, timeout: float | None = None, cancel: threading.Event | None = None
    ) -> dict[str, Any]:
        """Move to `state` (if not there) and wait until it is complete; raise on Error or timeout."""
        obj = self.backend.get(name)
        desired = obj["spec"]["desiredState"]
        if desired != state:
            obj = self.backend.update_desired_state(name, state)
        if not is_state_complete(obj, state):
            obj = self.backend.wait_for(
                name, state, timeout=timeout or self.config.state_timeout, cancel=cancel
            )
        status = obj.get("status") or {}
        if is_failed(obj) or not is_state_complete(obj, state):
            message = status.get("message") or f"state {status.get('state')} is {status.get('status')}"
            log.error("workflow=%s %s failed: %s", name, state, message)
            raise WorkflowFailed(name, state, message)
        log.info("workflow=%s job=%s state=%s complete", name, obj["spec"]["jobID"], state)
        return obj

    def walk(self, name: str, states: Sequence[str], **kwargs: Any) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for state in states:
            obj = self.advance_to(name, state, **kwargs)
        return obj

    @property
    def env_known_at(self) -> str:
        """The state after which `environment()` is final on this backend (no cluster call)."""
        return self.backend.env_known_at

    def environment(self, name: str) -> dict[str, str]:
        """status.env, plus DW_WORKFLOW_TOKEN when the workflow has a token."""
        obj = self.backend.get(name)
        env = {str(k): str(v) for k, v in ((obj.get("status") or {}).get("env") or {}).items()}
        token = self.backend.read_token(obj)
        if token:
            env["DW_WORKFLOW_TOKEN"] = token
        return env

    def status(self, name: str) -> WorkflowStatus:
        return WorkflowStatus.of(self.backend.get(name))

    def list(self) -> builtins.list[WorkflowStatus]:
        return [WorkflowStatus.of(obj) for obj in self.backend.list()]

    def exists(self, name: str) -> bool:
        return self.backend.find(name) is not None

    def set_computes(self, name: str, hosts: builtins.list[str]) -> None:
        self.backend.set_computes(name, hosts)

    def pools(self) -> builtins.list[Pool]:
        return self.backend.pools()

    def teardown(self, name: str, *, hurry: bool = False, quiet: bool = False) -> None:
        """Walk to Teardown (with hurry if asked) and delete. Idempotent. On a backend that
        `keeps_failed_teardown` (local: the workflow is the only record of its storage), a Teardown
        ending in Error leaves the workflow in Teardown, never forgotten while its storage remains,
        and calling this again retries it; elsewhere (DWS keeps its own storage records) the workflow
        is deleted regardless. The error is raised (unless `quiet`) so the WLM can report it."""
        obj = self.backend.find(name)
        if obj is None:
            return
        keep = bool(getattr(self.backend, "keeps_failed_teardown", False))
        failure: WorkflowFailed | None = None
        try:
            spec = obj["spec"]
            if spec["desiredState"] != TEARDOWN or (hurry and not spec.get("hurry")) or is_failed(obj):
                obj = self.backend.update_desired_state(name, TEARDOWN, hurry=hurry)
            if not is_state_complete(obj, TEARDOWN):
                obj = self.backend.wait_for(name, TEARDOWN, timeout=self.config.state_timeout)
            if is_failed(obj) or not is_state_complete(obj, TEARDOWN):
                message = (obj.get("status") or {}).get("message", "") or "teardown did not complete"
                failure = WorkflowFailed(name, TEARDOWN, message)
        except WorkflowNotFound:
            return
        except BaseException:
            if not keep:
                self.backend.delete(name)
            raise
        if failure is not None and keep:
            log.error(
                "workflow=%s job=%s teardown failed; kept for a retry: %s",
                name,
                obj["spec"]["jobID"],
                failure,
            )
            if not quiet:
                raise failure
            return
        self.backend.delete(name)
        log.info("workflow=%s teardown complete hurry=%s", name, hurry)
        if failure is not None and not quiet:
            raise failure


__all__ = ["STATES", "Lifecycle", "WorkflowStatus", "make_backend", "workflow_name"]
