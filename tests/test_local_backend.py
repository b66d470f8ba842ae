"""The embedded default: a workflow driven through all seven states does the storage work for real."""

from __future__ import annotations

import hashlib
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from dwsbridge.backends.local.backend import LocalBackend
from dwsbridge.config import Config
from dwsbridge.errors import AdmissionError, WorkflowFailed
from dwsbridge.lifecycle import Lifecycle
from tests.conftest import needs_root, user_dir, user_file

pytestmark = needs_root

MIDDLE = ("Setup", "DataIn", "PreRun", "PostRun", "DataOut")


def lifecycle(config: Config) -> Lifecycle:
    return Lifecycle(config, LocalBackend(config))


def create(lc: Lifecycle, user: pwd.struct_passwd, directives: list[str], job_id: int = 1) -> str:
    return lc.create(wlm="slurm", job_id=job_id, uid=user.pw_uid, gid=user.pw_gid, directives=directives)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_as(user: pwd.struct_passwd, *command: str) -> None:
    subprocess.run(list(command), check=True, user=user.pw_uid, group=user.pw_gid, extra_groups=[])


def test_full_walk_stages_data_gives_env_and_token_and_cleans_up(
    local_config: Config, world_tmp: Path, job_user: pwd.struct_passwd
) -> None:
    from copyoffload.tokens import verify_token

    src = user_dir(world_tmp / "in", job_user)
    payload = os.urandom(300_000)
    user_file(src / "input.dat", job_user, payload)
    out = user_dir(world_tmp / "out", job_user)
    lc = lifecycle(local_config)
    name = create(
        lc,
        job_user,
        [
            "#DW jobdw type=xfs capacity=1GiB name=scratch requires=copy-offload",
            f"#DW copy_in source={src}/input.dat destination=$DW_JOB_scratch/",
            f"#DW copy_out source=$DW_JOB_scratch/result.dat destination={out}/",
        ],
    )
    assert name == "bb1"
    lc.walk(name, ["Setup", "DataIn"])
    env = lc.environment(name)
    job_dir = Path(env["DW_JOB_scratch"])
    assert env["DW_JOBS"] == f"scratch:{job_dir}"
    assert env["DW_JOB_XFS"] == str(job_dir)
    assert env["DW_WORKFLOW_NAME"] == name
    st = job_dir.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (job_user.pw_uid, 0o700)
    staged = job_dir / "input.dat"
    assert staged.read_bytes() == payload
    assert staged.stat().st_uid == job_user.pw_uid

    key_pem = LocalBackend(local_config).store.get_secret(f"{name}-token-server")["token.key"]  # type: ignore[index]
    claims = verify_token(env["DW_WORKFLOW_TOKEN"], key_pem, workflow=name)
    assert claims["sub"] == "user-container"

    lc.advance_to(name, "PreRun")
    run_as(job_user, "cp", str(staged), str(job_dir / "result.dat"))
    lc.walk(name, ["PostRun", "DataOut"])
    assert sha(out / "result.dat") == hashlib.sha256(payload).hexdigest()
    assert (out / "result.dat").stat().st_uid == job_user.pw_uid

    lc.teardown(name)
    assert not job_dir.exists()
    store = LocalBackend(local_config).store
    assert store.get_secret(f"{name}-token") is None
    assert store.get_secret(f"{name}-token-server") is None
    assert not (local_config.root / "secrets" / name).exists()
    assert [s.name for s in lc.list()] == []


def test_hurry_teardown_from_postrun_skips_copy_out(
    local_config: Config, world_tmp: Path, job_user: pwd.struct_passwd
) -> None:
    out = user_dir(world_tmp / "out", job_user)
    lc = lifecycle(local_config)
    name = create(
        lc,
        job_user,
        [
            "#DW jobdw type=xfs capacity=1GiB name=scratch",
            f"#DW copy_out source=$DW_JOB_scratch/result.dat destination={out}/",
        ],
    )
    lc.walk(name, ["Setup", "DataIn", "PreRun"])
    job_dir = Path(lc.environment(name)["DW_JOB_scratch"])
    run_as(job_user, "sh", "-c", f"echo data > {job_dir}/result.dat")
    lc.advance_to(name, "PostRun")
    lc.teardown(name, hurry=True)
    assert not (out / "result.dat").exists()
    assert not job_dir.exists()
    assert not lc.exists(name)


