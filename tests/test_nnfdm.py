"""The nnf-dm daemon over a real Unix socket, driven by stubs generated from our .proto, as two
distinct ordinary users, on the local backend (workflows walked for real by the lifecycle)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from copyoffload.mover import default_workers
from dwsbridge.backends.local.backend import LocalBackend
from dwsbridge.backends.local.store import is_alive
from dwsbridge.config import Config
from dwsbridge.lifecycle import Lifecycle
from tests.conftest import ensure_user, needs_root, user_dir, user_file
from tests.nnfdm_support import Daemon, calls_as, generate_stubs, results_of, running_daemon, start_calls_as
from tests.slurm_support import wait_for

pytestmark = [needs_root, pytest.mark.timeout(180)]

JOBDW = "#DW jobdw type=xfs capacity=1GiB name=scratch"
WRONG_STATE = "Workflow must be in 'PreRun' state and 'Completed' status"
MAX_PER_USER = 12
MAX_WAITS = 4
SLOW = 1024 * 1024  # bytes/s of the "slow" profile


@dataclass
class Env:
    root: Path
    config: Config
    daemon: Daemon
    user1: pwd.struct_passwd
    user2: pwd.struct_passwd
    jobs: Iterator[int]

    def lifecycle(self) -> Lifecycle:
        return Lifecycle(self.config, LocalBackend(self.config))

    def workflow(self, user: pwd.struct_passwd, until: str = "PreRun") -> str:
        lc = self.lifecycle()
        name = lc.create(
            wlm="slurm", job_id=next(self.jobs), uid=user.pw_uid, gid=user.pw_gid, directives=[JOBDW]
        )
        states = ["Setup", "DataIn", "PreRun"]
        lc.walk(name, states[: states.index(until) + 1])
        return name

    def storage(self, name: str) -> Path:
        return self.root / "storage" / "jobs" / name / "scratch"

    def calls(self, user: pwd.struct_passwd, workflow: str, calls: list[dict]) -> list[dict]:
        return calls_as(user, self.daemon, calls, workflow=workflow)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    base = Path(tempfile.mkdtemp(prefix="dwsbt-nnfdm-", dir="/tmp"))
    os.chmod(base, 0o755)
    root = base / "root"
    config_file = base / "config.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {"root": str(root), "data_movement_profiles": {"slow": {"workers": 1, "bwlimit": SLOW}}}
        )
    )
    config = Config(root=root, state_timeout=60.0, data_movement_profiles={"slow": {"bwlimit": SLOW}})
    LocalBackend(config).driver.ensure_layout()
    stubs = generate_stubs(base / "stubs")
    extra = (
        *("--sweep-interval", "0.2", "--max-running", "1"),
        *("--max-requests-per-user", str(MAX_PER_USER), "--max-waits-per-user", str(MAX_WAITS)),
    )
    try:
        with running_daemon(base, stubs, config=config_file, extra=extra) as daemon:
            yield Env(
                root,
                config,
                daemon,
                ensure_user("dwsbt-user1"),
                ensure_user("dwsbt-user2"),
                iter(range(1000 + os.getpid() % 1000 * 100, 10**7)),
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


def big_file(path: Path, user: pwd.struct_passwd, size: int) -> Path:
    with open(path, "wb") as out:
        out.truncate(0)
        out.write(os.urandom(size))
    os.chown(path, user.pw_uid, user.pw_gid)
    return path


def test_version_answers_api_version_1(env: Env) -> None:
    (reply,) = env.calls(env.user1, "", [{"rpc": "Version"}])
    assert reply["apiVersions"] == ["1"]
    assert reply["version"]


def test_create_status_list_delete_copy_as_the_caller(env: Env, tmp_path: Path) -> None:
    name = env.workflow(env.user1)
    data = user_file(env.storage(name) / "result.dat", env.user1, os.urandom(300_000))
    dest = user_dir(Path(tempfile.mkdtemp(prefix="dwsbt-", dir="/tmp")), env.user1)
    try:
        create, status, listed, delete, listed_after, gone = env.calls(
            env.user1,
            name,
            [
                {
                    "rpc": "Create",
                    "args": {"source": "$DW_JOB_scratch/result.dat", "destination": f"{dest}/"},
                },
                {"rpc": "Status", "args": {"uid": "$uid", "maxWaitTime": -1}},
                {"rpc": "List"},
                {"rpc": "Delete", "args": {"uid": "$uid"}},
                {"rpc": "List"},
                {"rpc": "Status", "args": {"uid": "$uid"}},
            ],
        )
        assert create["status"] == "SUCCESS", create
        assert uuid.UUID(create["uid"])
        assert (status["state"], status["status"]) == ("COMPLETED", "SUCCESS"), status
        assert status["commandStatus"]["progress"] == 100
        assert status["commandStatus"]["lastMessage"].startswith("Copied ")
        assert status["startTime"] and status["endTime"]
        assert listed["uids"] == [create["uid"]]
        assert delete["status"] == "SUCCESS"
        assert listed_after["uids"] == []
        assert (gone["state"], gone["status"]) == ("UNKNOWN_STATE", "NOT_FOUND")
        copied = dest / "result.dat"
        assert copied.read_bytes() == data.read_bytes()
        assert copied.stat().st_uid == env.user1.pw_uid
    finally:
        shutil.rmtree(dest, ignore_errors=True)
        env.lifecycle().teardown(name)


def test_create_before_prerun_is_refused_with_upstreams_message(env: Env) -> None:
    name = env.workflow(env.user1, until="DataIn")
    try:
        (reply,) = env.calls(
            env.user1, name, [{"rpc": "Create", "args": {"source": "/etc/hostname", "destination": "/tmp"}}]
        )
        assert (reply["status"], reply["message"]) == ("FAILED", WRONG_STATE)
        (missing,) = env.calls(
            env.user1, "bb999999999", [{"rpc": "Create", "args": {"source": "/a", "destination": "/b"}}]
        )
        assert missing["status"] == "FAILED"
        assert "workflow bb999999999 not found in namespace default" in missing["message"]
        (nameless,) = env.calls(env.user1, "", [{"rpc": "List"}])
        assert nameless["grpc_error"] == "INVALID_ARGUMENT"
        assert "workflow name must be supplied" in nameless["details"]
        (odd,) = env.calls(
            env.user1, "../../etc", [{"rpc": "Create", "args": {"source": "/a", "destination": "/b"}}]
        )
        assert (odd["status"], odd["message"]) == (
            "FAILED",
            "workflow ../../etc not found in namespace default",
        )
    finally:
        env.lifecycle().teardown(name)


def test_another_users_workflow_and_requests_are_out_of_reach(env: Env) -> None:
    mine = env.workflow(env.user1)
    theirs = env.workflow(env.user2)
    user_file(env.storage(mine) / "f", env.user1, b"data")
    try:
        (create,) = env.calls(
            env.user1,
            mine,
            [{"rpc": "Create", "args": {"source": "$DW_JOB_scratch/f", "destination": "$DW_JOB_scratch/g"}}],
        )
        uid = create["uid"]
        refused = env.calls(
            env.user2,
            mine,
            [
                {"rpc": "Create", "args": {"source": "$DW_JOB_scratch/f", "destination": "/tmp/stolen"}},
                {"rpc": "Status", "args": {"uid": uid}},
                {"rpc": "Cancel", "args": {"uid": uid}},
                {"rpc": "Delete", "args": {"uid": uid}},
                {"rpc": "List"},
            ],
        )
        assert [r.get("status") for r in refused[:4]] == ["FAILED", "FAILED", "FAILED", "INVALID"]
        for reply in refused[:4]:
            assert "belongs to another user" in reply["message"]
        assert refused[4]["grpc_error"] == "PERMISSION_DENIED"
        # the other user's own workflow does not reach my request either: it is "not found" there
        via_own = env.calls(
            env.user2,
            theirs,
            [
                {"rpc": "Status", "args": {"uid": uid}},
                {"rpc": "Cancel", "args": {"uid": uid}},
                {"rpc": "Delete", "args": {"uid": uid}},
                {"rpc": "List"},
            ],
        )
        assert [r.get("status") for r in via_own[:3]] == ["NOT_FOUND", "NOT_FOUND", "NOT_FOUND"]
        assert via_own[0]["message"] == f"Request {uid} not found"
        assert via_own[3]["uids"] == []
        (status,) = env.calls(env.user1, mine, [{"rpc": "Status", "args": {"uid": uid, "maxWaitTime": -1}}])
        assert (status["state"], status["status"]) == ("COMPLETED", "SUCCESS")
        assert not Path("/tmp/stolen").exists()
    finally:
        env.lifecycle().teardown(mine)
        env.lifecycle().teardown(theirs)


def test_unparsable_and_unknown_request_ids(env: Env) -> None:
    name = env.workflow(env.user1)
    unknown = str(uuid.uuid4())
    try:
        replies = env.calls(
            env.user1,
            name,
            [
                {"rpc": "Status", "args": {"uid": "not-a-uuid"}},
                {"rpc": "Cancel", "args": {"uid": "not-a-uuid"}},
                {"rpc": "Delete", "args": {"uid": "not-a-uuid"}},
                {"rpc": "Status", "args": {"uid": unknown}},
                {"rpc": "Cancel", "args": {"uid": unknown}},
                {"rpc": "Delete", "args": {"uid": unknown}},
            ],
        )
        assert (replies[0]["state"], replies[0]["status"]) == ("UNKNOWN_STATE", "INVALID")
        assert all(r["message"] == "Request not-a-uuid is invalid" for r in replies[:3])
        assert [r["status"] for r in replies[1:3]] == ["INVALID", "INVALID"]
        assert (replies[3]["state"], replies[3]["status"]) == ("UNKNOWN_STATE", "NOT_FOUND")
        assert all(r["message"] == f"Request {unknown} not found" for r in replies[3:])
        assert [r["status"] for r in replies[4:]] == ["NOT_FOUND", "NOT_FOUND"]
    finally:
        env.lifecycle().teardown(name)


def test_bad_requests_are_refused_with_what_to_fix(env: Env) -> None:
    name = env.workflow(env.user1)
    try:
        replies = env.calls(
            env.user1,
            name,
            [
                {
                    "rpc": "Create",
                    "args": {"source": "/etc/hostname", "destination": "/tmp/x", "profile": "nope"},
                },
                {"rpc": "Create", "args": {"source": "", "destination": "/tmp/x"}},
                {"rpc": "Create", "args": {"source": "$DW_JOB_other/x", "destination": "/tmp/x"}},
                {"rpc": "Create", "args": {"source": "relative/x", "destination": "/tmp/x"}},
                {"rpc": "Create", "args": {"source": "/etc/hostname", "destination": "/tmp/x", "slots": -2}},
                {"rpc": "Create", "args": {"source": "/" + "a" * 5000, "destination": "/tmp/x"}},
                {"rpc": "Create", "args": {"source": "$DW_JOB_scratch/missing", "destination": "/tmp/x"}},
                {"rpc": "Status", "args": {"uid": "$uid", "maxWaitTime": -1}},
            ],
        )
        assert [r["status"] for r in replies[:6]] == ["INVALID"] * 6
        assert "unknown data movement profile 'nope' (known: slow)" in replies[0]["message"]
        assert replies[1]["message"] == "source path must be supplied"
        assert "$DW_JOB_other names no storage of this job" in replies[2]["message"]
        assert "a global path must be absolute" in replies[3]["message"]
        assert replies[4]["message"].startswith("slots must be -1")
        assert replies[5]["message"] == "source path is longer than 4096 bytes"
        assert replies[6]["status"] == "SUCCESS"
        assert (replies[7]["state"], replies[7]["status"]) == ("COMPLETED", "FAILED")
        assert "No such file or directory" in replies[7]["message"]
    finally:
        env.lifecycle().teardown(name)


def test_the_copy_has_only_the_callers_rights(env: Env) -> None:
    name = env.workflow(env.user1)
    secret = Path(tempfile.mkdtemp(prefix="dwsbt-", dir="/tmp")) / "root-only"
    os.chmod(secret.parent, 0o755)
    secret.write_bytes(b"not yours")
    os.chmod(secret, 0o600)
    try:
        _, status = env.calls(
            env.user1,
            name,
            [
                {"rpc": "Create", "args": {"source": str(secret), "destination": "$DW_JOB_scratch/"}},
                {"rpc": "Status", "args": {"uid": "$uid", "maxWaitTime": -1}},
            ],
        )
        assert (status["state"], status["status"]) == ("COMPLETED", "FAILED")
        assert "Permission denied" in status["message"]
        assert not (env.storage(name) / "root-only").exists()
    finally:
        shutil.rmtree(secret.parent, ignore_errors=True)
        env.lifecycle().teardown(name)


def test_dryrun_store_stdout_slots_and_profile(env: Env) -> None:
    name = env.workflow(env.user1)
    user_file(env.storage(name) / "f", env.user1, b"x" * 1000)
    copy = {"source": "$DW_JOB_scratch/f"}
    try:
        _, dry, _, stored, _, capped, _, profiled, _, default = env.calls(
            env.user1,
            name,
            [
                {
                    "rpc": "Create",
                    "args": {
                        "source": "$DW_JOB_scratch/f",
                        "destination": "$DW_JOB_scratch/dry",
                        "dryrun": True,
                    },
                },
                {"rpc": "Status", "args": {"uid": "$uid", "maxWaitTime": -1}},
                {
                    "rpc": "Create",
                    "args": {
                        "source": "$DW_JOB_scratch/f",
                        "destination": "$DW_JOB_scratch/g",
                        "storeStdout": True,
                    },
                },
                {"rpc": "Status", "args": {"uid": "$uid", "maxWaitTime": -1}},
                {
                    "rpc": "Create",
                    "args": {**copy, "destination": "$DW_JOB_scratch/h", "slots": 5, "maxSlots": 2},
                },
                {"rpc": "Status", "args": {"uid": "$uid", "maxWaitTime": -1}},
                {"rpc": "Create", "args": {**copy, "destination": "$DW_JOB_scratch/i", "profile": "slow"}},
                {"rpc": "Status", "args": {"uid": "$uid", "maxWaitTime": -1}},
                {"rpc": "Create", "args": {**copy, "destination": "$DW_JOB_scratch/j"}},
                {"rpc": "Status", "args": {"uid": "$uid", "maxWaitTime": -1}},
            ],
        )
        # slots unset (proto3's 0) is the default parallelism, not a serial copy
        assert default["commandStatus"]["command"].startswith(
            f"copyoffload-mover --workers {default_workers()} "
        )
        assert capped["commandStatus"]["command"].startswith("copyoffload-mover --workers 2 ")
        assert profiled["commandStatus"]["command"].startswith("copyoffload-mover --workers 1 ")  # slow's
        assert (capped["status"], profiled["status"]) == ("SUCCESS", "SUCCESS")
        assert (dry["state"], dry["status"]) == ("COMPLETED", "SUCCESS")
        assert not (env.storage(name) / "dry").exists()
        assert (stored["state"], stored["status"]) == ("COMPLETED", "SUCCESS")
        assert stored["message"].startswith("Copied 1000 B in 1 files")
    finally:
        env.lifecycle().teardown(name)


def test_running_copy_waits_shows_progress_refuses_delete_and_cancels_cleanly(env: Env) -> None:
    name = env.workflow(env.user1)
    big_file(env.storage(name) / "big", env.user1, 6 * SLOW)
    dest = user_dir(Path(tempfile.mkdtemp(prefix="dwsbt-", dir="/tmp")), env.user1)
    copy = {"source": "$DW_JOB_scratch/big", "destination": f"{dest}/big", "profile": "slow"}
    try:
        first, running, _second, queued, delete, cancel, cancelled, delete_after = env.calls(
            env.user1,
            name,
            [
                {"rpc": "Create", "args": copy},
                {"rpc": "Status", "args": {"uid": "$uid", "maxWaitTime": 1}, "until_progress": 30},
                {"rpc": "Create", "args": {**copy, "destination": f"{dest}/big2"}},
                {"rpc": "Status", "args": {"uid": "$uid"}},
                {"rpc": "Delete", "args": {"uid": "$uid"}},
                {"rpc": "Cancel", "args": {"uid": "$uid"}},
                {"rpc": "Status", "args": {"uid": "$uid", "maxWaitTime": -1}},
                {"rpc": "Delete", "args": {"uid": "$uid"}},
            ],
        )
        assert (running["state"], running["status"]) == ("RUNNING", "UNKNOWN_STATUS"), running
        assert 0 < running["commandStatus"]["progress"] < 100
        assert running["commandStatus"]["lastMessage"].startswith("Copied ")
        assert queued["state"] == "PENDING"  # one copy at a time per workflow (--max-running 1)
        assert delete["status"] == "ACTIVE"
        assert cancel["status"] == "SUCCESS"
        assert (cancelled["state"], cancelled["status"]) == ("COMPLETED", "CANCELLED")
        assert delete_after["status"] == "SUCCESS"
        _, first_cancelled = env.calls(
            env.user1,
            name,
            [
                {"rpc": "Cancel", "args": {"uid": first["uid"]}},
                {"rpc": "Status", "args": {"uid": first["uid"], "maxWaitTime": -1}},
            ],
        )
        assert (first_cancelled["state"], first_cancelled["status"]) == ("COMPLETED", "CANCELLED")
        assert sorted(os.listdir(dest)) == []  # no partial output, not even a temporary file
    finally:
        shutil.rmtree(dest, ignore_errors=True)
        env.lifecycle().teardown(name)


def test_hurry_teardown_kills_running_copies_and_the_requests_are_gone(env: Env) -> None:
    name = env.workflow(env.user1)
    big_file(env.storage(name) / "big", env.user1, 20 * SLOW)
    dest = user_dir(Path(tempfile.mkdtemp(prefix="dwsbt-", dir="/tmp")), env.user1)
    try:
        _, running = env.calls(
            env.user1,
            name,
            [
                {
                    "rpc": "Create",
                    "args": {"source": "$DW_JOB_scratch/big", "destination": f"{dest}/", "profile": "slow"},
                },
                {"rpc": "Status", "args": {"uid": "$uid", "maxWaitTime": 1}, "until_progress": 30},
            ],
        )
        assert running["state"] == "RUNNING" and running["commandStatus"]["progress"] > 0
        store = LocalBackend(env.config).store
        (record,) = store.processes(name, "copy")
        env.lifecycle().teardown(name, hurry=True)
        assert not is_alive(record.pid, record.start)  # killed by the teardown itself, at once
        (after,) = env.calls(env.user1, name, [{"rpc": "List"}])
        assert after["uids"] == []
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def test_requests_are_cancelled_and_forgotten_at_postrun(env: Env) -> None:
    name = env.workflow(env.user1)
    big_file(env.storage(name) / "big", env.user1, 20 * SLOW)
    dest = user_dir(Path(tempfile.mkdtemp(prefix="dwsbt-", dir="/tmp")), env.user1)
    try:
        (create,) = env.calls(
            env.user1,
            name,
            [
                {
                    "rpc": "Create",
                    "args": {"source": "$DW_JOB_scratch/big", "destination": f"{dest}/", "profile": "slow"},
                }
            ],
        )
        lc = env.lifecycle()
        lc.walk(name, ["PostRun"])
        gone, listed = env.calls(
            env.user1, name, [{"rpc": "Status", "args": {"uid": create["uid"]}}, {"rpc": "List"}]
        )
        assert gone["status"] == "NOT_FOUND", gone
        assert listed["uids"] == []
        store = LocalBackend(env.config).store
        wait_for(lambda: store.processes(name, "copy") == [], "the cancelled copy to end", 30)
        assert os.listdir(dest) == []  # cancelled, not killed: the mover removed its partial file
    finally:
        shutil.rmtree(dest, ignore_errors=True)
        env.lifecycle().teardown(name)


def test_one_user_cannot_exhaust_the_daemon_for_another(env: Env) -> None:
    hog = env.workflow(env.user2)
    name = env.workflow(env.user1)
    dry = {"source": "$DW_JOB_scratch", "destination": "$DW_JOB_scratch/x", "dryrun": True}
    try:
        (burst,) = env.calls(
            env.user2,
            hog,
            [{"rpc": "parallel", "count": MAX_PER_USER + 4, "call": {"rpc": "Create", "args": dry}}],
        )
        statuses = [r["status"] for r in burst["replies"]]
        assert statuses.count("SUCCESS") == MAX_PER_USER  # exactly the cap, even when all arrive at once
        assert statuses.count("FAILED") == 4
        assert all("too many requests" in r["message"] for r in burst["replies"] if r["status"] == "FAILED")
        (mine,) = env.calls(env.user1, name, [{"rpc": "Create", "args": dry}])
        assert mine["status"] == "SUCCESS"
    finally:
        env.lifecycle().teardown(hog)
        env.lifecycle().teardown(name)


def test_one_users_waiting_calls_do_not_stall_another(env: Env) -> None:
    hog = env.workflow(env.user2)
    name = env.workflow(env.user1)
    big_file(env.storage(hog) / "big", env.user2, 30 * SLOW)
    user_file(env.storage(name) / "f", env.user1, b"mine")
    slow = {"source": "$DW_JOB_scratch/big", "destination": "$DW_JOB_scratch/copy", "profile": "slow"}
    waits = {"rpc": "Status", "args": {"uid": "$uid", "maxWaitTime": -1}, "timeout": 120}
    hogging = start_calls_as(
        env.user2,
        env.daemon,
        [{"rpc": "Create", "args": slow}, {"rpc": "parallel", "count": 24, "call": waits}],
        workflow=hog,
    )
    try:
        wait_for(lambda: env.daemon.log_text().count(f"workflow={hog} request=") >= 1, "the hog's copy", 30)
        _, mine = env.calls(
            env.user1,
            name,
            [
                {
                    "rpc": "Create",
                    "args": {"source": "$DW_JOB_scratch/f", "destination": "$DW_JOB_scratch/g"},
                },
                {"rpc": "Status", "args": {"uid": "$uid", "maxWaitTime": -1}, "timeout": 20},
            ],
        )
        assert (mine["state"], mine["status"]) == ("COMPLETED", "SUCCESS"), mine
        assert hogging.poll() is None  # the hog's 24 waits were all still waiting meanwhile
    finally:
        env.lifecycle().teardown(hog, hurry=True)
        env.lifecycle().teardown(name)
    (_, parallel) = results_of(hogging)
    # only MAX_WAITS of the hog's calls waited (they ended with its workflow); the others were
    # answered at once, while the copy still ran
    assert len(parallel["replies"]) == 24
    assert all("grpc_error" not in r for r in parallel["replies"]), parallel
    unfinished = [r for r in parallel["replies"] if r["state"] != "COMPLETED"]
    assert len(unfinished) >= 24 - MAX_WAITS


def test_upstreams_python_example_works_unchanged(env: Env) -> None:
    """upstream's client-py: a channel on the socket, the workflow from the environment, Create,
    Status, Delete, printing each response."""
    name = env.workflow(env.user1)
    user_file(env.storage(name) / "in", env.user1, b"upstream")
    example = f"""
