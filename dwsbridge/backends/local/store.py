"""The local backend's state: one SQLite database (WAL) under the root, safe for many processes.

Every change is one short IMMEDIATE transaction, and no transaction ever waits on the filesystem
(storage is marked, then removed outside any transaction, then forgotten). Opening the store takes no
write lock unless the schema is missing, so readers (pools, paths, status) never queue behind a writer.
The database is root-only (0600): it holds the per-workflow token keys, which a job's user must never
read.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS workflows (
    name TEXT PRIMARY KEY,
    obj TEXT NOT NULL,
    created REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    lease_pid INTEGER,
    lease_start TEXT
);
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS processes (
    workflow TEXT NOT NULL,
    kind TEXT NOT NULL,
    pid INTEGER NOT NULL,
    start TEXT NOT NULL,
    info TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (workflow, kind, pid)
);
CREATE TABLE IF NOT EXISTS persistent (
    name TEXT PRIMARY KEY,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    type TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    path TEXT NOT NULL,
    created REAL NOT NULL,
    workflow TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'active'
);
"""
TABLES = ("workflows", "secrets", "processes", "persistent")
# Columns added after a table first shipped: (table, column, definition), applied to older databases.
ADDED_COLUMNS = (("persistent", "state", "TEXT NOT NULL DEFAULT 'active'"),)
# A persistent instance is "creating" until its directory exists, "active", then "destroying" from the
# moment its removal starts until its directory is gone (only then is the record deleted).
PERSISTENT_STATES = ("creating", "active", "destroying")


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/pid/stat), None if gone or a zombie.

    A pid and its start time together name one process, so a recycled pid is never mistaken for it.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def is_alive(pid: int | None, start: str | None) -> bool:
    return pid is not None and start is not None and process_start_time(pid) == start


def _create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite opens it. SQLite gives the -wal and -shm files
    the database's mode when it makes them, so a file made by the umask and chmod-ed afterwards could
    leave another process's WAL, and every token key written to it, readable by all."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
    finally:
        os.close(fd)


@dataclass
class ProcessRecord:
    workflow: str
    kind: str
    pid: int
    start: str
    info: dict[str, Any]


