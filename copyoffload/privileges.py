"""Who a copy runs as: the credentials of a job's user, and proof that a child cannot get root back."""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

# Copies set every final mode explicitly from the source, so the umask only governs transient files
# (temporary names, directories before their final mode): keep those private to the user.
COPY_UMASK = 0o077


@dataclass(frozen=True)
class Credentials:
    """A user to act as: uid, primary gid, and supplementary groups (from the group database)."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str | None = None


def credentials_for(uid: int, gid: int) -> Credentials:
    """The user's supplementary groups from passwd/group; just `[gid]` when the uid has no passwd entry."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return Credentials(uid=uid, gid=gid, groups=(gid,))
    try:
        groups = os.getgrouplist(name, gid)
    except OSError:
        groups = [gid] + [g.gr_gid for g in grp.getgrall() if name in g.gr_mem]
    return Credentials(uid=uid, gid=gid, groups=tuple(sorted(set(groups))), name=name)


def running_as_root() -> bool:
    return os.geteuid() == 0


class PrivilegeError(Exception):
    """The process is not running as the user it was meant to, or could become root again."""


def verify_dropped(uid: int, gid: int) -> None:
    """Raise PrivilegeError unless real, effective and saved ids are the user's and root is out of reach."""
    if uid == 0:
        return
    ruid, euid, suid = os.getresuid()
    rgid, egid, sgid = os.getresgid()
    if {ruid, euid, suid} != {uid} or {rgid, egid, sgid} != {gid}:
        raise PrivilegeError(
            f"expected uid/gid {uid}/{gid}, running as uids {ruid},{euid},{suid} gids {rgid},{egid},{sgid}"
        )
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivilegeError("dropped privileges but setuid(0) succeeded")
