"""copy_as_user from root: the user's data is read and written only as the user, never as root."""

from __future__ import annotations

import grp
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from copyoffload.mover import CopyCancelled, CopyError, copy_as_user
from copyoffload.privileges import credentials_for
from tests.helpers_users import ensure_user, shared_tmpdir

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates users, drops privileges)"),
]

GROUP = "dwsbt-movergrp"


@pytest.fixture
def user() -> tuple[int, int]:
    return ensure_user("dwsbt-mover1", groups=(GROUP,))


@pytest.fixture
def base(user: tuple[int, int]) -> Iterator[Path]:
    """A world-traversable directory holding `src` (a small tree) and `out`, both owned by the user."""
    uid, gid = user
    with shared_tmpdir() as tmp:
        root = Path(tmp)
        src = root / "src"
        (src / "sub").mkdir(parents=True)
        (src / "a.txt").write_text("alpha\n")
        (src / "sub" / "b.bin").write_bytes(os.urandom(50_000))
        (root / "out").mkdir()
        for path in (src, src / "sub", src / "a.txt", src / "sub" / "b.bin", root / "out"):
            os.chown(path, uid, gid)
        yield root


def test_copy_as_user_produces_files_owned_by_the_user(base: Path, user: tuple[int, int]) -> None:
    copy_as_user(base / "src", base / "out", uid=user[0], gid=user[1])
    copied = [base / "out" / "src", base / "out" / "src" / "a.txt", base / "out" / "src" / "sub" / "b.bin"]
    assert [(p.stat().st_uid, p.stat().st_gid) for p in copied] == [user] * 3
    assert (base / "out" / "src" / "sub" / "b.bin").read_bytes() == (
        base / "src" / "sub" / "b.bin"
    ).read_bytes()


def test_root_owned_private_source_is_not_copied(base: Path, user: tuple[int, int]) -> None:
    secret = base / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    with pytest.raises(CopyError, match=r"cannot read .*/secret: Permission denied"):
        copy_as_user(secret, base / "out", uid=user[0], gid=user[1])
    assert not (base / "out" / "secret").exists()


def test_destination_under_a_root_owned_directory_is_refused(base: Path, user: tuple[int, int]) -> None:
    locked = base / "locked"
    locked.mkdir(mode=0o755)
    with pytest.raises(CopyError, match=r"locked/src: Permission denied"):
        copy_as_user(base / "src", locked, uid=user[0], gid=user[1])
    assert os.listdir(locked) == []


def test_supplementary_groups_grant_access(base: Path, user: tuple[int, int]) -> None:
    shared = base / "group_only.txt"
    shared.write_text("for the group\n")
    os.chown(shared, 0, grp.getgrnam(GROUP).gr_gid)
    shared.chmod(0o640)
    copy_as_user(shared, base / "out", uid=user[0], gid=user[1])
    assert (base / "out" / "group_only.txt").read_text() == "for the group\n"


def test_user_without_passwd_entry_gets_only_its_gid() -> None:
    creds = credentials_for(4_000_000_001, 4_000_000_002)
    assert creds.groups == (4_000_000_002,)


def test_killing_the_childs_process_group_stops_the_copy(base: Path, user: tuple[int, int]) -> None:
    def kill_group(pid: int) -> None:
        os.killpg(pid, signal.SIGKILL)

    with pytest.raises(CopyCancelled, match="killed by SIGKILL"):
        copy_as_user(base / "src", base / "out", uid=user[0], gid=user[1], on_child=kill_group)


def test_child_runs_in_its_own_process_group_as_the_user(base: Path, user: tuple[int, int]) -> None:
    seen: dict[str, tuple[int, ...]] = {}
    started = threading.Event()

    def inspect(pid: int) -> None:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        fields = {line.split(":")[0]: line.split(":")[1].split() for line in status if ":" in line}
        seen["uid"] = tuple(int(x) for x in fields["Uid"])
        seen["pgid"] = (os.getpgid(pid), pid)
        started.set()

    copy_as_user(base / "src", base / "out", uid=user[0], gid=user[1], on_child=inspect)
    assert started.is_set()
    assert seen["pgid"][0] == seen["pgid"][1]
    assert seen["uid"] == (user[0],) * 4


def test_child_refuses_to_copy_when_not_running_as_the_expected_user(base: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "copyoffload.mover",
            str(base / "src"),
            str(base / "out"),
            "--expect-uid",
            "12345",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 3
    assert "refusing to copy" in proc.stderr
    assert os.listdir(base / "out") == []


def test_external_command_copier_runs_as_the_user_with_the_users_groups(user: tuple[int, int]) -> None:
    """A profile's command (e.g. dcp) gets exactly the user's rights: uid, gid and supplementary groups."""
    from copyoffload.jobs import CopyRequest, Profile, command_copier

    last = command_copier(
        CopyRequest("c", "/a", "/b"),
        profile=Profile("ids", command=("sh", "-c", "echo $(id -u) $(id -G)")),
        workers=1,
        uid=user[0],
        gid=user[1],
        progress=lambda p: None,
        cancel=threading.Event(),
        on_child=lambda pid: None,
    )
    uid, *groups = (int(word) for word in last.split())
    assert uid == user[0]
    assert sorted(groups) == sorted(credentials_for(*user).groups)
    assert grp.getgrnam(GROUP).gr_gid in groups and 0 not in groups