class Store:
    """Typed access to the database; one connection per Store (per process)."""

    def __init__(self, root: Path, *, busy_timeout: float = 60.0) -> None:
        self.root = root
        self.path = root / "state.db"
        self.busy_timeout = busy_timeout
        root.mkdir(parents=True, exist_ok=True)
        _create_private(self.path)
        self._conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None)
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        if self._conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        if not self._schema_current():
            with self.transaction() as conn:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                for table, column, definition in ADDED_COLUMNS:
                    if column not in self._columns(table):
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self._conn.execute(f"PRAGMA table_info({table})")}

    def _schema_current(self) -> bool:
        """Every table and column exists (a read: no write lock to open a current database)."""
        rows = self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        if not set(TABLES) <= {r[0] for r in rows}:
            return False
        return all(column in self._columns(table) for table, column, _ in ADDED_COLUMNS)

    @contextmanager
    def patience(self, seconds: float) -> Iterator[None]:
        """Wait at most `seconds` for a lock within the block (hooks that run inside slurmctld)."""
        self._conn.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
        try:
            yield
        finally:
            self._conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: the write lock is taken up front, so read-modify-write is safe."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")

    # --- workflows -------------------------------------------------------------------------
    def insert_workflow(self, conn: sqlite3.Connection, obj: dict[str, Any]) -> bool:
        try:
            conn.execute(
                "INSERT INTO workflows (name, obj, created) VALUES (?, ?, ?)",
                (obj["metadata"]["name"], json.dumps(obj), time.time()),
            )
        except sqlite3.IntegrityError:
            return False
        return True

    def read_workflow(self, conn: sqlite3.Connection | None, name: str) -> dict[str, Any] | None:
        row = (conn or self._conn).execute("SELECT obj FROM workflows WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def write_workflow(self, conn: sqlite3.Connection, obj: dict[str, Any]) -> None:
        conn.execute(
            "UPDATE workflows SET obj = ?, version = version + 1 WHERE name = ?",
            (json.dumps(obj), obj["metadata"]["name"]),
        )

    def delete_workflow(self, conn: sqlite3.Connection, name: str) -> None:
        conn.execute("DELETE FROM workflows WHERE name = ?", (name,))
        conn.execute("DELETE FROM secrets WHERE workflow = ?", (name,))
        conn.execute("DELETE FROM processes WHERE workflow = ?", (name,))

    def list_workflows(self) -> list[dict[str, Any]]:
        rows = self._conn.execute("SELECT obj FROM workflows ORDER BY created").fetchall()
        return [json.loads(r[0]) for r in rows]

    def set_lease(self, conn: sqlite3.Connection, name: str, pid: int | None) -> None:
        start = process_start_time(pid) if pid else None
        conn.execute("UPDATE workflows SET lease_pid = ?, lease_start = ? WHERE name = ?", (pid, start, name))

    def release_lease(self, name: str, pid: int) -> None:
        """Clear the lease on `name` if `pid` holds it (the bridge agent, once no request of its own
        works on the workflow: for the agent a finished request is what a finished process is)."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE workflows SET lease_pid = NULL, lease_start = NULL WHERE name = ? AND lease_pid = ?",
                (name, pid),
            )

    def lease_alive(self, conn: sqlite3.Connection | None, name: str) -> bool:
        row = (
            (conn or self._conn)
            .execute("SELECT lease_pid, lease_start FROM workflows WHERE name = ?", (name,))
            .fetchone()
        )
        return bool(row) and is_alive(row[0], row[1])

    # --- secrets ---------------------------------------------------------------------------
    def put_secret(self, conn: sqlite3.Connection, name: str, workflow: str, data: dict[str, str]) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO secrets (name, workflow, data) VALUES (?, ?, ?)",
            (name, workflow, json.dumps(data)),
        )

    def get_secret(self, name: str) -> dict[str, str] | None:
        row = self._conn.execute("SELECT data FROM secrets WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def delete_secrets(self, conn: sqlite3.Connection, workflow: str) -> None:
        conn.execute("DELETE FROM secrets WHERE workflow = ?", (workflow,))

    # --- processes started for a workflow (copies, copy-offload servers) --------------------
    def add_process(self, workflow: str, kind: str, pid: int, info: dict[str, Any] | None = None) -> bool:
        start = process_start_time(pid)
        if start is None:
            return False
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO processes (workflow, kind, pid, start, info) VALUES (?, ?, ?, ?, ?)",
                (workflow, kind, pid, start, json.dumps(info or {})),
            )
        return True

    def remove_process(self, workflow: str, kind: str, pid: int) -> None:
        with self.transaction() as conn:
            conn.execute(
                "DELETE FROM processes WHERE workflow = ? AND kind = ? AND pid = ?", (workflow, kind, pid)
            )

    def processes(self, workflow: str, kind: str | None = None) -> list[ProcessRecord]:
        query = "SELECT workflow, kind, pid, start, info FROM processes WHERE workflow = ?"
        params: tuple[Any, ...] = (workflow,)
        if kind is not None:
            query += " AND kind = ?"
            params += (kind,)
        rows = self._conn.execute(query, params).fetchall()
        return [ProcessRecord(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    # --- persistent storage instances ------------------------------------------------------
    _PERSISTENT_KEYS = ("name", "uid", "gid", "type", "capacity", "path", "workflow", "state")

    def get_persistent(self, name: str, conn: sqlite3.Connection | None = None) -> dict[str, Any] | None:
        row = (
            (conn or self._conn)
            .execute(f"SELECT {', '.join(self._PERSISTENT_KEYS)} FROM persistent WHERE name = ?", (name,))
            .fetchone()
        )
        return dict(zip(self._PERSISTENT_KEYS, row, strict=True)) if row else None

    def list_persistent(self) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            f"SELECT {', '.join(self._PERSISTENT_KEYS)} FROM persistent ORDER BY created"
        ).fetchall()
        return [dict(zip(self._PERSISTENT_KEYS, row, strict=True)) for row in rows]

    def add_persistent(self, conn: sqlite3.Connection, record: dict[str, Any]) -> bool:
        """Record a new instance (state "creating"); False when the name is taken."""
        try:
            conn.execute(
                "INSERT INTO persistent (name, uid, gid, type, capacity, path, created, workflow, state)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'creating')",
                (
                    record["name"],
                    record["uid"],
                    record["gid"],
                    record["type"],
                    record["capacity"],
                    record["path"],
                    time.time(),
                    record["workflow"],
                ),
            )
        except sqlite3.IntegrityError:
            return False
        return True

    def set_persistent_state(self, conn: sqlite3.Connection, name: str, state: str) -> None:
        if state not in PERSISTENT_STATES:
            raise ValueError(f"unknown persistent state {state!r}")
        conn.execute("UPDATE persistent SET state = ? WHERE name = ?", (state, name))

    def delete_persistent(self, conn: sqlite3.Connection, name: str) -> None:
        conn.execute("DELETE FROM persistent WHERE name = ?", (name,))

    def persistent_usage(self, conn: sqlite3.Connection | None = None) -> dict[int, tuple[int, int]]:
        """uid -> (instances, bytes) of every recorded persistent instance."""
        rows = (
            (conn or self._conn)
            .execute("SELECT uid, COUNT(*), COALESCE(SUM(capacity), 0) FROM persistent GROUP BY uid")
            .fetchall()
        )
        return {int(r[0]): (int(r[1]), int(r[2])) for r in rows}

    def reserved_capacity(self, exclude: str | None = None) -> int:
        """Bytes promised to live workflows (but `exclude`) and persistent instances (for capacity checks)."""
        total = 0
        for obj in self.list_workflows():
            if obj["metadata"]["name"] != exclude:
                total += int((obj.get("status") or {}).get("capacity", 0))
        row = self._conn.execute("SELECT COALESCE(SUM(capacity), 0) FROM persistent").fetchone()
        return total + int(row[0])
