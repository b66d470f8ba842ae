"""Shared fixtures: a local-backend root that ordinary users can traverse, ordinary test users, and the
DWS stand-in (imported only by the tests that ask for it)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dwsbridge.config import Config

if TYPE_CHECKING:
    from tests.standin_support import RunningStandIn

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (creates users, drops privileges)")


def ensure_user(name: str) -> pwd.struct_passwd:
    """An ordinary user for tests (created once; left in place for later runs)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", name], check=False, capture_output=True)
        return pwd.getpwnam(name)


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A temporary directory every user can traverse (pytest's tmp_path is 0700 under root)."""
    path = Path(tempfile.mkdtemp(prefix="dwsbt-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)


def unmount_under(path: Path) -> None:
    """Detach what a test left mounted below `path` (the local backend's per-allocation filesystems
    of a persistent instance the test did not destroy), so that removing `path` cannot leak them."""
    prefix = str(path).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as mounts:
        points = [line.split()[4].replace("\\040", " ") for line in mounts]
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@pytest.fixture(autouse=True)
def _no_mount_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that leaves a workflow behind under its tmp_path leaves its loop filesystem mounted;
    detach it, or pytest cannot remove the directory and the image's space is never freed."""
    path = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if path is not None and IS_ROOT:
        unmount_under(path)


@pytest.fixture(scope="session", autouse=True)
def _no_mount_outlives_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The same for module fixtures (test clusters) under pytest's base temporary directory."""
    yield
    if IS_ROOT:
        unmount_under(tmp_path_factory.getbasetemp())


@pytest.fixture
def local_config(world_tmp: Path) -> Config:
    root = world_tmp / "root"
    return Config(root=root, state_timeout=60.0)


@pytest.fixture
def job_user() -> pwd.struct_passwd:
    if not IS_ROOT:
        pytest.skip("needs root to create an ordinary user")
    return ensure_user("dwsbt-user1")


@pytest.fixture
def other_user() -> pwd.struct_passwd:
    if not IS_ROOT:
        pytest.skip("needs root to create an ordinary user")
    return ensure_user("dwsbt-user2")


def user_dir(path: Path, user: pwd.struct_passwd, mode: int = 0o755) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, user.pw_uid, user.pw_gid)
    os.chmod(path, mode)
    return path


def user_file(path: Path, user: pwd.struct_passwd, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    os.chown(path, user.pw_uid, user.pw_gid)
    os.chmod(path, mode)
    return path


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStandIn]:
    """One DWS stand-in process for the test module (each test uses its own job ids)."""
    pytest.importorskip("kubernetes")
    from tests.standin_support import running_standin

    with running_standin(tmp_path_factory.mktemp("standin")) as running:
        yield running