def test_copy_in_of_a_missing_source_is_an_error_naming_the_directive(
    local_config: Config, world_tmp: Path, job_user: pwd.struct_passwd
) -> None:
    lc = lifecycle(local_config)
    directive = f"#DW copy_in source={world_tmp}/missing.dat destination=$DW_JOB_scratch/"
    name = create(lc, job_user, ["#DW jobdw type=xfs capacity=1GiB name=scratch", directive])
    lc.advance_to(name, "Setup")
    with pytest.raises(WorkflowFailed) as failure:
        lc.advance_to(name, "DataIn")
    assert directive in str(failure.value)
    assert "missing.dat" in str(failure.value)
    assert lc.status(name).status == "Error"
    job_dir = Path(lc.environment(name)["DW_JOB_scratch"])
    lc.teardown(name)
    assert not job_dir.exists() and not lc.exists(name)


def test_a_source_the_user_may_not_read_is_not_copied(
    local_config: Config, world_tmp: Path, job_user: pwd.struct_passwd
) -> None:
    secret = world_tmp / "root-only.dat"
    secret.write_bytes(b"root secret")
    os.chmod(secret, 0o600)
    lc = lifecycle(local_config)
    name = create(
        lc,
        job_user,
        [
            "#DW jobdw type=xfs capacity=1GiB name=scratch",
            f"#DW copy_in source={secret} destination=$DW_JOB_scratch/",
        ],
    )
    lc.advance_to(name, "Setup")
    with pytest.raises(WorkflowFailed, match="Permission denied"):
        lc.advance_to(name, "DataIn")
    job_dir = Path(lc.environment(name)["DW_JOB_scratch"])
    assert not (job_dir / "root-only.dat").exists()
    lc.teardown(name)


def test_a_destination_the_user_may_not_write_is_an_error(
    local_config: Config, world_tmp: Path, job_user: pwd.struct_passwd
) -> None:
    closed = world_tmp / "root-dir"
    closed.mkdir(mode=0o755)
    lc = lifecycle(local_config)
    name = create(
        lc,
        job_user,
        [
            "#DW jobdw type=xfs capacity=1GiB name=scratch",
            f"#DW copy_out source=$DW_JOB_scratch destination={closed}/",
        ],
    )
    lc.walk(name, ["Setup", "DataIn", "PreRun", "PostRun"])
    with pytest.raises(WorkflowFailed, match="Permission denied"):
        lc.advance_to(name, "DataOut")
    assert list(closed.iterdir()) == []
    lc.teardown(name)


def test_capacity_above_the_limit_is_refused_at_proposal_leaving_nothing(
    world_tmp: Path, job_user: pwd.struct_passwd
) -> None:
    config = Config(root=world_tmp / "root", capacity_limit=1024**3)
    lc = lifecycle(config)
    with pytest.raises(WorkflowFailed, match="above the configured limit"):
        create(lc, job_user, ["#DW jobdw type=xfs capacity=2GiB name=big"])
    assert lc.list() == []


def test_an_invalid_directive_is_refused_at_create(local_config: Config, job_user: pwd.struct_passwd) -> None:
    lc = lifecycle(local_config)
    with pytest.raises(AdmissionError, match="capacity"):
        create(lc, job_user, ["#DW jobdw type=xfs capacity=10 name=scratch"])
    assert lc.list() == []


def test_teardown_is_idempotent(local_config: Config, job_user: pwd.struct_passwd) -> None:
    lc = lifecycle(local_config)
    name = create(lc, job_user, ["#DW jobdw type=xfs capacity=1GiB name=scratch"])
    lc.teardown(name, hurry=True)
    lc.teardown(name, hurry=True)
    lc.teardown("bb999")
    assert not lc.exists(name)


def test_persistent_storage_outlives_the_job_and_only_its_owner_destroys_it(
    local_config: Config, job_user: pwd.struct_passwd, other_user: pwd.struct_passwd
) -> None:
    lc = lifecycle(local_config)
    name = create(lc, job_user, ["#DW create_persistent type=xfs capacity=1GiB name=shared"], job_id=10)
    lc.walk(name, MIDDLE)
    lc.teardown(name)
    user_job = create(lc, job_user, ["#DW persistentdw name=shared"], job_id=11)
    lc.walk(user_job, ["Setup"])
    path = Path(lc.environment(user_job)["DW_PERSISTENT_shared"])
    assert path.is_dir() and path.stat().st_uid == job_user.pw_uid
    lc.teardown(user_job)
    assert path.is_dir()
    with pytest.raises(WorkflowFailed, match="only its owner"):
        create(lc, other_user, ["#DW destroy_persistent name=shared"], job_id=12)
    owner_job = create(lc, job_user, ["#DW destroy_persistent name=shared"], job_id=13)
    lc.walk(owner_job, MIDDLE)
    lc.teardown(owner_job)
    assert not path.exists()


