"""Reading the caller's workflow from the configured backend (local store or DWS), from any thread."""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from dwsbridge.backends.base import Backend
from dwsbridge.config import Config
from nnfdm.model import Refused, WorkflowRef, WorkflowView

log = logging.getLogger("nnfdm")
# Kubernetes object names (DNS-1123 subdomain): anything else names no workflow, and never reaches
# the store or the API server as a path
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class WorkflowReader:
    """``reader(ref)`` -> WorkflowView or None. One backend per thread (the local store's sqlite
    connection and the Kubernetes client are not shared between threads)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._local = threading.local()

    def backend(self) -> Backend:
        backend = getattr(self._local, "backend", None)
        if backend is None:
            from dwsbridge.lifecycle import make_backend

            backend = self._local.backend = make_backend(self.config)
        return backend

    def __call__(self, ref: WorkflowRef) -> WorkflowView | None:
        if not _NAME.match(ref.name) or not _NAME.match(ref.namespace):
            return None
        try:
            obj = self.backend().find(ref.name)
        except Exception as exc:  # the store or DWS is unreachable: the caller gets a reason, not a crash
            log.warning("workflow=%s cannot be read: %s", ref.name, exc)
            raise Refused(Refused.FAILED, f"cannot read workflow {ref.name}: {exc}") from None
        if obj is None:
            return None
        meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
        namespace = str(meta.get("namespace") or self.config.namespace)
        if namespace != ref.namespace:
            return None
        return WorkflowView(
            name=str(meta.get("name", ref.name)),
            namespace=namespace,
            uid=int(spec.get("userID", -1)),
            gid=int(spec.get("groupID", -1)),
            desired_state=str(spec.get("desiredState", "")),
            state=str(status.get("state", "")),
            status=str(status.get("status", "")),
            env={str(k): str(v) for k, v in (status.get("env") or {}).items()},
            obj=obj,
        )

    def token(self, workflow: WorkflowView) -> str | None:
        """The workflow's copy-offload token (DWS's ``<workflow>-token`` secret)."""
        obj: dict[str, Any] = dict(workflow.obj)
        return self.backend().read_token(obj)
