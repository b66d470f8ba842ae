"""Ordinary test users for privilege tests: created once, left in place, safe under concurrent test runs."""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

PREFIX = "dwsbt-"
_LOCK = "/tmp/dwsbt-users.lock"


def ensure_user(name: str, *, groups: tuple[str, ...] = ()) -> tuple[int, int]:
    """(uid, gid) of user `name` (prefixed `dwsbt-`), creating it and its groups if missing. Root only."""
    if not name.startswith(PREFIX):
        raise ValueError(f"test users must be named {PREFIX}*, not {name}")
    with _locked():
        for group in groups:
            with contextlib.suppress(KeyError):
                grp.getgrnam(group)
                continue
            subprocess.run(["groupadd", group], check=True, capture_output=True)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            cmd = ["useradd", "-M", "-U", "-s", "/usr/sbin/nologin"]
            if groups:
                cmd += ["-G", ",".join(groups)]
            subprocess.run([*cmd, name], check=True, capture_output=True)
            entry = pwd.getpwnam(name)
        for group in groups:
            if name not in grp.getgrnam(group).gr_mem:
                subprocess.run(["usermod", "-a", "-G", group, name], check=True, capture_output=True)
        return entry.pw_uid, entry.pw_gid


@contextlib.contextmanager
def shared_tmpdir() -> Iterator[str]:
    """A fresh directory under /tmp that every user may traverse (pytest's tmp_path is root-only)."""
    path = tempfile.mkdtemp(prefix=PREFIX + "tmp-", dir="/tmp")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    with open(_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
