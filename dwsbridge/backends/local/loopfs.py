"""Capacity enforced by the kernel: one ext4 filesystem per allocation, loop-mounted (issue 11.8).

Each jobdw and create_persistent gets an image file of exactly its capacity, preallocated (so the
space is taken from the filesystem of the state database at Setup, not later by the job's writes),
formatted ext4 with the job's user owning its root, and mounted nosuid,nodev at the storage path. A
job that writes past its capacity gets ENOSPC from its own filesystem; nothing it does can grow the
image. This is what NNF does with a logical volume per allocation, and what a site admin expects
`capacity=` to mean. Where loop mounts are impossible (no CAP_SYS_ADMIN, no loop devices), the site
sets `storage_enforcement: none` and capacity is only accounted (README, Configuration).

Images live in `<root>/storage/images` (root only), named `<kind>.<owner>.<name>.img`: storage
names have no `.`, so the name says which mount point an image belongs to.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import subprocess
from pathlib import Path

from dwsbridge.backends.local.storage import StorageError

log = logging.getLogger("dwsbridge.local")

MNT_DETACH = 2
MIN_CAPACITY = 1024**2  # below this ext4 has hardly room for itself (mkfs refuses under 128 KiB)
_MKFS_TIMEOUT = 300.0


def image_name(kind: str, owner: str, name: str = "") -> str:
    """`jobs.bb12.scratch.img`, `persistent.results.img`."""
    return ".".join(part for part in (kind, owner, name) if part) + ".img"


def _tool(name: str) -> str:
    found = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        raise StorageError(f"{name} is not installed (Debian package e2fsprogs / mount)")
    return found


def make_filesystem(image: Path, mountpoint: Path, capacity: int, uid: int, gid: int) -> None:
    """Create `image` (it must not exist) of `capacity` bytes, format it and mount it at `mountpoint`
    (an existing empty directory). On failure nothing is left mounted and the image is gone."""
    if capacity < MIN_CAPACITY:
        raise StorageError(
            f"a filesystem needs a capacity of at least {MIN_CAPACITY // 1024**2}MiB, not {capacity} bytes"
        )
    try:
        fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot create {image}: {exc.strerror}") from exc
    try:
        try:
            os.posix_fallocate(fd, 0, capacity)
        finally:
            os.close(fd)
        _run(
            [
                _tool("mkfs.ext4"),
                "-q",
                "-F",
                "-m",
                "0",
                "-E",
                f"nodiscard,root_owner={uid}:{gid}",
                str(image),
            ],
            f"cannot format {image}",
        )
        _run(
            [_tool("mount"), "-t", "ext4", "-o", "loop,nosuid,nodev,noatime", str(image), str(mountpoint)],
            f"cannot mount {image} at {mountpoint}",
        )
    except (OSError, StorageError) as exc:
        image.unlink(missing_ok=True)
        if isinstance(exc, StorageError):
            raise
        raise StorageError(f"cannot allocate {capacity} bytes for {image}: {exc.strerror}") from exc
    try:
        fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.rmdir(
                "lost+found", dir_fd=fd
            )  # root's, empty: a user's copy of the whole tree would trip on it
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    except OSError as exc:
        unmount(mountpoint)
        image.unlink(missing_ok=True)
        raise StorageError(f"cannot prepare {mountpoint}: {exc.strerror}") from exc


def mount_existing(image: Path, mountpoint: Path) -> None:
    """Mount a persistent instance's image again (after a reboot) if it is not mounted. The image's
    lock makes two jobs starting at once mount it once: ext4 mounted twice would be corrupted."""
    try:
        fd = os.open(image, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageError(f"cannot open {image}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not os.path.ismount(mountpoint):
            _run(
                [
                    _tool("mount"),
                    "-t",
                    "ext4",
                    "-o",
                    "loop,nosuid,nodev,noatime",
                    str(image),
                    str(mountpoint),
                ],
                f"cannot mount {image} at {mountpoint}",
            )
    finally:
        os.close(fd)


def unmount(mountpoint: Path) -> bool:
    """Unmount if mounted; a filesystem a process still uses is detached (it lives, within its
    capacity, until that process lets go). True when something was mounted."""
    if not os.path.ismount(mountpoint):
        return False
    import ctypes  # here, not at import: the hooks inside slurmctld load this module too

    libc = ctypes.CDLL(None, use_errno=True)
    path = os.fsencode(mountpoint)
    if libc.umount2(path, 0) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EBUSY and libc.umount2(path, MNT_DETACH) == 0:
        log.warning(
            "storage %s is still in use by a process: detached; its space returns when it exits", mountpoint
        )
        return True
    err = ctypes.get_errno()
    raise StorageError(f"cannot unmount {mountpoint}: {os.strerror(err)}")


def _run(argv: list[str], what: str) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=_MKFS_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StorageError(f"{what}: {exc}") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise StorageError(f"{what}: {detail[-1] if detail else f'exit {proc.returncode}'}")
