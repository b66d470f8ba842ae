"""What the local backend does in each state, for real, on this machine (DESIGN Part 6).

User data is only ever touched as the job's user (the data mover drops privileges); this module, as
root, only makes and removes the storage directories and keeps the secrets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from copyoffload.s3url import is_s3_url
from dwsbridge.backends.local.store import Store, is_alive
from dwsbridge.config import Config, parse_size
from dwsbridge.config import s3_settings as config_s3_settings
from dwsbridge.workflow import DATA_IN, DATA_OUT, POST_RUN, PRE_RUN, PROPOSAL, SETUP, TEARDOWN

log = logging.getLogger("dwsbridge.local")

STORAGE_TYPES_WITH_FS = ("xfs", "gfs2", "lustre")


class DriverError(Exception):
    """A state failed; the message names the directive and is what the user sees."""


@dataclass
class ParsedDirective:
    index: int
    text: str
    command: str
    args: dict[str, str | None]

    def arg(self, key: str) -> str:
        return self.args.get(key) or ""


def env_var_suffix(name: str) -> str:
    """DWS writes `-` in storage names as `_` in variable names (DW_JOB_my_data)."""
    return name.replace("-", "_")


class LocalDriver:
    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.root = config.root

    # --- layout ----------------------------------------------------------------------------
    @property
    def jobs_dir(self) -> Path:
        return self.root / "storage" / "jobs"

    @property
    def persistent_dir(self) -> Path:
        return self.root / "storage" / "persistent"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    def job_path(self, workflow: str, name: str) -> Path:
        return self.jobs_dir / workflow / name

    def ensure_layout(self) -> None:
        """Root and storage parents traversable by users (0755); secrets root-only (0700)."""
        for path, mode in (
            (self.root, 0o755),
            (self.root / "storage", 0o755),
            (self.jobs_dir, 0o755),
            (self.persistent_dir, 0o755),
            (self.secrets_dir, 0o700),
            (self.root / "log", 0o700),
        ):
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, mode)

    # --- entry -----------------------------------------------------------------------------
    def run(self, obj: dict[str, Any], state: str) -> dict[str, Any]:
        """Do `state`'s work; return status fields to merge (env, capacity, ...). Raises DriverError."""
        handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            PROPOSAL: self.proposal,
            SETUP: self.setup,
            DATA_IN: self.data_in,
            PRE_RUN: self.pre_run,
            POST_RUN: self.post_run,
            DATA_OUT: self.data_out,
            TEARDOWN: self.teardown,
        }
        return handlers[state](obj)

    def directives(self, obj: dict[str, Any]) -> list[ParsedDirective]:
        from dwsbridge.directives import parse_directive

        result = []
        for index, text in enumerate(obj["spec"]["dwDirectives"]):
            d = parse_directive(text)
            result.append(ParsedDirective(index, text, d.command, dict(d.args)))
        return result

    # --- Proposal --------------------------------------------------------------------------
    def proposal(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Directives were checked at admission; here: storage that must (not) exist, capacity."""
        self.ensure_layout()
        uid = int(obj["spec"]["userID"])
        capacity = 0
        for d in self.directives(obj):
            if d.command in ("jobdw", "create_persistent") and d.arg("capacity"):
                capacity += parse_size(d.arg("capacity"))
            if d.command == "persistentdw":
                record = self.store.get_persistent(d.arg("name"))
                if record is None:
                    raise DriverError(f"{d.text}: persistent storage '{d.arg('name')}' does not exist")
            if d.command == "create_persistent" and self.store.get_persistent(d.arg("name")):
                raise DriverError(f"{d.text}: persistent storage '{d.arg('name')}' already exists")
            if d.command == "destroy_persistent":
                record = self.store.get_persistent(d.arg("name"))
                if record is None:
                    raise DriverError(f"{d.text}: persistent storage '{d.arg('name')}' does not exist")
                if int(record["uid"]) != uid:
                    raise DriverError(
                        f"{d.text}: persistent storage '{d.arg('name')}' belongs to uid {record['uid']};"
                        " only its owner may destroy it"
                    )
        self.reserve_capacity(obj["metadata"]["name"], capacity)
        return {"capacity": capacity}

    def reserve_capacity(self, name: str, capacity: int) -> None:
        """Check and record the workflow's capacity in one transaction, so that two Proposals running
        at once cannot both be promised the same free space of the pool."""
        with self.store.transaction() as conn:
            self.check_capacity(name, capacity)
            current = self.store.read_workflow(conn, name)
            if current is not None:
                current["status"]["capacity"] = capacity
                self.store.write_workflow(conn, current)

    def check_capacity(self, name: str, capacity: int) -> None:
        limit = self.config.capacity_limit
        if limit is not None and capacity > limit:
            raise DriverError(
                f"workflow {name} asks for {capacity} bytes of storage, above the configured limit of"
                f" {limit} bytes per job"
            )
        usage = shutil.disk_usage(self.root)
        pool = self.config.pool_size
        reserved = self.store.reserved_capacity(exclude=name)
        available = usage.free if pool is None else min(usage.free, pool - reserved)
        if capacity > available:
            raise DriverError(
                f"workflow {name} asks for {capacity} bytes of storage but only {max(available, 0)} bytes"
                " are available"
            )

    # --- Setup -----------------------------------------------------------------------------
    def setup(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.ensure_layout()
        name = obj["metadata"]["name"]
        uid, gid = int(obj["spec"]["userID"]), int(obj["spec"]["groupID"])
        directives = self.directives(obj)
        env: dict[str, str] = dict((obj.get("status") or {}).get("env") or {})
        jobs: list[str] = []
        persistents: list[str] = []
        wf_dir = self.jobs_dir / name
        wf_dir.mkdir(exist_ok=True)
        os.chmod(wf_dir, 0o755)
        for d in directives:
            if d.command == "jobdw":
                path = self.job_path(name, d.arg("name"))
                self._make_user_dir(path, uid, gid)
                var = env_var_suffix(d.arg("name"))
                env[f"DW_JOB_{var}"] = str(path)
                env.setdefault(f"DW_JOB_{d.arg('type').upper()}", str(path))
                jobs.append(f"{d.arg('name')}:{path}")
            elif d.command == "persistentdw":
                record = self.store.get_persistent(d.arg("name"))
                if record is None:
                    raise DriverError(f"{d.text}: persistent storage '{d.arg('name')}' does not exist")
                env[f"DW_PERSISTENT_{env_var_suffix(d.arg('name'))}"] = record["path"]
                persistents.append(f"{d.arg('name')}:{record['path']}")
            elif d.command == "create_persistent":
                self._create_persistent(name, d, uid, gid)
        if jobs:
            env["DW_JOBS"] = ",".join(jobs)
        if persistents:
            env["DW_PERSISTENTS"] = ",".join(persistents)
        status: dict[str, Any] = {"env": env}
        requires = sorted(self._requires(directives))
        if requires:
            status["requires"] = requires
            status["workflowToken"] = self._mint_token(obj)
        if self.wants_copy_offload(directives):
            from dwsbridge.backends.local import copy_offload

            env.update(copy_offload.reserve(self, obj))
        return status

    def _make_user_dir(self, path: Path, uid: int, gid: int) -> None:
        try:
            path.mkdir(mode=0o700, exist_ok=True)
            os.chown(path, uid, gid)
            os.chmod(path, 0o700)
        except OSError as exc:
            raise DriverError(f"cannot create job storage {path}: {exc.strerror}") from exc

    def _create_persistent(self, workflow: str, d: ParsedDirective, uid: int, gid: int) -> None:
        path = self.persistent_dir / d.arg("name")
        capacity = parse_size(d.arg("capacity")) if d.arg("capacity") else 0
        record = {
            "name": d.arg("name"),
            "uid": uid,
            "gid": gid,
            "type": d.arg("type"),
            "capacity": capacity,
            "path": str(path),
            "workflow": workflow,
        }
        with self.store.transaction() as conn:
            existing = self.store.get_persistent(d.arg("name"))
            if existing is not None and existing["workflow"] != workflow:
                raise DriverError(f"{d.text}: persistent storage '{d.arg('name')}' already exists")
            if existing is None:
                self.store.add_persistent(conn, record)
        self._make_user_dir(path, uid, gid)

    @staticmethod
    def _requires(directives: list[ParsedDirective]) -> set[str]:
        found: set[str] = set()
        for d in directives:
            if d.command in ("jobdw", "persistentdw"):
                for word in (d.arg("requires") or "").split(","):
                    if word == "copy-offload":
                        found.add("copy-offload")
                    elif word == "user-container-auth":
                        found.add("container-auth")
        return found

    @staticmethod
    def wants_copy_offload(directives: list[ParsedDirective]) -> bool:
        for d in directives:
            if d.command == "container" and d.arg("profile").startswith("copy-offload"):
                return True
            if d.command in ("jobdw", "persistentdw") and "copy-offload" in d.arg("requires").split(","):
                return True
        return False

    def _mint_token(self, obj: dict[str, Any]) -> dict[str, str]:
        """The per-workflow signing key and token, as DWS's two immutable secrets."""
        from copyoffload.tokens import mint_token, new_workflow_key

        name, namespace = obj["metadata"]["name"], obj["metadata"].get("namespace", "default")
        with self.store.transaction() as conn:
            existing = self.store.get_secret(f"{name}-token")
            if existing is None:
                key_pem = new_workflow_key()
                token = mint_token(key_pem, workflow=name)
                self.store.put_secret(conn, f"{name}-token-server", name, {"token.key": key_pem.decode()})
                self.store.put_secret(conn, f"{name}-token", name, {"token": token})
        return {"secretName": f"{name}-token", "secretNamespace": namespace}

    def token_key_file(self, name: str) -> Path:
        """Write the workflow's signing key to a root-only file for its copy-offload server."""
        secret = self.store.get_secret(f"{name}-token-server")
        if secret is None:
            raise DriverError(f"workflow {name} has no token key (no requires=copy-offload?)")
        directory = self.secrets_dir / name
        directory.mkdir(mode=0o700, exist_ok=True)
        path = directory / "token.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secret["token.key"])
        return path

    # --- DataIn / DataOut ------------------------------------------------------------------
    def data_in(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._run_copies(obj, "copy_in")
        return {}

    def data_out(self, obj: dict[str, Any]) -> dict[str, Any]:
        if obj["spec"].get("hurry"):
            return {}
        self._run_copies(obj, "copy_out")
        return {}

    def _run_copies(self, obj: dict[str, Any], command: str) -> None:
        from copyoffload.mover import CopyCancelled, CopyError, copy_as_user

        name = obj["metadata"]["name"]
        uid, gid = int(obj["spec"]["userID"]), int(obj["spec"]["groupID"])
        env = (obj.get("status") or {}).get("env") or {}
        for d in self.directives(obj):
            if d.command != command:
                continue
            source = self.resolve_path(d.arg("source"), env, d)
            dest = self.resolve_path(d.arg("destination"), env, d)
            log.info("workflow=%s %s: copying %s -> %s as uid %d", name, command, source, dest, uid)
            children: list[int] = []

            def register(pid: int, children: list[int] = children) -> None:
                children.append(pid)
                self.track_process(obj, "copy", pid)

            try:
                options = self.copy_options(d, s3=is_s3_url(source) or is_s3_url(dest))
                copy_as_user(source, dest, uid=uid, gid=gid, options=options, on_child=register)
            except CopyCancelled as exc:
                raise DriverError(f"{d.text}: copy cancelled: {exc}") from exc
            except CopyError as exc:
                raise DriverError(f"{d.text}: {exc}") from exc
            finally:
                for pid in children:
                    self.store.remove_process(name, "copy", pid)

    def copy_options(self, d: ParsedDirective, *, s3: bool = False) -> Any:
        """Mover options from the directive's `profile=` (config data_movement_profiles), over the
        site's `s3` settings. A profile's `s3:` mapping overrides those; for an s3:// copy, a `profile=`
        that names no data movement profile names one of the user's own S3 profiles (~/.aws/config)."""
        from copyoffload.mover import CopyOptions, S3Options

        profile = d.arg("profile")
        settings = dict(self.config.data_movement_profiles.get(profile) or {}) if profile else {}
        s3_settings: Any = dict(self.config.s3)
        if profile and profile not in self.config.data_movement_profiles:
            if not s3:
                known = ", ".join(sorted(self.config.data_movement_profiles)) or "none configured"
                raise DriverError(f"{d.text}: unknown data movement profile '{profile}' (known: {known})")
            s3_settings["profile"] = profile
        try:
            overrides = settings.pop("s3", None) or {}
            s3_settings.update(config_s3_settings(overrides))
            return CopyOptions(**settings, s3=S3Options.from_mapping(s3_settings))
        except (TypeError, ValueError) as exc:
            raise DriverError(f"{d.text}: data movement profile '{profile}' is invalid: {exc}") from exc

    @staticmethod
    def resolve_path(path: str, env: dict[str, str], d: ParsedDirective) -> str:
        """Expand a leading $DW_JOB_x / $DW_PERSISTENT_x (users write them unexpanded)."""
        if is_s3_url(path):
            return path
        if path.startswith("$"):
            var, sep, rest = path[1:].partition("/")
            var = var.strip("{}")
            if var not in env:
                raise DriverError(f"{d.text}: {path}: ${var} names no storage of this job")
            return env[var] + (sep + rest if sep else "")
        if not path.startswith("/"):
            raise DriverError(f"{d.text}: {path}: a global path must be absolute")
        return path

    # --- PreRun / PostRun: the copy-offload server seam ------------------------------------
    def pre_run(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.wants_copy_offload(self.directives(obj)):
            from dwsbridge.backends.local import copy_offload

            copy_offload.start(self, obj)
        return {}

    def post_run(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.stop_processes(obj["metadata"]["name"], "server")
        return {}

    # --- Teardown --------------------------------------------------------------------------
    def teardown(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Stop everything, remove storage and secrets. Best effort on every step, then report."""
        name = obj["metadata"]["name"]
        problems: list[str] = []
        self.stop_processes(name, None)
        wf_dir = self.jobs_dir / name
        if wf_dir.exists():
            shutil.rmtree(wf_dir, onerror=lambda _f, p, e: problems.append(f"cannot remove {p}: {e[1]}"))
        secrets = self.secrets_dir / name
        if secrets.exists():
            shutil.rmtree(secrets, ignore_errors=True)
        directives = self.directives(obj)
        uid = int(obj["spec"]["userID"])
        with self.store.transaction() as conn:
            self.store.delete_secrets(conn, name)
            for d in directives:
                if d.command == "destroy_persistent":
                    record = self.store.get_persistent(d.arg("name"))
                    if record is not None and int(record["uid"]) == uid:
                        self.store.delete_persistent(conn, d.arg("name"))
                        shutil.rmtree(record["path"], ignore_errors=True)
                elif d.command == "create_persistent":
                    record = self.store.get_persistent(d.arg("name"))
                    created_here = record is not None and record["workflow"] == name
                    reached_setup = self._reached(obj, SETUP)
                    if created_here and not reached_setup and record is not None:
                        self.store.delete_persistent(conn, d.arg("name"))
                        shutil.rmtree(record["path"], ignore_errors=True)
        if problems:
            raise DriverError("teardown: " + "; ".join(problems[:5]))
        return {}

    @staticmethod
    def _reached(obj: dict[str, Any], state: str) -> bool:
        """True when `state` completed (so a create_persistent's instance is meant to outlive us)."""
        return state in ((obj.get("status") or {}).get("completedStates") or [])

    def track_process(
        self, obj: dict[str, Any], kind: str, pid: int, info: dict[str, Any] | None = None
    ) -> bool:
        """Record a process started for `obj`'s state, so teardown can stop it; False (and the
        process group killed) when a teardown overtook the state while the process started.

        Teardown moves desiredState before it reads the records, and this records before it reads
        desiredState: whichever runs second sees the other, so no process escapes both."""
        name = obj["metadata"]["name"]
        self.store.add_process(name, kind, pid, info)
        current = self.store.read_workflow(None, name)
        if current is not None and current["spec"]["desiredState"] == obj["spec"]["desiredState"]:
            return True
        log.warning(
            "workflow=%s a teardown overtook %s: killing the %s it started",
            name,
            obj["spec"]["desiredState"],
            kind,
        )
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        self.store.remove_process(name, kind, pid)
        return False

    def stop_processes(self, name: str, kind: str | None) -> None:
        """Kill what this workflow started (in any process): copies get SIGKILL, servers SIGTERM."""
        for record in self.store.processes(name, kind):
            if is_alive(record.pid, record.start):
                sig = signal.SIGKILL if record.kind == "copy" else signal.SIGTERM
                try:
                    os.killpg(record.pid, sig)
                except ProcessLookupError:
                    pass
                except PermissionError:
                    os.kill(record.pid, sig)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and is_alive(record.pid, record.start):
                    time.sleep(0.02)
                if is_alive(record.pid, record.start):
                    os.killpg(record.pid, signal.SIGKILL)
            self.store.remove_process(name, record.kind, record.pid)
