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
from dwsbridge.backends.local import loopfs
from dwsbridge.backends.local.storage import StorageError, make_private_dir, remove_tree
from dwsbridge.backends.local.store import Store, is_alive
from dwsbridge.config import Config, parse_size
from dwsbridge.config import s3_settings as config_s3_settings
from dwsbridge.workflow import (
    DATA_IN,
    DATA_OUT,
    POST_RUN,
    PRE_RUN,
    PROPOSAL,
    SETUP,
    TEARDOWN,
    is_state_complete,
)

log = logging.getLogger("dwsbridge.local")

STORAGE_TYPES_WITH_FS = ("xfs", "gfs2", "lustre")


def state_headroom(total: int) -> int:
    """Space never promised to storage, so the filesystem of state.db cannot be filled by it: 1% of
    the filesystem, at most 1 GiB."""
    return min(total // 100, 1024**3)


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

    @property
    def images_dir(self) -> Path:
        """Filesystem images of the allocations (storage_enforcement: loop), root only."""
        return self.root / "storage" / "images"

    @property
    def enforced(self) -> bool:
        return self.config.storage_enforcement == "loop"

    @property
    def trash_dir(self) -> Path:
        """Where the storage sweep moves what no record owns before removing it (root only)."""
        return self.root / "storage" / "trash"

    def job_path(self, workflow: str, name: str) -> Path:
        return self.jobs_dir / workflow / name

    def ensure_layout(self) -> None:
        """Root and storage parents traversable by users (0755); secrets root-only (0700)."""
        for path, mode in (
            (self.root, 0o755),
            (self.root / "storage", 0o755),
            (self.jobs_dir, 0o755),
            (self.persistent_dir, 0o755),
            (self.trash_dir, 0o700),
            (self.images_dir, 0o700),
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
        """Directives were checked at admission; here: storage that must (not) exist, who may use
        it, per-user limits, capacity. A destroy_persistent of an absent name passes, as in DWS:
        Setup says what is missing."""
        self.ensure_layout()
        uid, gid = int(obj["spec"]["userID"]), int(obj["spec"]["groupID"])
        capacity = 0
        for d in self.directives(obj):
            if d.command in ("jobdw", "create_persistent"):
                capacity += self.capacity_of(d)
                if self.enforced and self.capacity_of(d) < loopfs.MIN_CAPACITY:
                    raise DriverError(
                        f"{d.text}: capacity must be at least 1MiB here: each allocation is a filesystem"
                        " of its capacity (storage_enforcement: loop)"
                    )
            if d.command == "persistentdw":
                self.usable_persistent(d, uid, gid)
            elif d.command == "create_persistent":
                if self.store.get_persistent(d.arg("name")):
                    raise DriverError(f"{d.text}: persistent storage '{d.arg('name')}' already exists")
                self.check_persistent_limits(d, uid)
            elif d.command == "destroy_persistent":
                record = self.store.get_persistent(d.arg("name"))
                if record is not None:
                    self.check_owner(d, record, uid)
        self.reserve_capacity(obj["metadata"]["name"], capacity)
        return {"capacity": capacity}

    def capacity_of(self, d: ParsedDirective) -> int:
        """A jobdw's capacity; a create_persistent's, or persistent_default_capacity without one (DWS
        accepts none; here every instance has a size, so it can be enforced and counted)."""
        if d.arg("capacity"):
            return parse_size(d.arg("capacity"))
        return self.config.persistent_default_capacity if d.command == "create_persistent" else 0

    def usable_persistent(self, d: ParsedDirective, uid: int, gid: int) -> dict[str, Any]:
        """The instance a persistentdw names, if this job's user may use it (persistent_sharing)."""
        name = d.arg("name")
        record = self.store.get_persistent(name)
        if record is None or record["state"] == "destroying":
            raise DriverError(f"{d.text}: persistent storage '{name}' does not exist")
        if record["state"] != "active":
            raise DriverError(f"{d.text}: persistent storage '{name}' is still being created; try again")
        sharing = self.config.persistent_sharing
        allowed = (
            int(record["uid"]) == uid
            or sharing == "all"
            or (sharing == "group" and int(record["gid"]) == gid)
        )
        if not allowed:
            who = "owner" if sharing == "owner" else "owner and its group"
            raise DriverError(
                f"{d.text}: persistent storage '{name}' belongs to another user; this site lets only its"
                f" {who} use it (setting persistent_sharing: {sharing})"
            )
        return record

    @staticmethod
    def check_owner(d: ParsedDirective, record: dict[str, Any], uid: int) -> None:
        if int(record["uid"]) != uid:
            raise DriverError(
                f"{d.text}: persistent storage '{d.arg('name')}' belongs to uid {record['uid']};"
                " only its owner may destroy it"
            )

    def pool_bytes(self) -> int:
        """The pool's size: configured, else the size of the filesystem holding the root."""
        if self.config.pool_size is not None:
            return int(self.config.pool_size)
        self.root.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(self.root).total

    def check_persistent_limits(self, d: ParsedDirective, uid: int, conn: Any = None) -> None:
        """One user may hold persistent_instances_per_user instances and persistent_capacity_per_user
        bytes (default a quarter of the pool), so no one user can exhaust the pool for everyone."""
        count, used = self.store.persistent_usage(conn).get(uid, (0, 0))
        max_count = self.config.persistent_instances_per_user
        if count + 1 > max_count:
            raise DriverError(
                f"{d.text}: uid {uid} already holds {count} persistent storage instance(s), the most one"
                f" user may hold (setting persistent_instances_per_user: {max_count}); destroy one first"
            )
        limit = self.config.persistent_capacity_per_user
        if limit is None:
            limit = self.pool_bytes() // 4
        wanted = self.capacity_of(d)
        if used + wanted > limit:
            raise DriverError(
                f"{d.text}: uid {uid} holds {used} bytes of persistent storage; {wanted} more would pass"
                f" the {limit} bytes one user may hold (setting persistent_capacity_per_user)"
            )

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
        free = usage.free
        if self.enforced:  # allocations take their space at Setup: leave what Proposals promised
            free -= self._promised_not_allocated(exclude=name) + state_headroom(usage.total)
        pool = self.config.pool_size
        reserved = self.store.reserved_capacity(exclude=name)
        available = free if pool is None else min(free, pool - reserved)
        if capacity > available:
            raise DriverError(
                f"workflow {name} asks for {capacity} bytes of storage but only {max(available, 0)} bytes"
                " are available"
            )

    def _promised_not_allocated(self, exclude: str) -> int:
        """Capacity of workflows past Proposal whose Setup has not yet preallocated it."""
        total = 0
        for obj in self.store.list_workflows():
            status = obj.get("status") or {}
            done = SETUP in (status.get("completedStates") or []) or is_state_complete(obj, SETUP)
            if (
                obj["metadata"]["name"] != exclude
                and obj["spec"]["desiredState"] in (PROPOSAL, SETUP)
                and not done
            ):
                total += int(status.get("capacity", 0))
        return total

    # --- Setup -----------------------------------------------------------------------------
    def setup(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.ensure_layout()
        name = obj["metadata"]["name"]
        uid, gid = int(obj["spec"]["userID"]), int(obj["spec"]["groupID"])
        directives = self.directives(obj)
        env: dict[str, str] = dict((obj.get("status") or {}).get("env") or {})
        jobs: list[str] = []
        persistents: list[str] = []
        try:
            self._release_images(f"jobs.{name}.")  # of this workflow's interrupted Setup, if any
        except StorageError as exc:
            raise DriverError(f"cannot clear what an earlier Setup of {name} left: {exc}") from exc
        wf_dir = self._fresh_dir(self.jobs_dir, name, 0, 0)
        os.chmod(wf_dir, 0o755)
        for d in directives:
            if d.command == "jobdw":
                path = self._allocate(wf_dir, d, loopfs.image_name("jobs", name, d.arg("name")), uid, gid)
                var = env_var_suffix(d.arg("name"))
                env[f"DW_JOB_{var}"] = str(path)
                env.setdefault(f"DW_JOB_{d.arg('type').upper()}", str(path))
                jobs.append(f"{d.arg('name')}:{path}")
            elif d.command == "persistentdw":
                record = self.usable_persistent(d, uid, gid)
                self._mount_persistent(d, record)
                env[f"DW_PERSISTENT_{env_var_suffix(d.arg('name'))}"] = record["path"]
                persistents.append(f"{d.arg('name')}:{record['path']}")
            elif d.command == "create_persistent":
                self._create_persistent(name, d, uid, gid)
            elif d.command == "destroy_persistent":
                instance = self.store.get_persistent(d.arg("name"))
                if instance is None or instance["state"] == "destroying":
                    raise DriverError(
                        f"{d.text}: persistent storage '{d.arg('name')}' does not exist, so there is"
                        " nothing to destroy (check the name it was created with)"
                    )
                self.check_owner(d, instance, uid)
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

    def _fresh_dir(self, parent: Path, name: str, uid: int, gid: int) -> Path:
        """A new, empty storage directory for uid:gid. Whatever is at that name is a leftover of this
        workflow's interrupted Setup or of storage no record owns: removed, never adopted."""
        path = parent / name
        try:
            remove_tree(path)
            return make_private_dir(parent, name, uid, gid)
        except StorageError as exc:
            raise DriverError(f"cannot create storage {path}: {exc}") from exc

    def _allocate(self, parent: Path, d: ParsedDirective, image: str, uid: int, gid: int) -> Path:
        """The directive's storage at parent/<name>: its own filesystem of its capacity when the
        site enforces capacity, else a plain directory."""
        if not self.enforced:
            return self._fresh_dir(parent, d.arg("name"), uid, gid)
        path = self._fresh_dir(parent, d.arg("name"), 0, 0)  # the mount point: root's, empty
        try:
            loopfs.make_filesystem(self.images_dir / image, path, self.capacity_of(d), uid, gid)
        except StorageError as exc:
            raise DriverError(
                f"{d.text}: cannot give it a filesystem of its capacity: {exc} (a site where loop mounts"
                " are impossible sets storage_enforcement: none)"
            ) from exc
        return path

    def _mount_persistent(self, d: ParsedDirective, record: dict[str, Any]) -> None:
        """An instance's filesystem is mounted again after a reboot, when a job first uses it."""
        image = self.images_dir / loopfs.image_name("persistent", record["name"])
        if image.exists():
            try:
                loopfs.mount_existing(image, Path(record["path"]))
            except StorageError as exc:
                raise DriverError(f"{d.text}: {exc}") from exc

    def _release_images(self, prefix: str) -> None:
        """Unmount and delete the filesystem images whose names start with `prefix` (StorageError)."""
        for entry in sorted(os.listdir(self.images_dir)) if self.images_dir.is_dir() else ():
            if entry.startswith(prefix) and entry.endswith(".img"):
                loopfs.unmount(self.mountpoint(entry))
                (self.images_dir / entry).unlink(missing_ok=True)

    def mountpoint(self, image: str) -> Path:
        """Where an image is mounted: jobs.<workflow>.<name>.img, persistent.<name>.img."""
        kind, owner, *rest = image.removesuffix(".img").split(".")
        parent = self.jobs_dir / owner if kind == "jobs" else self.persistent_dir
        return parent / rest[0] if rest else parent / owner

    def _create_persistent(self, workflow: str, d: ParsedDirective, uid: int, gid: int) -> None:
        """Record the instance ("creating"), make its directory, then mark it "active". The record
        comes first and its name is unique, so no two jobs ever make (or share) one directory."""
        name = d.arg("name")
        path = self.persistent_dir / name
        capacity = self.capacity_of(d)
        record = {
            "name": name,
            "uid": uid,
            "gid": gid,
            "type": d.arg("type"),
            "capacity": capacity,
            "path": str(path),
            "workflow": workflow,
        }
        with self.store.transaction() as conn:
            existing = self.store.get_persistent(name, conn)
            if existing is not None and existing["workflow"] != workflow:
                raise DriverError(f"{d.text}: persistent storage '{name}' already exists")
            if existing is not None and existing["state"] != "creating":
                return  # this workflow's Setup ran before and made it
            if existing is None:
                self.check_persistent_limits(d, uid, conn)
                self.store.add_persistent(conn, record)
        try:
            self._release_images(loopfs.image_name("persistent", name))  # an interrupted Setup's
        except StorageError as exc:
            raise DriverError(f"{d.text}: {exc}") from exc
        self._allocate(self.persistent_dir, d, loopfs.image_name("persistent", name), uid, gid)
        with self.store.transaction() as conn:
            self.store.set_persistent_state(conn, name, "active")
        log.info("workflow=%s persistent storage %s created for uid %d", workflow, name, uid)

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
        self.stop_processes(name, "copy")  # a dead predecessor's copies: this state starts them afresh
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
        """Stop everything, remove storage and secrets. Every step is tried; storage that could not
        be removed fails the state (the workflow stays in Teardown, so a retry can finish the job)."""
        name = obj["metadata"]["name"]
        problems: list[str] = []
        self.stop_processes(name, None)
        if self._release(name, f"jobs.{name}.", problems):
            self._remove(name, self.jobs_dir / name, problems)
        self._remove(name, self.secrets_dir / name, problems)
        with self.store.transaction() as conn:
            self.store.delete_secrets(conn, name)
        uid = int(obj["spec"]["userID"])
        for d in self.directives(obj):
            record = self.store.get_persistent(d.arg("name")) if "persistent" in d.command else None
            if record is None:
                continue
            if d.command == "destroy_persistent" and int(record["uid"]) == uid:
                self._destroy_persistent(name, record, problems)
            elif (
                d.command == "create_persistent"
                and record["workflow"] == name
                and not self._reached(obj, SETUP)
            ):
                self._destroy_persistent(name, record, problems)  # never handed to the user: it goes too
        if problems:
            raise DriverError(
                "teardown: storage remains, so the workflow stays in Teardown until it is removed"
                " (Slurm retries teardown, the bridge agent's sweep retries it, or run"
                f" `dwsbridge teardown {name}`): " + "; ".join(problems[:5])
            )
        return {}

    def _release(self, workflow: str, prefix: str, problems: list[str]) -> bool:
        try:
            self._release_images(prefix)
        except (StorageError, OSError) as exc:
            log.error("workflow=%s storage filesystem release failed: %s", workflow, exc)
            problems.append(str(exc))
            return False
        return True

    def _remove(self, workflow: str, path: Path, problems: list[str]) -> bool:
        try:
            removed = remove_tree(path)
        except StorageError as exc:
            log.error("workflow=%s storage removal failed: %s", workflow, exc)
            problems.append(str(exc))
            return False
        if removed.entries:
            log.info("workflow=%s removed %s (%d entries)", workflow, path, removed.entries)
        return True

    def _destroy_persistent(self, workflow: str, record: dict[str, Any], problems: list[str]) -> None:
        """Mark the instance "destroying" (no job may use it from now on), remove its directory with
        no transaction open, and forget it only once the directory is gone."""
        with self.store.transaction() as conn:
            self.store.set_persistent_state(conn, record["name"], "destroying")
        image = loopfs.image_name("persistent", record["name"])
        if self._release(workflow, image, problems) and self._remove(
            workflow, Path(record["path"]), problems
        ):
            with self.store.transaction() as conn:
                self.store.delete_persistent(conn, record["name"])
            log.info("workflow=%s persistent storage %s destroyed", workflow, record["name"])

    def sweep_storage(self) -> list[Path]:
        """Remove storage directories that no workflow or persistent instance owns (a crash between
        steps, or an older version's leaks). Each one is claimed under the database's write lock,
        where no record can appear, by moving it into the root-only trash; then it is removed."""
        self.ensure_layout()
        claimed: list[Path] = []
        for image in sorted(os.listdir(self.images_dir)):
            if not image.endswith(".img") or image.count(".") < 2:
                continue
            kind, owner = image.split(".")[:2]
            with self.store.transaction() as conn:
                if (self._has_workflow if kind == "jobs" else self._has_instance)(conn, owner):
                    continue
                log.warning("storage sweep: image %s has no owner; removing it", image)
                loopfs.unmount(self.mountpoint(image))
                (self.images_dir / image).unlink(missing_ok=True)
                claimed.append(self.images_dir / image)
        for parent, owned in ((self.jobs_dir, self._has_workflow), (self.persistent_dir, self._has_instance)):
            for entry in sorted(os.listdir(parent)):
                with self.store.transaction() as conn:
                    if owned(conn, entry):
                        continue
                    target = self.trash_dir / f"{parent.name}-{entry}-{os.urandom(4).hex()}"
                    try:
                        os.rename(parent / entry, target)
                    except FileNotFoundError:
                        continue
                log.warning("storage sweep: %s has no owner; removing it", parent / entry)
                claimed.append(parent / entry)
        problems: list[str] = []
        for entry in sorted(os.listdir(self.trash_dir)):
            self._remove("-", self.trash_dir / entry, problems)
        if problems:
            raise DriverError("storage sweep: " + "; ".join(problems[:5]))
        return claimed

    def _has_workflow(self, conn: Any, name: str) -> bool:
        return self.store.read_workflow(conn, name) is not None

    def _has_instance(self, conn: Any, name: str) -> bool:
        return self.store.get_persistent(name, conn) is not None

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
        """Stop what this workflow started (in any process): SIGTERM (a copy removes its partial
        files, a server stops), SIGKILL for what still runs 5 s later."""
        for record in self.store.processes(name, kind):
            if is_alive(record.pid, record.start):
                sig = signal.SIGTERM
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
