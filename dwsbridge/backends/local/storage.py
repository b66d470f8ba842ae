"""Making and removing the storage directories users write into, safely against those users (issue 11).

Root creates a directory only with an exclusive mkdir (an existing one is never adopted and handed
to a new owner), and removes a tree by file descriptors: every directory is opened without following
symlinks and locked (owned by root, mode 0) before it is listed, so a process of the user can add no
entry behind the walk, and nothing the user planted (a symlink, a hard link) is ever followed. The walk
is iterative and holds one or two descriptors at a time, so any depth is fine. It never enters another
filesystem (a mount point inside is an error: the caller unmounts first).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Subdirectories remembered per level, and in all levels together: a wide directory is listed once
# per _PENDING subdirectories (not once per subdirectory), and memory stays bounded on trees both
# wide and deep.
_PENDING = 65536
_PENDING_TOTAL = 262144
_PENDING_MIN = 16


class StorageError(Exception):
    """Storage could not be made or removed; the message names the path and the OS reason."""


@dataclass
class Removal:
    """What one removal did (for the log line)."""

    entries: int = 0


def open_dir(path: Path) -> int:
    """A descriptor of directory `path`, refusing a symlink in its last component."""
    return os.open(path, _DIR_FLAGS)


def make_private_dir(parent: Path, name: str, uid: int, gid: int) -> Path:
    """Create `parent/name` for uid:gid, mode 0700, failing if anything already has that name."""
    path = parent / name
    try:
        pfd = open_dir(parent)
    except OSError as exc:
        raise StorageError(f"cannot open {parent}: {exc.strerror}") from exc
    try:
        os.mkdir(name, 0o700, dir_fd=pfd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    except FileExistsError as exc:
        raise StorageError(f"{path} already exists") from exc
    except OSError as exc:
        raise StorageError(f"cannot create {path}: {exc.strerror}") from exc
    finally:
        os.close(pfd)
    return path


def remove_tree(path: Path) -> Removal:
    """Remove `path` (a directory tree, or any other file) for good; StorageError if anything stays.

    A missing `path` is not an error. `path`'s parent must be a directory users cannot write."""
    done = Removal()
    try:
        pfd = open_dir(path.parent)
    except FileNotFoundError:
        return done
    except OSError as exc:
        raise StorageError(f"cannot open {path.parent}: {exc.strerror}") from exc
    try:
        _remove_entry(pfd, path.name, path, done)
    finally:
        os.close(pfd)
    return done


def _remove_entry(pfd: int, name: str, path: Path, done: Removal) -> None:
    if _unlink_non_dir(pfd, name, path):
        done.entries += 1
        return
    try:
        top = os.open(name, _DIR_FLAGS, dir_fd=pfd)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(f"cannot open {path}: {exc.strerror}") from exc
    if os.fstat(top).st_dev != os.fstat(pfd).st_dev:
        os.close(top)
        raise StorageError(f"{path} is a mount point; unmount it first")
    _walk(top, path, done)  # closes top
    try:
        os.rmdir(name, dir_fd=pfd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StorageError(f"cannot remove {path}: {exc.strerror}") from exc
    done.entries += 1


def _unlink_non_dir(dfd: int, name: str, path: Path) -> bool:
    """Unlink `name` unless it is a directory (True when it is gone). unlink never follows a symlink."""
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        return True
    except IsADirectoryError:
        return False
    except OSError as exc:
        if exc.errno == errno.EPERM:  # some systems say EPERM for a directory
            try:
                if stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                    return False
            except OSError:
                pass
        raise StorageError(f"cannot remove {path / name}: {exc.strerror}") from exc
    return True


def _lock(fd: int, where: Callable[[], Path]) -> tuple[int, int]:
    """Take the directory from its user (root-owned, mode 0): no one but root can add entries now."""
    try:
        os.fchown(fd, 0, 0)
        os.fchmod(fd, 0)
        st = os.fstat(fd)
    except OSError as exc:
        raise StorageError(f"cannot lock {where()} for removal: {exc.strerror}") from exc
    return st.st_dev, st.st_ino


def _walk(top: int, path: Path, done: Removal) -> None:
    """Empty the directory open as `top` (closing it), depth first, one open directory at a time.

    Each level above the current one keeps its name, its identity and the subdirectories still to
    visit: going up opens ".." and checks it is the directory we came from (every level is locked, so
    nothing can have moved). Paths are built only for error messages (a deep walk stays linear)."""
    frames: list[tuple[str, tuple[int, int], list[str]]] = []
    held = 0  # subdirectory names the frames hold
    fd = top
    pending: list[str] = []

    def where(*more: str) -> Path:
        return path.joinpath(*(frame[0] for frame in frames), *more)

    identity = _lock(top, where)

    try:
        while True:
            if not pending:
                limit = max(_PENDING_MIN, min(_PENDING, _PENDING_TOTAL - held))
                pending = _scan(fd, where, done, limit)
            if pending:
                child = pending.pop()
                try:
                    sub = os.open(child, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise StorageError(f"cannot open {where(child)}: {exc.strerror}") from exc
                if os.fstat(sub).st_dev != identity[0]:  # only root mounts: never walk into a mount
                    os.close(sub)
                    raise StorageError(f"{where(child)} is a mount point; unmount it first")
                frames.append((child, identity, pending))
                held += len(pending)
                os.close(fd)
                fd, pending = sub, []
                identity = _lock(fd, where)
                continue
            if not frames:
                return
            name, identity, pending = frames.pop()
            held -= len(pending)
            up = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = up
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != identity:
                raise StorageError(f"{where()} changed during its removal; stopped")
            try:
                os.rmdir(name, dir_fd=fd)
            except OSError as exc:
                raise StorageError(f"cannot remove {where(name)}: {exc.strerror}") from exc
            done.entries += 1
    finally:
        os.close(fd)


def _scan(fd: int, where: Callable[..., Path], done: Removal, limit: int) -> list[str]:
    """Unlink what is not a directory in the open directory; return up to `limit` subdirectories
    (none: the directory is empty)."""
    dirs: list[str] = []
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    dirs.append(entry.name)
                    if len(dirs) >= limit:
                        break
                    continue
                try:
                    os.unlink(entry.name, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise StorageError(f"cannot remove {where(entry.name)}: {exc.strerror}") from exc
                done.entries += 1
    except OSError as exc:
        raise StorageError(f"cannot list {where()}: {exc.strerror}") from exc
    return dirs