import os
import grpc
import datamovement_pb2
import datamovement_pb2_grpc

if __name__ == '__main__':
    with grpc.insecure_channel('unix://{env.daemon.socket}') as channel:
        stub = datamovement_pb2_grpc.DataMoverStub(channel)
        workflow = datamovement_pb2.DataMovementWorkflow(
            name=os.getenv('DW_WORKFLOW_NAME'), namespace=os.getenv('DW_WORKFLOW_NAMESPACE'))

        create_request = datamovement_pb2.DataMovementCreateRequest(
            workflow=workflow, source=os.getenv('DW_JOB_scratch') + '/in',
            destination=os.getenv('DW_JOB_scratch') + '/out')
        create_response = stub.Create(create_request)
        print(create_response)

        status_request = datamovement_pb2.DataMovementStatusRequest(
            workflow=workflow, uid=create_response.uid, maxWaitTime=30)
        status_response = stub.Status(status_request)
        print(status_response)

        delete_request = datamovement_pb2.DataMovementDeleteRequest(
            workflow=workflow, uid=create_response.uid)
        delete_response = stub.Delete(delete_request)
        print(delete_response)
"""
    script = env.daemon.stubs / "client.py"
    script.write_text(example)
    os.chmod(script, 0o644)
    job_env = env.lifecycle().environment(name)
    try:
        done = subprocess.run(
            [env.daemon.client.python, str(script)],
            env={
                **env.daemon.client.env(env.daemon.stubs),
                "DW_WORKFLOW_NAME": name,
                "DW_WORKFLOW_NAMESPACE": "default",
                "DW_JOB_scratch": job_env["DW_JOB_scratch"],
            },
            user=env.user1.pw_uid,
            group=env.user1.pw_gid,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "uid: " in done.stdout
        assert "state: COMPLETED\nstatus: SUCCESS" in done.stdout
        assert done.stdout.rstrip().endswith("status: SUCCESS")
        assert (env.storage(name) / "out").read_bytes() == b"upstream"
    finally:
        env.lifecycle().teardown(name)


def test_every_call_is_logged_with_its_workflow_and_no_token(env: Env) -> None:
    name = env.workflow(env.user1)
    try:
        forged = "/etc/hostname\n2026-01-01 nnfdm INFO workflow=bb1 request=x created by uid=0"
        env.calls(
            env.user1,
            name,
            [
                {"rpc": "Create", "args": {"source": "/etc/hostname", "destination": "$DW_JOB_scratch/h"}},
                {"rpc": "Create", "args": {"source": forged, "destination": "$DW_JOB_scratch/h2"}},
            ],
        )
        assert not any(line.startswith("2026-01-01") for line in env.daemon.log_text().splitlines())
        lines = [line for line in env.daemon.log_text().splitlines() if f"workflow={name}" in line]
        assert any("created by uid=" in line for line in lines)
        assert all("token" not in line.lower() for line in env.daemon.log_text().splitlines())
    finally:
        env.lifecycle().teardown(name)
