"""Issue 12.1: nnf-sos's Proposal checks, offline, with NNF's messages (DESIGN Part 11), refused the
same way at submit by Slurm's job_process, Flux's validator, `dwsbridge validate` and the local
backend. One row per rule; every refused row was accepted before these checks existed."""

from __future__ import annotations

import pwd
from pathlib import Path
from types import SimpleNamespace

import pytest

from dwsbridge.backends.local.backend import LocalBackend
from dwsbridge.cli import main
from dwsbridge.config import Config
from dwsbridge.directives import RuleSet, check_job
from dwsbridge.errors import AdmissionError
from dwsbridge.flux.validator import check_jobspec
from dwsbridge.lifecycle import Lifecycle
from dwsbridge.slurm import SlurmHooks, run_hook
from tests.conftest import needs_root

GFS2 = "#DW jobdw type=gfs2 capacity=1GiB name=fast"
CONTAINER = "#DW container name=app profile=demo"

# (directives, NNF's message the refusal starts with, the argument it names)
REFUSED: list[tuple[list[str], str, str]] = [
    (["#DW jobdw type=xfs capacity=0GiB name=scratch"], "'capacity' must be a non-zero value", "capacity"),
    (
        ["#DW jobdw type=lustre capacity=000TB name=scratch"],
        "'capacity' must be a non-zero value",
        "capacity",
    ),
    (
        ["#DW create_persistent type=xfs capacity=0KiB name=pers"],
        "'capacity' must be a non-zero value",
        "capacity",
    ),
    ([GFS2, f"{CONTAINER} DW_JOB_data=other"], "jobdw directive mentioning 'other' not found", "DW_JOB_data"),
    (
        ["#DW persistentdw name=fast", f"{CONTAINER} DW_JOB_data=fast"],
        "jobdw directive mentioning 'fast' not found",
        "DW_JOB_data",
    ),
    (
        ["#DW jobdw type=xfs capacity=1GiB name=local", f"{CONTAINER} DW_JOB_data=local"],
        "unsupported container filesystem: xfs",
        "DW_JOB_data",
    ),
    (
        [GFS2, f"{CONTAINER} DW_PERSISTENT_data=shared"],
        "persistentdw directive mentioning 'shared' not found",
        "DW_PERSISTENT_data",
    ),
    (
        [GFS2, f"{CONTAINER} DW_JOB_data=fast DW_GLOBAL_lus=lus/relative"],
        "global Lustre file system containing 'lus/relative' not found",
        "DW_GLOBAL_lus",
    ),
]

ACCEPTED: list[list[str]] = [
    ["#DW jobdw type=xfs capacity=1GiB name=scratch"],
    ["#DW create_persistent type=lustre name=pers"],  # capacity is optional for create_persistent
    [GFS2, f"{CONTAINER} DW_JOB_data=fast"],
    ["#DW jobdw type=lustre capacity=1TB name=big", f"{CONTAINER} DW_JOB_data=big"],
    ["#DW jobdw type=raw capacity=1TB name=dev", f"{CONTAINER} DW_JOB_data=dev"],
    ["#DW persistentdw name=shared", f"{CONTAINER} DW_PERSISTENT_data=shared"],
    [GFS2, f"{CONTAINER} DW_JOB_data=fast DW_GLOBAL_lus=/lus/global/project"],
    [CONTAINER],
]


def reasons(texts: list[str], **kwargs: object) -> list[tuple[str, str]]:
    return [(e.reason, e.argument) for e in check_job(texts, **kwargs)[1]]  # type: ignore[arg-type]


@pytest.mark.parametrize(("texts", "message", "argument"), REFUSED)
def test_nnf_refuses_at_proposal_and_so_do_we(texts: list[str], message: str, argument: str) -> None:
    found = reasons(texts)
    assert len(found) == 1, found
    assert found[0][0].startswith(message) and found[0][1] == argument, found


@pytest.mark.parametrize("texts", ACCEPTED)
def test_nnf_accepts_and_so_do_we(texts: list[str]) -> None:
    assert reasons(texts) == []


def test_a_persistent_instance_on_xfs_cannot_go_into_a_container() -> None:
    texts = ["#DW persistentdw name=shared", f"{CONTAINER} DW_PERSISTENT_data=shared"]
    kinds = {"shared": "xfs"}
    assert reasons(texts, persistent_fs=kinds.get) == [
        (
            "unsupported container filesystem: xfs (storage 'shared' given as DW_PERSISTENT_data; "
            "a container can mount lustre, gfs2, raw)",
            "DW_PERSISTENT_data",
        )
    ]
    assert reasons(texts, persistent_fs={"shared": "Lustre"}.get) == []  # NNF compares lower-cased


