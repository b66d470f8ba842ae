"""The local backend: Workflows in SQLite, each state's work done by LocalDriver in the caller.

There is no controller daemon: `update_desired_state` records the new state and runs its driver
inline, under a lease naming this process. A caller killed mid-state leaves the lease dead; the next
caller sees that and can run the state again or tear down.
"""

from __future__ import annotations

import builtins
import datetime
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from dwsbridge.backends.base import Pool
from dwsbridge.backends.local.driver import DriverError, LocalDriver
from dwsbridge.backends.local.store import Store
from dwsbridge.config import Config
from dwsbridge.errors import AdmissionError, Cancelled, WorkflowNotFound, WorkflowTimeout
from dwsbridge.workflow import (
    SETUP,
    TEARDOWN,
    advanced,
    check_create,
    check_update,
    is_failed,
    is_state_complete,
)

log = logging.getLogger("dwsbridge.local")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LocalBackend:
    name = "local"
    env_known_at = SETUP  # the driver fills status.env at Setup
    keeps_failed_teardown = True  # a workflow is the only record of its storage: kept until it is gone

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Store(config.root)
        self.driver = LocalDriver(config, self.store)

    def close(self) -> None:
        """Close the database connection (a long-lived caller, the bridge agent, makes one per request)."""
        self.store.close()

    # --- create / read ---------------------------------------------------------------------
    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        check_create(obj, self._admit_directives)
        obj = dict(obj)
        obj["metadata"] = dict(obj["metadata"])
        obj["metadata"]["creationTimestamp"] = _now()
        obj["metadata"]["uid"] = os.urandom(8).hex()
        name = obj["metadata"]["name"]
        obj["status"] = {
            "state": obj["spec"]["desiredState"],
            "ready": False,
            "status": "DriverWait",
            "message": "",
            "env": {
                "DW_WORKFLOW_NAME": name,
                "DW_WORKFLOW_NAMESPACE": obj["metadata"].get("namespace", "default"),
            },
            "desiredStateChange": _now(),
        }
        with self.store.transaction() as conn:
            if not self.store.insert_workflow(conn, obj):
                raise AdmissionError(f'workflows.dataworkflowservices.github.io "{name}" already exists')
            self.store.set_lease(conn, name, os.getpid())
        return self._reconcile(name, obj["spec"]["desiredState"])

    def _admit_directives(self, texts: list[str]) -> None:
        from dwsbridge.directives import RuleSet, check_job
        from dwsbridge.errors import DirectiveError

        try:
            errors = check_job(
                texts,
                ruleset=RuleSet.load(self.config.ruleset),
                limits=self.config.directive_limits,
                persistent_fs=self._persistent_fs,
                backend="local",
            )[1]
        except DirectiveError as exc:
            errors = [exc]
        if errors:
            raise AdmissionError("; ".join(e.render() for e in errors))

    def _persistent_fs(self, name: str) -> str | None:
        """The filesystem type of persistent instance `name` (for the container rules), None if absent."""
        record = self.store.get_persistent(name)
        return None if record is None else str(record["type"])

    def get(self, name: str) -> dict[str, Any]:
        obj = self.find(name)
        if obj is None:
            raise WorkflowNotFound(f"workflow {name} not found")
        return obj

    def find(self, name: str) -> dict[str, Any] | None:
        return self.store.read_workflow(None, name)

    def list(self) -> builtins.list[dict[str, Any]]:
        return self.store.list_workflows()

    # --- state changes ---------------------------------------------------------------------
    def update_desired_state(self, name: str, state: str, *, hurry: bool = False) -> dict[str, Any]:
        with self.store.transaction() as conn:
            old = self.store.read_workflow(conn, name)
            if old is None:
                raise WorkflowNotFound(f"workflow {name} not found")
            new = advanced(old, state, hurry=hurry)
            check_update(old, new)
            retry = state == TEARDOWN == old["spec"]["desiredState"] and is_failed(old)
            if state != old["spec"]["desiredState"] or retry:
                completed = list(old["status"].get("completedStates") or [])
                if not retry and is_state_complete(old, old["spec"]["desiredState"]):
                    completed.append(old["spec"]["desiredState"])
                new["status"].update(
                    state=state,
                    ready=False,
                    status="DriverWait",
                    message="",
                    desiredStateChange=_now(),
                    completedStates=completed,
                )
            self.store.write_workflow(conn, new)
            self.store.set_lease(conn, name, os.getpid())
        log.info("workflow=%s job=%s desiredState=%s hurry=%s", name, new["spec"]["jobID"], state, hurry)
        return self._reconcile(name, state)

    def resume(self, name: str) -> dict[str, Any] | None:
        """Run the current state again when the process that ran it died before finishing."""
        with self.store.transaction() as conn:
            obj = self.store.read_workflow(conn, name)
            if obj is None:
                return None
            state = obj["spec"]["desiredState"]
            if is_state_complete(obj, state) or is_failed(obj):
                return obj
            if self.store.lease_alive(conn, name):
                return None
            self.store.set_lease(conn, name, os.getpid())
        log.info("workflow=%s resuming %s (its driver process died)", name, state)
        return self._reconcile(name, state)

    def _reconcile(self, name: str, state: str) -> dict[str, Any]:
        obj = self.get(name)
        try:
            updates = self.driver.run(obj, state)
            outcome: dict[str, Any] = {"ready": True, "status": "Completed", "message": ""}
        except DriverError as exc:
            updates, outcome = {}, {"ready": False, "status": "Error", "message": str(exc)}
            log.error("workflow=%s job=%s %s failed: %s", name, obj["spec"]["jobID"], state, exc)
        except Exception as exc:  # an unexpected fault still ends as a visible Error, not a hang
            log.exception("workflow=%s %s crashed", name, state)
            updates, outcome = {}, {"ready": False, "status": "Error", "message": f"internal error: {exc!r}"}
        with self.store.transaction() as conn:
            current = self.store.read_workflow(conn, name)
            if current is not None and current["spec"]["desiredState"] == state:
                status = current["status"]
                status.update(updates)
                status.update(outcome)
                status["readyChange"] = _now()
                self.store.write_workflow(conn, current)
                self.store.set_lease(conn, name, None)
                return current
        # Someone moved on (a hurry teardown) while this state ran: their result stands.
        if state != TEARDOWN and (current is None or is_state_complete(current, TEARDOWN)):
            self._undo_overtaken(obj, state)
        if current is None:
            raise WorkflowNotFound(f"workflow {name} not found")
        return current

    def _undo_overtaken(self, obj: dict[str, Any], state: str) -> None:
        """A teardown finished while `state` still ran: what the state made after the teardown had
        cleaned up (storage directories, token secrets, a server) would outlive the workflow."""
        name = obj["metadata"]["name"]
        log.warning("workflow=%s was torn down while %s ran: removing what %s left", name, state, state)
        try:
            self.driver.teardown(obj)
        except Exception as exc:  # the teardown that overtook us already reported its own result
            log.error("workflow=%s cleaning up after the overtaken %s: %s", name, state, exc)

    def wait_for(
        self, name: str, state: str, *, timeout: float, cancel: threading.Event | None = None
    ) -> dict[str, Any]:
        """States run inline, so this only waits when another live process runs the state."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            obj = self.get(name)
            if is_state_complete(obj, state) or is_failed(obj):
                return obj
            if obj["spec"]["desiredState"] != state:
                return obj
            resumed = self.resume(name)
            if resumed is not None:
                return resumed
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"stopped waiting for workflow {name} to reach {state}")
            if time.monotonic() >= deadline:
                raise WorkflowTimeout(name, state, timeout)
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def delete(self, name: str) -> None:
        with self.store.transaction() as conn:
            self.store.delete_workflow(conn, name)
        log.info("workflow=%s deleted", name)

    # --- extras ----------------------------------------------------------------------------
    def read_token(self, obj: dict[str, Any]) -> str | None:
        ref = (obj.get("status") or {}).get("workflowToken") or {}
        if not ref.get("secretName"):
            return None
        secret = self.store.get_secret(ref["secretName"])
        return secret.get("token") if secret else None

    def set_computes(self, name: str, hosts: builtins.list[str]) -> None:
        with self.store.transaction() as conn:
            obj = self.store.read_workflow(conn, name)
            if obj is None:
                raise WorkflowNotFound(f"workflow {name} not found")
            obj["status"]["computes"] = {"name": name, "data": [{"name": h} for h in hosts]}
            self.store.write_workflow(conn, obj)

    def pools(self) -> builtins.list[Pool]:
        """The pool, with `free` less what persistent instances hold (Slurm tracks only its jobs).
        This runs inside slurmctld: it waits at most a second for the database and otherwise answers
        with the last answer it gave (kept in <root>/pools.json)."""
        quantity = self.driver.pool_bytes()
        cache = self.config.root / "pools.json"
        try:
            with self.store.patience(1.0):
                usage = self.store.persistent_usage()
        except sqlite3.OperationalError as exc:
            log.warning("pools: the state database is busy (%s); answering from %s", exc, cache)
            return [self._pool(quantity, _read_cached_persistent(cache))]
        held = sum(capacity for _count, capacity in usage.values())
        _write_cached_persistent(cache, held)
        return [self._pool(quantity, held)]

    def _pool(self, quantity: int, persistent: int | None) -> Pool:
        free = None if persistent is None else max(quantity - persistent, 0)
        return Pool(self.config.pool_name, int(quantity), self.config.pool_granularity, free)

    def persistent_usage(self) -> dict[int, tuple[int, int]]:
        """uid -> (instances, bytes) of persistent storage (for `dwsbridge persistent`)."""
        return self.store.persistent_usage()

    def persistent_instances(self) -> builtins.list[dict[str, Any]]:
        return self.store.list_persistent()

    def sweep_storage(self) -> builtins.list[str]:
        """Remove storage no workflow or instance owns (the bridge agent runs this periodically)."""
        return [str(p) for p in self.driver.sweep_storage()]


def _read_cached_persistent(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["persistent_bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cached_persistent(path: Path, held: int) -> None:
    """Atomically, so a concurrent reader sees the old or the new answer, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps({"persistent_bytes": held, "at": time.time()}))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("pools: cannot write %s: %s", path, exc)
