"""dws-jobtap semantics on the in-memory job manager with the local backend: each flux-coral2 scenario
(t1000) and ours, checked as the job's RFC 21 eventlog, in order."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from dwsbridge.config import Config
from dwsbridge.directives import validate_job
from dwsbridge.errors import ValidationFailed
from dwsbridge.flux import protocol
from dwsbridge.flux.protocol import Reply
from tests.conftest import needs_root
from tests.flux_support import FluxBridge, make_bridge
from tests.helpers_users import ensure_user

UID = os.getuid()
JOBDW = "#DW jobdw type=xfs capacity=1GiB name=data"
PREFIX = protocol.NOTE_PREFIX

NORMAL = [
    "submit",
    "dependency-add",
    "dependency-remove",
    "depend",
    "priority",
    "alloc",
    "prolog-start",
    "dws_environment",
    "prolog-finish",
    "start",
    "finish",
    "epilog-start",
    "release",
    "epilog-finish",
    "free",
    "clean",
]
REFUSED_AT_CREATE = ["submit", "dependency-add", "exception", "clean"]


def normal_until(event: str) -> list[str]:
    """The normal path's eventlog up to and including `event`."""
    return NORMAL[: NORMAL.index(event) + 1]


@pytest.fixture
def bridge(local_config: Config) -> FluxBridge:
    return make_bridge(local_config)


def nothing_left(bridge: FluxBridge, config: Config) -> None:
    assert bridge.lifecycle.list() == []
    jobs = config.root / "storage" / "jobs"
    assert not jobs.exists() or list(jobs.iterdir()) == []


