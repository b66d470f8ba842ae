"""Workflows whose Slurm job Slurm no longer knows: torn down, so no storage or token outlives its job.

Slurm keeps a job record until its burst-buffer teardown has finished, so a job Slurm has forgotten
while its workflow still exists means a teardown that never ran to the end (a hook killed at the
wrong moment, a controller restart with lost state). Only that case is acted on: a job Slurm still
lists, in any state, is left to Slurm's own hooks.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Callable, Iterable

from dwsbridge.errors import DwsBridgeError
from dwsbridge.lifecycle import Lifecycle, WorkflowStatus

log = logging.getLogger("dwsbridge.orphans")

_JOB_ID = re.compile(r"(?:^|\s)JobId=(\d+)\s")


def slurm_job_ids(timeout: float = 30.0) -> set[str] | None:
    """Every job id slurmctld still holds (array tasks included), or None when it cannot be asked."""
    try:
        proc = subprocess.run(
            ["scontrol", "-o", "show", "job"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("orphan sweep skipped: cannot run scontrol: %s", exc)
        return None
    if proc.returncode != 0:
        log.warning("orphan sweep skipped: scontrol failed: %s", proc.stderr.strip()[:200])
        return None
    return {match.group(1) for match in _JOB_ID.finditer(proc.stdout)}


def orphans(statuses: Iterable[WorkflowStatus], known_jobs: set[str], min_age: float) -> list[WorkflowStatus]:
    """Slurm workflows older than `min_age` seconds whose job is not among `known_jobs`."""
    return [
        s
        for s in statuses
        if s.wlm == "slurm" and s.job_id.isdigit() and s.job_id not in known_jobs and s.age >= min_age
    ]


def sweep(
    lifecycle: Lifecycle,
    *,
    min_age: float,
    known_jobs: Callable[[], set[str] | None] = slurm_job_ids,
) -> list[str]:
    """Tear down (with hurry) every orphaned workflow; return their names."""
    candidates = [s for s in lifecycle.list() if s.wlm == "slurm" and s.age >= min_age]
    if not candidates:
        return []
    jobs = known_jobs()
    if jobs is None:
        return []
    removed = []
    for status in orphans(candidates, jobs, min_age):
        log.warning(
            "workflow=%s job=%s: Slurm no longer knows the job; tearing the workflow down (it was %s/%s)",
            status.name,
            status.job_id,
            status.current,
            status.status or "-",
        )
        try:
            lifecycle.teardown(status.name, hurry=True)
        except DwsBridgeError as exc:
            log.error("workflow=%s job=%s: orphan teardown failed: %s", status.name, status.job_id, exc)
            continue
        removed.append(status.name)
    return removed