def test_refused_transitions_name_the_dws_rule(local_config: Config, job_user: pwd.struct_passwd) -> None:
    lc = lifecycle(local_config)
    name = create(lc, job_user, ["#DW jobdw type=xfs capacity=1GiB name=scratch"])
    with pytest.raises(AdmissionError, match="states cannot be skipped"):
        lc.advance_to(name, "DataIn")
    lc.teardown(name)


KILL_SCRIPT = """
import sys
from dwsbridge.config import Config
from dwsbridge.lifecycle import Lifecycle
lc = Lifecycle(Config(root=sys.argv[1], data_movement_profiles={"slow": {"bwlimit": 1048576}}))
lc.advance_to(sys.argv[2], "DataIn")
"""


def _wait_for_copy(backend: LocalBackend, name: str, proc: subprocess.Popen[bytes]) -> int:
    import time

    for _ in range(600):
        records = backend.store.processes(name, "copy")
        if records:
            return records[0].pid
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    raise AssertionError("the copy never started")


def _gone(pid: int) -> bool:
    from dwsbridge.backends.local.store import process_start_time

    return process_start_time(pid) is None


def _copy_in_running_elsewhere(
    world_tmp: Path, job_user: pwd.struct_passwd
) -> tuple[Config, Lifecycle, str, subprocess.Popen[bytes], int]:
    """A workflow whose slow DataIn another process (KILL_SCRIPT) drives; that process and its copy's pid."""
    config = Config(root=world_tmp / "root", data_movement_profiles={"slow": {"bwlimit": 1048576}})
    src = user_dir(world_tmp / "in", job_user)
    user_file(src / "big.dat", job_user, os.urandom(64 * 1024 * 1024))
    lc = lifecycle(config)
    name = create(
        lc,
        job_user,
        [
            "#DW jobdw type=xfs capacity=1GiB name=scratch",
            f"#DW copy_in source={src}/big.dat destination=$DW_JOB_scratch/ profile=slow",
        ],
    )
    lc.advance_to(name, "Setup")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(config.root), name], stderr=subprocess.PIPE
    )
    return config, lc, name, proc, _wait_for_copy(LocalBackend(config), name, proc)


def test_hurry_teardown_during_data_in_kills_the_running_copy(
    world_tmp: Path, job_user: pwd.struct_passwd
) -> None:
    config, lc, name, proc, copy_pid = _copy_in_running_elsewhere(world_tmp, job_user)
    lc.teardown(name, hurry=True)
    assert _gone(copy_pid)
    assert proc.wait(timeout=30) != 0
    assert not (config.root / "storage" / "jobs" / name).exists()
    assert not lc.exists(name)


def test_a_process_killed_during_data_in_leaves_state_the_next_teardown_cleans(
    world_tmp: Path, job_user: pwd.struct_passwd
) -> None:
    config, lc, name, proc, copy_pid = _copy_in_running_elsewhere(world_tmp, job_user)
    proc.kill()
    proc.wait()
    status = lc.status(name)
    assert (status.desired, status.ready) == ("DataIn", False)
    lc.teardown(name)
    assert _gone(copy_pid)
    assert not (config.root / "storage" / "jobs" / name).exists()
    assert not lc.exists(name)


LOAD_SCRIPT = """
import sys
from dwsbridge.config import Config
from dwsbridge.lifecycle import Lifecycle
root, job, uid, gid, src = sys.argv[1:]
lc = Lifecycle(Config(root=root))
name = lc.create(wlm="slurm", job_id=job, uid=int(uid), gid=int(gid), directives=[
    "#DW jobdw type=xfs capacity=1MiB name=scratch",
    f"#DW copy_in source={src} destination=$DW_JOB_scratch/",
])
lc.walk(name, ["Setup", "DataIn", "PreRun", "PostRun", "DataOut"])
data = open(lc.environment(name)["DW_JOB_scratch"] + "/seed.dat", "rb").read()
assert data == open(src, "rb").read(), "staged data differs"
lc.teardown(name)
"""


def test_fifty_concurrent_processes_drive_fifty_workflows(
    local_config: Config, world_tmp: Path, job_user: pwd.struct_passwd
) -> None:
    src = user_dir(world_tmp / "in", job_user)
    seed = user_file(src / "seed.dat", job_user, os.urandom(4096))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                LOAD_SCRIPT,
                str(local_config.root),
                str(1000 + i),
                str(job_user.pw_uid),
                str(job_user.pw_gid),
                str(seed),
            ],
            stderr=subprocess.PIPE,
        )
        for i in range(50)
    ]
    failures = [p.stderr.read().decode() for p in procs if p.wait(timeout=600) != 0]  # type: ignore[union-attr]
    assert failures == []
    assert lifecycle(local_config).list() == []
    assert list((local_config.root / "storage" / "jobs").iterdir()) == []