def test_normal_path_moves_data_for_real_and_gives_the_job_its_environment(
    local_config: Config, world_tmp: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the job as an ordinary user")
    uid, gid = ensure_user("dwsbt-flux")
    inbox, outbox = world_tmp / "in", world_tmp / "out"
    for path in (inbox, outbox):
        path.mkdir()
        os.chown(path, uid, gid)
    (inbox / "input.txt").write_bytes(b"measurements\n" * 1000)
    os.chown(inbox / "input.txt", uid, gid)
    bridge = make_bridge(local_config)
    seen: dict[str, str] = {}

    def task(env: dict[str, str]) -> int:
        """The job: as its user, read the staged input and write a result into job storage."""
        seen.update(env)
        data = env["DW_JOB_data"]
        command = (
            f"cmp {data}/input.txt {inbox}/input.txt && tr a-z A-Z < {data}/input.txt > {data}/result.txt"
        )
        return subprocess.run(
            ["sh", "-c", command], user=uid, group=gid, extra_groups=[], check=False
        ).returncode

    job = bridge.run_job(
        userid=uid,
        dw=f"{JOBDW} requires=copy-offload "
        f"#DW copy_in source={inbox}/input.txt destination=$DW_JOB_data/ "
        f"#DW copy_out source=$DW_JOB_data/result.txt destination={outbox}/",
        task=task,
    )
    assert job.names() == NORMAL
    assert job.context("dependency-add") == {"description": "dws-create"}
    assert job.context("dependency-remove") == {"description": "dws-create"}
    assert job.context("prolog-finish") == {"description": "dws-setup", "status": 0}
    assert job.context("finish") == {"status": 0}
    assert job.context("epilog-finish") == {"description": "dws-epilog", "status": 0}
    variables = job.context("dws_environment")["variables"]
    assert variables["DW_WORKFLOW_NAME"] == f"fluxjob-{job.id}"
    assert variables["DW_JOB_data"].startswith(str(local_config.root))
    assert variables["DW_JOBS"] == f"data:{variables['DW_JOB_data']}"
    assert len(variables["DW_WORKFLOW_TOKEN"].split(".")) == 3  # a JWT
    assert seen == variables  # what the shell plugin exports is what the job ran with
    result = outbox / "result.txt"
    assert result.read_bytes() == b"MEASUREMENTS\n" * 1000
    assert result.stat().st_uid == uid
    assert bridge.lifecycle.teardowns == [(f"fluxjob-{job.id}", False)]
    nothing_left(bridge, local_config)


def test_service_absent_raises_a_dws_exception_and_the_job_is_cleaned(local_config: Config) -> None:
    bridge = make_bridge(local_config, with_service=False)
    job = bridge.run_job(userid=UID, dw=JOBDW)
    assert job.names() == REFUSED_AT_CREATE
    exception = job.context("exception")
    assert (exception["type"], exception["severity"]) == ("dws", 0)
    assert exception["note"].startswith(PREFIX + "dws.create: No service matching dws.create is registered")


def test_create_failure_raises_the_directive_message(bridge: FluxBridge, local_config: Config) -> None:
    bad = "#DW jobdw type=bogus capacity=1GiB name=data"
    job = bridge.run_job(userid=UID, dw=bad)
    assert job.names() == REFUSED_AT_CREATE
    with pytest.raises(ValidationFailed) as expected:
        validate_job([bad], wlm="flux")
    assert job.context("exception") == {
        "type": "dws",
        "severity": 0,
        "note": PREFIX + str(expected.value),
        "userid": UID,
    }
    nothing_left(bridge, local_config)


@pytest.mark.parametrize("tolerance", [-1, "many", 2.5])
def test_bad_dw_failure_tolerance_is_refused_clearly(
    bridge: FluxBridge, local_config: Config, tolerance: object
) -> None:
    job = bridge.run_job(userid=UID, dw=JOBDW, system={"dw_failure_tolerance": tolerance})
    assert job.names() == REFUSED_AT_CREATE
    assert job.context("exception")["note"] == (
        PREFIX + f"dw_failure_tolerance must be a non-negative integer, not {tolerance!r}"
    )
    assert bridge.requests("dws.create")[0]["failure_tolerance"] == tolerance
    nothing_left(bridge, local_config)


def test_good_dw_failure_tolerance_is_accepted(bridge: FluxBridge) -> None:
    job = bridge.run_job(userid=UID, dw=JOBDW, system={"dw_failure_tolerance": 2})
    assert job.names() == NORMAL


def test_setup_failure_fails_the_prolog_never_starts_and_still_runs_the_epilog(
    bridge: FluxBridge, local_config: Config, world_tmp: Path
) -> None:
    missing = world_tmp / "no-such-input"
    job = bridge.run_job(userid=UID, dw=f"{JOBDW} #DW copy_in source={missing} destination=$DW_JOB_data/")
    assert job.names() == [
        *normal_until("prolog-start"),
        "prolog-finish",
        "exception",
        "epilog-start",
        "epilog-finish",
        "free",
        "clean",
    ]
    assert job.context("prolog-finish") == {"description": "dws-setup", "status": 1}
    note = job.context("exception")["note"]
    assert note.startswith(PREFIX + f"workflow fluxjob-{job.id}: DataIn failed: #DW copy_in source={missing}")
    assert job.context("epilog-finish")["status"] == 0
    assert bridge.requests("dws.post_run") == [{"jobid": job.id, "run_started": False}]
    assert bridge.lifecycle.teardowns == [(f"fluxjob-{job.id}", True)]
    nothing_left(bridge, local_config)


def test_post_run_failure_fails_the_epilog_with_the_message(
    bridge: FluxBridge, local_config: Config, world_tmp: Path
) -> None:
    job = bridge.run_job(
        userid=UID, dw=f"{JOBDW} #DW copy_out source=$DW_JOB_data/never-written destination={world_tmp}/"
    )
    assert job.names() == [*normal_until("epilog-finish"), "exception", "free", "clean"]
    assert job.context("finish") == {"status": 0}
    assert job.context("epilog-finish") == {"description": "dws-epilog", "status": 1}
    note = job.context("exception")["note"]
    assert note.startswith(PREFIX + f"workflow fluxjob-{job.id}: DataOut failed: #DW copy_out")
    nothing_left(bridge, local_config)


def test_cancel_during_prolog_ends_it_with_status_1_and_tears_down_in_a_hurry(
    bridge: FluxBridge, local_config: Config
) -> None:
    bridge.jm.at("prolog-start", lambda job: bridge.jm.cancel(job.id), description="dws-setup")
    job = bridge.run_job(userid=UID, dw=JOBDW)
    assert job.names() == [
        *normal_until("prolog-start"),
        "exception",
        "prolog-finish",
        "epilog-start",
        "epilog-finish",
        "free",
        "clean",
    ]
    assert job.context("exception")["type"] == "cancel"
    assert job.context("prolog-finish")["status"] == 1
    assert job.context("epilog-finish")["status"] == 0
    assert bridge.topics() == ["dws.create", "dws.setup", "dws.teardown", "dws.post_run"]
    assert bridge.lifecycle.teardowns == [(f"fluxjob-{job.id}", True)]
    nothing_left(bridge, local_config)


def test_cancel_during_epilog_tears_down_in_a_hurry_without_staging_out(
    bridge: FluxBridge, local_config: Config, world_tmp: Path
) -> None:
    def task(env: dict[str, str]) -> int:
        Path(env["DW_JOB_data"], "result.txt").write_text("result\n")
        return 0

    bridge.jm.at("epilog-start", lambda job: bridge.jm.cancel(job.id), description="dws-epilog")
    job = bridge.run_job(
        userid=UID,
        dw=f"{JOBDW} #DW copy_out source=$DW_JOB_data/result.txt destination={world_tmp}/",
        task=task,
    )
    assert job.names() == [*normal_until("release"), "exception", "epilog-finish", "free", "clean"]
    assert job.context("exception")["type"] == "cancel"
    assert job.context("epilog-finish") == {"description": "dws-epilog", "status": 0}
    assert bridge.topics()[-2:] == ["dws.post_run", "dws.teardown"]
    assert bridge.lifecycle.teardowns == [(f"fluxjob-{job.id}", True)]
    assert not (world_tmp / "result.txt").exists()  # hurry skips DataOut
    nothing_left(bridge, local_config)


def test_dws_hurry_while_running_skips_stage_out(
    bridge: FluxBridge, local_config: Config, world_tmp: Path
) -> None:
    def task(env: dict[str, str]) -> int:
        Path(env["DW_JOB_data"], "result.txt").write_text("result\n")
        return 0

    bridge.jm.at("start", lambda job: bridge.jm.raise_now(job.id, "dws-hurry", "hurry"))
    job = bridge.run_job(
        userid=UID,
        dw=f"{JOBDW} #DW copy_out source=$DW_JOB_data/result.txt destination={world_tmp}/",
        task=task,
    )
    assert job.context("exception")["type"] == "dws-hurry", job.names()
    assert job.names().index("exception") < job.names().index("finish"), job.names()
    assert bridge.requests("dws.post_run")[-1]["run_started"] is False
    assert bridge.lifecycle.teardowns == [(f"fluxjob-{job.id}", True)]
    assert not (world_tmp / "result.txt").exists()
    nothing_left(bridge, local_config)


def test_cancel_before_run_tears_down_in_a_hurry_and_leaves_nothing(
    bridge: FluxBridge, local_config: Config
) -> None:
    bridge.jm.at("depend", lambda job: bridge.jm.cancel(job.id))
    job = bridge.run_job(userid=UID, dw=JOBDW)
    assert job.names() == [*normal_until("priority"), "exception", "epilog-start", "epilog-finish", "clean"]
    assert bridge.requests("dws.post_run") == [{"jobid": job.id, "run_started": False}]
    assert job.context("epilog-finish")["status"] == 0
    assert bridge.lifecycle.teardowns == [(f"fluxjob-{job.id}", True)]
    nothing_left(bridge, local_config)


def test_cancel_while_create_is_in_flight_still_tears_the_workflow_down(
    bridge: FluxBridge, local_config: Config
) -> None:
    bridge.jm.at("dependency-add", lambda job: bridge.jm.cancel(job.id))
    job = bridge.run_job(userid=UID, dw=JOBDW)
    assert job.names() == ["submit", "dependency-add", "exception", "epilog-start", "epilog-finish", "clean"]
    assert bridge.requests("dws.post_run") == [{"jobid": job.id, "run_started": False}]
    nothing_left(bridge, local_config)


def test_plugin_reloaded_while_the_prolog_waits_picks_the_job_up(
    bridge: FluxBridge, local_config: Config
) -> None:
    bridge.jm.at("prolog-start", lambda job: bridge.jm.reload_plugin(), description="dws-setup")
    job = bridge.run_job(userid=UID, dw=f"{JOBDW} requires=copy-offload")
    assert job.names() == NORMAL
    assert len(bridge.plugins) == 2
    assert bridge.topics() == ["dws.create", "dws.setup", "dws.setup", "dws.post_run"]
    assert "DW_WORKFLOW_TOKEN" in job.context("dws_environment")["variables"]
    assert job.context("finish") == {"status": 0}
    nothing_left(bridge, local_config)


def test_plugin_reloaded_before_run_as_in_flux_coral2(bridge: FluxBridge, local_config: Config) -> None:
    bridge.jm.at("dependency-remove", lambda job: bridge.jm.reload_plugin())
    job = bridge.run_job(userid=UID, dw=JOBDW)
    assert job.names() == NORMAL
    assert len(bridge.plugins) == 2
    nothing_left(bridge, local_config)


def test_plugin_reloaded_during_the_epilog_starts_no_second_epilog(
    bridge: FluxBridge, local_config: Config
) -> None:
    bridge.jm.at("epilog-start", lambda job: bridge.jm.reload_plugin(), description="dws-epilog")
    job = bridge.run_job(userid=UID, dw=JOBDW)
    assert job.names() == NORMAL
    assert bridge.topics() == ["dws.create", "dws.setup", "dws.post_run", "dws.post_run"]
    nothing_left(bridge, local_config)


def test_epilog_timeout_raises_dws_epilog_timeout_and_aborts(local_config: Config) -> None:
    bridge = make_bridge(local_config, epilog_timeout=30.0)
    bridge.jm.hang("dws.post_run")
    job = bridge.run_job(userid=UID, dw=JOBDW)
    assert job.names() == [*normal_until("release"), "exception", "epilog-finish", "free", "clean"]
    exception = job.context("exception")
    assert (exception["type"], exception["severity"]) == ("dws-epilog-timeout", 0)
    assert exception["note"] == PREFIX + "dws-epilog did not finish within 30s"
    assert job.context("epilog-finish") == {"description": "dws-epilog", "status": 1}
    assert bridge.topics()[-2:] == ["dws.post_run", "dws.abort"]
    assert bridge.lifecycle.teardowns == [(f"fluxjob-{job.id}", True)]
    nothing_left(bridge, local_config)


def test_epilog_timeout_posted_by_hand_aborts_too(bridge: FluxBridge, local_config: Config) -> None:
    bridge.jm.hang("dws.post_run")
    bridge.jm.at(
        "epilog-start",
        lambda job: bridge.jm.raise_exception(job.id, "dws-epilog-timeout", 0, "by hand"),
        description="dws-epilog",
    )
    job = bridge.run_job(userid=UID, dw=JOBDW)
    assert job.context("epilog-finish")["status"] == 1
    assert bridge.topics()[-1] == "dws.abort"
    nothing_left(bridge, local_config)


def test_a_finished_epilog_is_not_finished_again_by_a_late_timeout(local_config: Config) -> None:
    bridge = make_bridge(local_config, epilog_timeout=30.0)
    job = bridge.run_job(userid=UID, dw=JOBDW)
    assert job.names() == NORMAL
    assert "dws.abort" not in bridge.topics()


def test_jobs_without_dw_are_left_alone(bridge: FluxBridge) -> None:
    job = bridge.run_job(userid=UID)
    assert job.names() == [
        "submit",
        "depend",
        "priority",
        "alloc",
        "start",
        "finish",
        "release",
        "free",
        "clean",
    ]
    assert bridge.jm.rpcs == []


class GarbledService:
    """A service whose replies do not follow the protocol."""

    def handle(self, topic: str, payload: object, respond: object) -> None:
        respond(Reply({"succes": True}))  # type: ignore[operator]


def test_malformed_reply_raises_an_exception(local_config: Config) -> None:
    bridge = make_bridge(local_config)
    bridge.jm.service = GarbledService()
    job = bridge.run_job(userid=UID, dw=JOBDW)
    assert job.names() == REFUSED_AT_CREATE
    assert job.context("exception")["note"] == (
        PREFIX + "malformed dws.create reply: expected {'success': bool, 'errstr'?: str}"
    )


@pytest.mark.parametrize(
    ("topic", "payload", "message"),
    [
        (
            "dws.create",
            {"jobid": "12", "userid": 0, "dw_directives": JOBDW},
            "'jobid' must be a non-negative integer",
        ),
        ("dws.create", {"jobid": 12, "dw_directives": JOBDW}, "'userid' must be an int"),
        ("dws.create", {"jobid": 12, "userid": 0}, "'dw_directives' is missing"),
        ("dws.setup", {"jobid": 12, "R": "node1"}, "'R' must be an object"),
        ("dws.post_run", {"jobid": 12}, "'run_started' must be a bool"),
        ("dws.post_run", {"jobid": 12, "run_started": "yes"}, "'run_started' must be a bool"),
        ("dws.teardown", ["jobid", 12], "payload must be a JSON object"),
        ("dws.abort", {"jobid": True}, "'jobid' must be a non-negative integer"),
    ],
)
def test_malformed_request_gets_an_error_response(
    bridge: FluxBridge, topic: str, payload: object, message: str
) -> None:
    replies: list[Reply] = []
    assert bridge.service is not None
    bridge.service.handle(topic, payload, replies.append)
    assert replies == [Reply.error(71, f"malformed {topic} request: {message}")]  # EPROTO


def test_unknown_topic_gets_enosys(bridge: FluxBridge) -> None:
    replies: list[Reply] = []
    assert bridge.service is not None
    bridge.service.handle("dws.frobnicate", {"jobid": 1}, replies.append)
    assert replies == [protocol.no_service("dws.frobnicate")]


@needs_root
def test_named_preset_expands_to_its_directives(local_config: Config) -> None:
    local_config.flux_presets = {"small": JOBDW}
    bridge = make_bridge(local_config)
    job = bridge.run_job(userid=UID, dw="small")
    assert job.names() == NORMAL
    assert "DW_JOB_data" in job.context("dws_environment")["variables"]
