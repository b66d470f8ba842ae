"""The interface both backends implement; the lifecycle is written once against it."""

from __future__ import annotations

import builtins
import threading
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Pool:
    """A burst-buffer pool as Slurm's slurm_bb_pools reports it (bytes)."""

    name: str
    quantity: int
    granularity: int = 1
    free: int | None = None  # what Slurm may still give its jobs (quantity less what outlives jobs)


class Backend(Protocol):
    """Where Workflows live. `update_desired_state` is the only way a state changes."""

    name: str
    # The first state after which status.env (with the token) is final: "Setup" when the backend
    # fills it at Setup (local), "PreRun" for DWS, whose driver sets DW_JOB_* during PreRun.
    env_known_at: str

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create the Workflow (admission rules apply); returns the stored object."""
        ...

    def get(self, name: str) -> dict[str, Any]:
        """The Workflow, or raise WorkflowNotFound."""
        ...

    def find(self, name: str) -> dict[str, Any] | None:
        """The Workflow, or None."""
        ...

    def update_desired_state(self, name: str, state: str, *, hurry: bool = False) -> dict[str, Any]:
        """Patch spec.desiredState (and spec.hurry for Teardown) in one update."""
        ...

    def wait_for(
        self, name: str, state: str, *, timeout: float, cancel: threading.Event | None = None
    ) -> dict[str, Any]:
        """Return the Workflow once `state` is complete or status is Error (or TransientCondition
        outlived the configured limit); raise WorkflowTimeout / Cancelled otherwise."""
        ...

    def delete(self, name: str) -> None:
        """Remove our finalizer and delete; a missing Workflow is not an error."""
        ...

    def read_token(self, obj: dict[str, Any]) -> str | None:
        """The JWT from the secret status.workflowToken names, or None when there is none."""
        ...

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every Workflow this bridge manages."""
        ...

    def set_computes(self, name: str, hosts: builtins.list[str]) -> None:
        """Fill the Computes object with the job's nodes (before PreRun)."""
        ...

    def pools(self) -> builtins.list[Pool]:
        """Capacity to report to the WLM."""
        ...
