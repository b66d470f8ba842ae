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

# One job id per line and nothing else: `scontrol -o show job` cannot be parsed safely, as a job name
# may hold a newline followed by "JobId=N " (and bytes that are not UTF-8), both set by the job's user.
# `--all` includes hidden partitions (a job there is still a job), `--array` every array task.
SQUEUE = ("squeue", "--all", "--noheader", "--states=all", "--array", "--format=%A")
_JOB_ID = re.compile(rb"[0-9]+")


def slurm_job_ids(timeout: float = 30.0) -> set[str] | None:
    """Every job id slurmctld still holds (array tasks included), or None when it cannot be asked."""
    try:
        proc = subprocess.run(list(SQUEUE), capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("orphan sweep skipped: cannot run squeue: %s", exc)
        return None
    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip()[:200]
        log.warning("orphan sweep skipped: squeue failed: %s", message)
        return None
    ids = set()
    for line in proc.stdout.split(b"\n"):
        word = line.strip()
        if not word:
            continue
        if not _JOB_ID.fullmatch(word):  # a job squeue printed that we cannot name: never guess
            log.warning("orphan sweep skipped: unexpected squeue line %r", word[:80])
            return None
        ids.add(str(int(word)))
    return ids


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