def test_two_proposals_at_once_cannot_both_take_the_last_free_space_of_the_pool(
    world_tmp: Path, job_user: pwd.struct_passwd, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contextlib
    import threading

    from dwsbridge.backends.local.driver import LocalDriver

    config = Config(root=world_tmp / "root", pool_size=3 * 1024**2)
    lifecycle(config).list()  # the database exists before the threads race
    both_checked = threading.Barrier(2)
    check = LocalDriver.check_capacity

    def check_then_wait(self: LocalDriver, name: str, capacity: int) -> None:
        check(self, name, capacity)
        # Without a reservation held from check to record, both proposals pass the check here.
        with contextlib.suppress(threading.BrokenBarrierError):
            both_checked.wait(timeout=2)

    monkeypatch.setattr(LocalDriver, "check_capacity", check_then_wait)
    outcomes: list[str] = []

    def propose(job: int) -> None:
        lc = lifecycle(config)
        try:
            create(lc, job_user, ["#DW jobdw type=xfs capacity=2MiB name=scratch"], job_id=job)
            outcomes.append("created")
        except WorkflowFailed as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=propose, args=(job,)) for job in (21, 22)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(outcomes)[0] == "created"
    assert "only 1048576 bytes are available" in sorted(outcomes)[1]
    lc = lifecycle(config)
    for status in lc.list():
        lc.teardown(status.name)


def test_a_setup_overtaken_by_a_finished_teardown_leaves_no_storage_or_token(
    local_config: Config, job_user: pwd.struct_passwd
) -> None:
    from dwsbridge.errors import WorkflowNotFound

    backend = LocalBackend(local_config)
    lc = Lifecycle(local_config, backend)
    name = create(lc, job_user, ["#DW jobdw type=xfs capacity=1GiB name=scratch requires=copy-offload"])
    layout = backend.driver.ensure_layout

    def torn_down_first() -> None:  # another process's hurry teardown completes as Setup starts
        lifecycle(local_config).teardown(name, hurry=True)
        layout()

    backend.driver.ensure_layout = torn_down_first  # type: ignore[method-assign]
    with pytest.raises(WorkflowNotFound):
        lc.advance_to(name, "Setup")
    assert not (local_config.root / "storage" / "jobs" / name).exists()
    assert backend.store.get_secret(f"{name}-token") is None
    assert backend.store.get_secret(f"{name}-token-server") is None


def test_a_copy_offload_server_started_after_a_teardown_overtook_setup_is_killed(
    local_config: Config, job_user: pwd.struct_passwd, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from dwsbridge.backends.local import copy_offload
    from dwsbridge.errors import WorkflowNotFound

    lc = lifecycle(local_config)
    name = create(
        lc,
        job_user,
        [
            "#DW jobdw type=xfs capacity=1GiB name=scratch requires=copy-offload",
            "#DW container name=co profile=copy-offload-default",
        ],
    )
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def popen_then_torn_down(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = real_popen(*args, **kwargs)  # type: ignore[call-overload]
        started.append(proc)
        ready = local_config.root / "secrets" / name / "server.ready"
        for _ in range(300):  # the server is up (its keys read) before the teardown overtakes it
            if ready.exists():
                break
            time.sleep(0.05)
        lifecycle(local_config).teardown(name, hurry=True)
        return proc

    monkeypatch.setattr(copy_offload.subprocess, "Popen", popen_then_torn_down)
    with pytest.raises(WorkflowNotFound):
        lc.advance_to(name, "Setup")  # the server starts (held) at Setup since 11.10
    assert started and started[0].wait(timeout=10) is not None


def test_the_state_database_is_private_before_sqlite_first_opens_it(
    world_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3
    import stat

    from dwsbridge.backends.local import store

    modes: list[int] = []
    connect = sqlite3.connect

    def connect_noting_the_mode(path: Path, *args: object, **kwargs: object) -> sqlite3.Connection:
        modes.append(stat.S_IMODE(os.stat(path).st_mode))
        return connect(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store.sqlite3, "connect", connect_noting_the_mode)
    old_umask = os.umask(0o022)
    try:
        store.Store(world_tmp / "root").close()
    finally:
        os.umask(old_umask)
    assert modes == [0o600]
