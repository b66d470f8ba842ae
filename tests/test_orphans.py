"""Workflows whose Slurm job Slurm has forgotten are torn down; everything else is left alone."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from dwsbridge import orphans
from dwsbridge.backends.local.backend import LocalBackend
from dwsbridge.config import Config
from dwsbridge.lifecycle import Lifecycle
from tests.conftest import needs_root

JOBDW = ["#DW jobdw type=xfs capacity=1GiB name=scratch"]


@pytest.fixture
def lc(local_config: Config) -> Lifecycle:
    return Lifecycle(local_config, LocalBackend(local_config))


def make(lc: Lifecycle, user: pwd.struct_passwd, wlm: str, job: int) -> str:
    name = lc.create(wlm=wlm, job_id=job, uid=user.pw_uid, gid=user.pw_gid, directives=JOBDW)
    lc.advance_to(name, "Setup")
    return name


@needs_root
def test_only_slurm_workflows_of_forgotten_jobs_are_torn_down(
    lc: Lifecycle, job_user: pwd.struct_passwd
) -> None:
    known = make(lc, job_user, "slurm", 1)
    forgotten = make(lc, job_user, "slurm", 2)
    flux = make(lc, job_user, "flux", 3)
    storage = Path(lc.environment(forgotten)["DW_JOB_scratch"])
    assert orphans.sweep(lc, min_age=0, known_jobs=lambda: {"1", "77"}) == [forgotten]
    assert lc.exists(known) and lc.exists(flux) and not lc.exists(forgotten)
    assert not storage.exists()


@needs_root
def test_young_workflows_are_left_for_their_hooks(lc: Lifecycle, job_user: pwd.struct_passwd) -> None:
    name = make(lc, job_user, "slurm", 4)
    assert orphans.sweep(lc, min_age=3600, known_jobs=lambda: set()) == []
    assert lc.exists(name)


@needs_root
def test_nothing_is_torn_down_when_slurm_cannot_be_asked(lc: Lifecycle, job_user: pwd.struct_passwd) -> None:
    name = make(lc, job_user, "slurm", 5)
    assert orphans.sweep(lc, min_age=0, known_jobs=lambda: None) == []
    assert lc.exists(name)


def fake_squeue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    script = tmp_path / "squeue"
    script.write_text("#!/bin/sh\n" + f'echo "$@" > {tmp_path}/args\n' + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    return tmp_path / "args"


def test_job_ids_come_from_every_job_slurm_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = fake_squeue(tmp_path, monkeypatch, "printf '12\\n13\\n0013\\n'\n")
    assert orphans.slurm_job_ids() == {"12", "13"}
    # every state, hidden partitions and array tasks too, and only the job id column
    assert args.read_text().split() == ["--all", "--noheader", "--states=all", "--array", "--format=%A"]


def test_an_empty_cluster_has_no_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_squeue(tmp_path, monkeypatch, "true\n")
    assert orphans.slurm_job_ids() == set()


def test_a_failing_squeue_means_unknown_not_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_squeue(
        tmp_path,
        monkeypatch,
        "echo 'slurm_load_jobs error: Unable to contact slurm controller \\377' >&2\nexit 1\n",
    )
    assert orphans.slurm_job_ids() is None


def test_output_that_is_not_job_ids_means_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_squeue(tmp_path, monkeypatch, "printf '12\\nJobId=13 \\377\\n'\n")
    assert orphans.slurm_job_ids() is None
