"""How workflows are shown to people: one table for `dwsbridge status` and `scontrol show bbstat`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dwsbridge.lifecycle import WorkflowStatus


def format_table(statuses: Sequence[WorkflowStatus]) -> str:
    header = ("NAME", "JOB", "USER", "DESIRED", "CURRENT", "READY", "STATUS", "AGE")
    rows = [header]
    for s in sorted(statuses, key=lambda s: (len(s.job_id), s.job_id)):
        rows.append(
            (
                s.name,
                s.job_id,
                user_name(s.uid),
                s.desired,
                s.current,
                "true" if s.ready else "false",
                s.status or "-",
                format_age(s.age),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if len(rows) == 1:
        lines.append("(no workflows)")
    return "\n".join(lines) + "\n"


def user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return str(uid)


def format_age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def format_detail(s: WorkflowStatus) -> str:
    """One workflow, every field on its own line: what an admin needs to see why it is stuck."""
    fields = [
        ("Name", s.name),
        ("WLM", s.wlm),
        ("Job", s.job_id),
        ("User", f"{user_name(s.uid)} (uid {s.uid}, gid {s.gid})"),
        ("Desired state", s.desired),
        ("Current state", s.current),
        ("Ready", "true" if s.ready else "false"),
        ("Status", s.status or "-"),
        ("Hurry", "true" if s.hurry else "false"),
        ("Age", format_age(s.age)),
        ("Message", s.message or "-"),
    ]
    width = max(len(label) for label, _ in fields)
    return "".join(f"{label + ':':<{width + 1}} {value}\n" for label, value in fields)
