"""Issue 11 items 1 and 11, and 12.3, through a real Slurm 22.05 (testenv/slurm-cluster) and the local
backend, with two distinct ordinary users submitting: the attacker (dwsbuser, testenv's job user) and
the victim (dwsbt-slurmvictim).

The cluster runs under its own base directory and ports (6850/6851 unless DWSB_STORAGE_CTLD_PORT /
DWSB_STORAGE_SLURMD_PORT say otherwise), started once for this module and always stopped.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dwsbridge.config import load_config
from dwsbridge.lifecycle import Lifecycle
from tests.helpers_users import ensure_user
from tests.slurm_support import SCRIPT, USER, SlurmCluster, slurm_env, slurm_skip_reason, text, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]

BASE = Path(os.environ.get("DWSB_STORAGE_E2E_BASE", "/tmp/dwsb-slurm-storage"))
VICTIM = "dwsbt-slurmvictim"

if slurm_skip_reason():
    pytest.skip(slurm_skip_reason() or "", allow_module_level=True)

WRITER = """
import os, sys
top, stop = sys.argv[1], sys.argv[2]
open(os.path.join(top, "started"), "w").close()
i = 0
while not os.path.exists(stop):
    i += 1
    try:
        os.mkdir(f"{top}/w{i}")
    except OSError:
        pass
"""


@dataclass
class Cluster(SlurmCluster):
    lifecycle: Lifecycle

    def submit_as(self, user: pwd.struct_passwd, name: str, body: str, *directives: str) -> tuple[str, Path]:
        """Submit a job as `user` from a directory of its own; (job id, that directory)."""
        work = self.base / "jobs" / f"{name}-{user.pw_name}"
        subprocess.run(["rm", "-rf", str(work)], check=True)
        work.mkdir(parents=True)
        os.chown(work, user.pw_uid, user.pw_gid)
        script = work / "job.sh"
        script.write_text("\n".join(["#!/bin/bash", f"#SBATCH -o {work}/job.out", *directives, body]) + "\n")
        os.chown(script, user.pw_uid, user.pw_gid)
        argv = ["runuser", "-u", user.pw_name, "--", "env", f"SLURM_CONF={self.env['SLURM_CONF']}"]
        argv += ["sbatch", "--parsable", "-D", str(work), str(script)]
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60, check=True)
        return proc.stdout.strip().split(";")[0], work

    def finish(self, job: str) -> str:
        state = self.wait_state(job, "COMPLETED", "FAILED", "CANCELLED")
        wait_for(lambda: not self.lifecycle.exists(f"bb{job}"), f"workflow bb{job} to be torn down")
        return state

    def held(self, job: str, hook: str) -> str:
        def reason() -> str | None:
            state, why = self.state(job)
            return why if state == "PENDING" and hook in why else None

        return str(wait_for(reason, f"job {job} to be held by {hook}"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    ensure_user(VICTIM)
    env = slurm_env(
        BASE,
        os.environ.get("DWSB_STORAGE_CTLD_PORT", "6850"),
        os.environ.get("DWSB_STORAGE_SLURMD_PORT", "6851"),
    )
    try:
        subprocess.run([str(SCRIPT), "start"], env=env, check=True, timeout=120)
        yield Cluster(env, pwd.getpwnam(USER), Lifecycle(load_config(BASE / "dwsbridge.yaml")))
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, check=False, timeout=120)
    for daemon in ("slurmctld", "slurmd", "munged", "agent"):
        assert not (BASE / "run" / f"{daemon}.pid").exists(), f"{daemon} left running"


def create_persistent(cluster: Cluster, user: pwd.struct_passwd, name: str) -> None:
    job, _ = cluster.submit_as(
        user, f"create-{name}", "true", f"#DW create_persistent type=xfs capacity=64MiB name={name} pool=dws"
    )
    assert cluster.finish(job) == "COMPLETED"


def test_a_name_the_attacker_destroyed_under_a_writer_gives_the_victim_a_clean_instance(
    cluster: Cluster,
) -> None:
    attacker, victim = cluster.user, pwd.getpwnam(VICTIM)
    create_persistent(cluster, attacker, "results")
    loot = cluster.base / "jobs" / "loot"
    subprocess.run(["rm", "-rf", str(loot)], check=True)
    loot.mkdir(parents=True)
    os.chown(loot, attacker.pw_uid, attacker.pw_gid)
    plant = f'ln -s {loot} "$DW_PERSISTENT_results/out" && echo PLANTED'
    job, work = cluster.submit_as(attacker, "plant", plant, "#DW persistentdw name=results")
    assert cluster.finish(job) == "COMPLETED" and "PLANTED" in text(work / "job.out")
    instance = Path(cluster.lifecycle.backend.store.get_persistent("results")["path"])  # type: ignore[attr-defined]

    stop = work / "stop"
    writer = subprocess.Popen(  # the attacker's own process on the node, adding entries all along
        ["runuser", "-u", USER, "--", sys.executable, "-c", WRITER, str(instance), str(stop)]
    )
    try:
        wait_for(lambda: (instance / "started").exists(), "the attacker's writer to start")
        job, _ = cluster.submit_as(attacker, "destroy", "true", "#DW destroy_persistent name=results")
        assert cluster.finish(job) == "COMPLETED"
    finally:
        stop.touch()
        writer.kill()
        writer.wait(timeout=30)
    assert not instance.exists()

    create_persistent(cluster, victim, "results")
    body = "\n".join(
        [
            'echo "ENTRIES=$(ls -A "$DW_PERSISTENT_results" | wc -l)"',
            'echo victim-data > "$DW_PERSISTENT_results/out"',
        ]
    )
    job, work = cluster.submit_as(victim, "use", body, "#DW persistentdw name=results")
    assert cluster.finish(job) == "COMPLETED"
    assert "ENTRIES=0" in text(work / "job.out")
    assert os.listdir(loot) == []
    assert (instance / "out").read_text() == "victim-data\n" and instance.stat().st_uid == victim.pw_uid
    job, _ = cluster.submit_as(victim, "destroy", "true", "#DW destroy_persistent name=results")
    assert cluster.finish(job) == "COMPLETED"


def test_a_victims_job_naming_the_attackers_instance_is_held_with_a_clear_reason(cluster: Cluster) -> None:
    attacker, victim = cluster.user, pwd.getpwnam(VICTIM)
    create_persistent(cluster, attacker, "expected")
    job, work = cluster.submit_as(victim, "steered", "echo ran", "#DW persistentdw name=expected")
    reason = cluster.held(job, "slurm_bb_setup")
    assert "persistent storage 'expected' belongs to another user" in reason
    assert "persistent_sharing: owner" in reason
    cluster.run("scancel", job)
    assert cluster.finish(job) == "CANCELLED"
    assert not (work / "job.out").exists()
    job, _ = cluster.submit_as(attacker, "destroy", "true", "#DW destroy_persistent name=expected")
    assert cluster.finish(job) == "COMPLETED"


def test_destroying_an_absent_name_is_held_at_setup_saying_what_is_missing(cluster: Cluster) -> None:
    job, _ = cluster.submit_as(cluster.user, "absent", "echo ran", "#DW destroy_persistent name=never-made")
    reason = cluster.held(job, "slurm_bb_setup")
    assert "persistent storage 'never-made' does not exist, so there is nothing to destroy" in reason
    cluster.run("scancel", job)
    assert cluster.finish(job) == "CANCELLED"