def test_any_other_container_argument_is_unrecognized_when_the_ruleset_lets_it_through() -> None:
    open_rules = RuleSet.from_yaml(
        "kind: DWDirectiveRule\nspec:\n- command: container\n  ruleDefs:\n"
        "  - {key: '^name$', type: string}\n  - {key: '^profile$', type: string}\n"
        "  - {key: '.', type: string}\n"
    )
    assert reasons([f"{CONTAINER} mount=/x"], ruleset=open_rules) == [
        (
            "unrecognized container argument: mount "
            "(use DW_JOB_<name>, DW_PERSISTENT_<name> or DW_GLOBAL_<name>)",
            "mount",
        )
    ]


def test_an_argument_the_ruleset_refuses_is_reported_once() -> None:
    found = reasons([f"{CONTAINER} mount=/x"])
    assert len(found) == 1 and found[0][0].startswith("unsupported argument 'mount'")


def test_every_container_argument_is_checked_not_just_the_first() -> None:
    found = reasons([GFS2, f"{CONTAINER} DW_JOB_aa=gone DW_PERSISTENT_bb=gone2 DW_GLOBAL_cc=rel"])
    assert [argument for _, argument in found] == ["DW_JOB_aa", "DW_PERSISTENT_bb", "DW_GLOBAL_cc"]


# --- the same refusal on every submit path ------------------------------------------------------------

XFS_CONTAINER = ["#DW jobdw type=xfs capacity=1GiB name=local pool=dws", f"{CONTAINER} DW_JOB_data=local"]
MESSAGE = "unsupported container filesystem: xfs"


def test_slurm_job_process_refuses_it(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("\n".join(["#!/bin/bash", *XFS_CONTAINER, "hostname"]) + "\n\0")
    result = run_hook(SlurmHooks(Config(root=tmp_path)), "job_process", [str(script)])
    assert not result.ok and MESSAGE in result.payload


def test_flux_validator_refuses_it() -> None:
    jobspec = {"attributes": {"system": {"dw": " ".join(d.replace(" pool=dws", "") for d in XFS_CONTAINER)}}}
    assert MESSAGE in (check_jobspec(SimpleNamespace(**jobspec).__dict__) or "")


def test_validate_cli_refuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DWSBRIDGE_CONFIG", str(tmp_path / "config.yaml"))
    (tmp_path / "config.yaml").write_text("")
    script = tmp_path / "job.sh"
    script.write_text("\n".join(["#!/bin/bash", *XFS_CONTAINER]) + "\n")
    assert main(["validate", "--wlm", "slurm", str(script)]) == 1
    assert MESSAGE in capsys.readouterr().err


@needs_root
def test_local_backend_refuses_it_at_create(local_config: Config, job_user: pwd.struct_passwd) -> None:
    lc = Lifecycle(local_config, LocalBackend(local_config))
    texts = [d.replace(" pool=dws", "") for d in XFS_CONTAINER]
    with pytest.raises(AdmissionError, match=MESSAGE):
        lc.create(wlm="slurm", job_id=5, uid=job_user.pw_uid, gid=job_user.pw_gid, directives=texts)
    assert lc.list() == []


@needs_root
def test_local_backend_knows_a_persistent_instances_filesystem(
    local_config: Config, job_user: pwd.struct_passwd
) -> None:
    lc = Lifecycle(local_config, LocalBackend(local_config))
    user = {"uid": job_user.pw_uid, "gid": job_user.pw_gid}
    made = lc.create(wlm="slurm", job_id=20, directives=["#DW create_persistent type=xfs name=keep"], **user)
    lc.walk(made, ["Setup", "DataIn", "PreRun", "PostRun", "DataOut"])
    lc.teardown(made)
    texts = ["#DW persistentdw name=keep", f"{CONTAINER} DW_PERSISTENT_data=keep"]
    try:
        with pytest.raises(AdmissionError, match=MESSAGE):
            lc.create(wlm="slurm", job_id=21, directives=texts, **user)
    finally:
        gone = lc.create(wlm="slurm", job_id=22, directives=["#DW destroy_persistent name=keep"], **user)
        lc.walk(gone, ["Setup", "DataIn", "PreRun", "PostRun", "DataOut"])
        lc.teardown(gone)
