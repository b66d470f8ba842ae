"""Issue 11.2 on a real Slurm 22.05: a hostile user's sbatch of the 1 MB flood script is refused
promptly with a short message, and neither slurmctld nor the bridge agent (which validates for it)
grows; a job within the caps but full of bad staging references gets a bounded error list.

Own cluster, base directory and ports (6900/6901 unless DWSB_LIMITS_CTLD_PORT/_SLURMD_PORT say).
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testenv.hostile_jobs import flood_directives, flood_script
from tests.slurm_support import SCRIPT, USER, SlurmCluster, slurm_env, slurm_skip_reason

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]

BASE = Path(os.environ.get("DWSB_LIMITS_BASE", "/tmp/dwsb-slurm-limits"))

if slurm_skip_reason():
    pytest.skip(slurm_skip_reason() or "", allow_module_level=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    env = slurm_env(
        BASE,
        os.environ.get("DWSB_LIMITS_CTLD_PORT", "6900"),
        os.environ.get("DWSB_LIMITS_SLURMD_PORT", "6901"),
    )
    try:
        subprocess.run([str(SCRIPT), "start"], env=env, check=True, timeout=120)
        yield SlurmCluster(env, pwd.getpwnam(USER))
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, check=False, timeout=120)
    for daemon in ("slurmctld", "slurmd", "munged", "agent"):
        assert not (BASE / "run" / f"{daemon}.pid").exists(), f"{daemon} left running"


def rss_kib(cluster: SlurmCluster, daemon: str) -> int:
    pid = (cluster.base / "run" / f"{daemon}.pid").read_text().strip()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {daemon} ({pid})")


def refused(cluster: SlurmCluster, name: str, script: str) -> str:
    """sbatch `script` as the ordinary user; it must be refused; sbatch's error output."""
    work = cluster.workdir(name)
    path = work / "job.sh"
    path.write_text(script)
    os.chown(path, cluster.user.pw_uid, cluster.user.pw_gid)
    proc = cluster.sbatch(path, check=False)  # 60 s bound on the whole submission
    assert proc.returncode != 0, proc.stdout
    return proc.stderr


def test_sbatch_of_the_flood_script_is_refused_promptly_and_costs_no_memory(cluster: SlurmCluster) -> None:
    before = {d: rss_kib(cluster, d) for d in ("slurmctld", "agent")}
    err = refused(cluster, "flood", flood_script())
    assert "the job has 16000 #DW directives; this site allows at most 1000 per job" in err, err
    assert "max_directives" in err and len(err) < 2048, err
    after = {d: rss_kib(cluster, d) for d in ("slurmctld", "agent")}
    for daemon in before:  # before the caps: +316 MB in slurmctld
        assert after[daemon] - before[daemon] < 48 * 1024, (daemon, before, after)


def test_sbatch_of_many_bad_staging_references_gets_a_bounded_error(cluster: SlurmCluster) -> None:
    before = rss_kib(cluster, "slurmctld")
    lines = flood_directives(jobdw=200, copy_in=790, bad=700)
    err = refused(cluster, "bad-refs", "\n".join(["#!/bin/bash", *lines, "hostname"]) + "\n")
    assert err.count("names jobdw storage 'missing") == 20, err
    assert "... and 680 more problems" in err and len(err) < 16 * 1024, len(err)
    assert rss_kib(cluster, "slurmctld") - before < 48 * 1024
