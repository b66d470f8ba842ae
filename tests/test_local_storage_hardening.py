"""Issue 11 (items 1, 3, 6, 7, 11) and 12.3 on the local backend: storage against a hostile job user.

Each attack is made by a real process of an ordinary user (dwsbt-user2 the attacker, dwsbt-user1 the
victim, the two distinct users of conftest), against real directories and the real state database.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dwsbridge.backends.local import driver as driver_module
from dwsbridge.backends.local.backend import LocalBackend
from dwsbridge.backends.local.storage import StorageError, make_private_dir, remove_tree
from dwsbridge.config import Config
from dwsbridge.errors import WorkflowFailed
from dwsbridge.lifecycle import Lifecycle
from tests.conftest import needs_root

pytestmark = needs_root

MIDDLE = ("Setup", "DataIn", "PreRun", "PostRun", "DataOut")

# A process of the attacker that keeps adding entries under a directory until told to stop (by the
# file `stop`), ignoring every refusal: what a user's job does to make a removal fail.
WRITER = """
import os, sys, time
top, stop = sys.argv[1], sys.argv[2]
open(os.path.join(top, ".started"), "w").close()
i = 0
while not os.path.exists(stop):
    i += 1
    for path in (f"{top}/w{i}", f"{top}/sub/w{i}"):
        try:
            os.makedirs(path)
        except OSError:
            pass
"""


def lifecycle(config: Config) -> Lifecycle:
    return Lifecycle(config, LocalBackend(config))


@pytest.fixture(params=["loop", "none"])
def any_config(request: pytest.FixtureRequest, local_config: Config) -> Config:
    """The attack under both storage_enforcement modes: a filesystem per allocation (the default)
    and plain directories (the fallback), where the removal walk does all the work."""
    return dataclasses.replace(local_config, storage_enforcement=request.param)


@pytest.fixture
def dir_config(local_config: Config) -> Config:
    """Plain directories: where a removal can fail on a file inside the user's storage."""
    return dataclasses.replace(local_config, storage_enforcement="none")


def create(lc: Lifecycle, user: pwd.struct_passwd, directives: list[str], job_id: int) -> str:
    return lc.create(wlm="slurm", job_id=job_id, uid=user.pw_uid, gid=user.pw_gid, directives=directives)


def run_as(user: pwd.struct_passwd, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), user=user.pw_uid, group=user.pw_gid, extra_groups=[], capture_output=True, text=True
    )


@contextmanager
def writer_as(user: pwd.struct_passwd, top: Path, work: Path) -> Iterator[None]:
    """The user's process adding entries under `top` for as long as the block runs."""
    stop = work / f"stop-{os.urandom(4).hex()}"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(top), str(stop)],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
    )
    try:
        for _ in range(600):
            if (top / ".started").exists() or proc.poll() is not None:
                break
            threading.Event().wait(0.05)
        assert proc.poll() is None, "the writer did not start"
        yield
    finally:
        stop.touch()
        proc.kill()
        proc.wait(timeout=30)


def persistent(
    lc: Lifecycle, user: pwd.struct_passwd, name: str, job_id: int, capacity: str = "1MiB"
) -> Path:
    """Create a persistent instance as `user` through a full create_persistent workflow."""
    wf = create(lc, user, [f"#DW create_persistent type=xfs capacity={capacity} name={name}"], job_id)
    lc.walk(wf, MIDDLE)
    lc.teardown(wf)
    record = lc.backend.store.get_persistent(name)  # type: ignore[attr-defined]
    assert record is not None and record["state"] == "active"
    return Path(record["path"])


def destroy(lc: Lifecycle, user: pwd.struct_passwd, name: str, job_id: int) -> str:
    wf = create(lc, user, [f"#DW destroy_persistent name={name}"], job_id)
    lc.walk(wf, MIDDLE)
    return wf


def use(lc: Lifecycle, user: pwd.struct_passwd, name: str, job_id: int) -> tuple[str, Path]:
    wf = create(lc, user, [f"#DW persistentdw name={name}"], job_id)
    lc.walk(wf, ["Setup"])
    return wf, Path(lc.environment(wf)[f"DW_PERSISTENT_{name.replace('-', '_')}"])


# --- 11.1: a reused persistent name, a reused job directory ------------------------------------------------


def test_a_reused_persistent_name_gives_the_next_owner_a_new_directory_not_the_attackers(
    any_config: Config, world_tmp: Path, job_user: pwd.struct_passwd, other_user: pwd.struct_passwd
) -> None:
    attacker, victim = other_user, job_user
    lc = lifecycle(any_config)
    loot = world_tmp / "loot"
    loot.mkdir()
    os.chown(loot, attacker.pw_uid, attacker.pw_gid)
    path = persistent(lc, attacker, "results", 1)
    wf, _ = use(lc, attacker, "results", 2)
    assert run_as(attacker, "ln", "-s", str(loot), str(path / "out")).returncode == 0
    assert run_as(attacker, "mkdir", str(path / "sub")).returncode == 0
    lc.teardown(wf)
    with writer_as(attacker, path, world_tmp):
        lc.teardown(destroy(lc, attacker, "results", 3))
        assert not path.exists()  # the attacker's process could not keep it alive
    assert lc.backend.store.get_persistent("results") is None  # type: ignore[attr-defined]

    again = persistent(lc, victim, "results", 4)
    assert again == path
    assert again.stat().st_uid == victim.pw_uid and again.stat().st_mode & 0o777 == 0o700
    assert os.listdir(again) == []  # nothing of the attacker's: no symlink to write through
    wf, mine = use(lc, victim, "results", 5)
    assert run_as(victim, "sh", "-c", f"echo secret > {mine}/out").returncode == 0
    assert os.listdir(loot) == []
    lc.teardown(wf)
    lc.teardown(destroy(lc, victim, "results", 6))


def test_a_job_directory_left_at_a_reused_job_id_is_replaced_not_adopted(
    any_config: Config, world_tmp: Path, job_user: pwd.struct_passwd, other_user: pwd.struct_passwd
) -> None:
    attacker, victim = other_user, job_user
    lc = lifecycle(any_config)
    backend: LocalBackend = lc.backend  # type: ignore[assignment]
    backend.driver.ensure_layout()
    loot = world_tmp / "loot"
    loot.mkdir()
    os.chown(loot, attacker.pw_uid, attacker.pw_gid)
    # What an earlier bb42 of the attacker's left behind (before the job-ID wrap).
    old = any_config.root / "storage" / "jobs" / "bb42"
    old.mkdir()
    make_private_dir(old, "scratch", attacker.pw_uid, attacker.pw_gid)
    assert run_as(attacker, "ln", "-s", str(loot), str(old / "scratch" / "result")).returncode == 0

    wf = create(lc, victim, ["#DW jobdw type=xfs capacity=1MiB name=scratch"], 42)
    lc.walk(wf, ["Setup"])
    scratch = Path(lc.environment(wf)["DW_JOB_scratch"])
    assert scratch == old / "scratch"
    assert scratch.stat().st_uid == victim.pw_uid
    assert os.listdir(scratch) == []
    assert run_as(victim, "sh", "-c", f"echo secret > {scratch}/result").returncode == 0
    assert os.listdir(loot) == []
    lc.teardown(wf)


def test_make_private_dir_refuses_an_existing_name(world_tmp: Path, job_user: pwd.struct_passwd) -> None:
    (world_tmp / "taken").mkdir()
    with pytest.raises(StorageError, match="already exists"):
        make_private_dir(world_tmp, "taken", job_user.pw_uid, job_user.pw_gid)
    os.symlink("/etc", world_tmp / "link")
    with pytest.raises(StorageError, match="already exists"):
        make_private_dir(world_tmp, "link", job_user.pw_uid, job_user.pw_gid)
    assert os.stat("/etc").st_uid == 0


def test_removal_never_follows_a_symlink_or_a_hard_link_out_of_the_tree(
    world_tmp: Path, job_user: pwd.struct_passwd, other_user: pwd.struct_passwd
) -> None:
    victim_dir = world_tmp / "victim"
    victim_dir.mkdir()
    (victim_dir / "data").write_text("keep me\n")
    parent = world_tmp / "parent"
    parent.mkdir()
    top = make_private_dir(parent, "top", other_user.pw_uid, other_user.pw_gid)
    script = f"cd {top} && ln -s {victim_dir} dirlink && ln -s {victim_dir}/data filelink && mkdir -p a/b"
    assert run_as(other_user, "sh", "-c", script).returncode == 0
    os.link(victim_dir / "data", top / "a" / "b" / "hard")  # (a user may hard-link what they can read)
    remove_tree(top)
    assert not top.exists()
    assert (victim_dir / "data").read_text() == "keep me\n"
    assert victim_dir.stat().st_uid == 0 and victim_dir.stat().st_mode & 0o777 == 0o755


# --- 11.6: teardown must neither crash nor leak, and never forget storage that remains ---------------------


def test_a_1200_deep_tree_in_job_storage_is_removed_at_teardown(
    any_config: Config, job_user: pwd.struct_passwd
) -> None:
    lc = lifecycle(any_config)
    wf = create(lc, job_user, ["#DW jobdw type=xfs capacity=64MiB name=scratch"], 7)
    lc.walk(wf, ["Setup"])
    scratch = Path(lc.environment(wf)["DW_JOB_scratch"])
    deep = "import os\nfor _ in range(1300):\n    os.mkdir('d'); os.chdir('d'); open('f', 'w').close()"
    made = subprocess.run(
        [sys.executable, "-c", deep],
        cwd=scratch,
        user=job_user.pw_uid,
        group=job_user.pw_gid,
        extra_groups=[],
    )
    assert made.returncode == 0
    lc.teardown(wf, hurry=True)
    assert not scratch.parent.exists()
    assert not lc.exists(wf)


def test_a_process_writing_into_job_storage_during_teardown_cannot_make_it_leak(
    any_config: Config, world_tmp: Path, job_user: pwd.struct_passwd
) -> None:
    lc = lifecycle(any_config)
    wf = create(lc, job_user, ["#DW jobdw type=xfs capacity=1MiB name=scratch"], 8)
    lc.walk(wf, ["Setup"])
    scratch = Path(lc.environment(wf)["DW_JOB_scratch"])
    assert run_as(job_user, "mkdir", str(scratch / "sub")).returncode == 0
    with writer_as(job_user, scratch, world_tmp):
        lc.teardown(wf, hurry=True)
        assert not scratch.parent.exists()
    assert not lc.exists(wf)


@contextmanager
def immutable(path: Path) -> Iterator[None]:
    """A file root cannot unlink (chattr +i): a removal that fails for a reason no retry can mend
    until an admin does (what an I/O error or a stuck filesystem would do)."""
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def test_a_failed_job_storage_removal_keeps_the_workflow_in_teardown_error_until_a_retry(
    dir_config: Config, job_user: pwd.struct_passwd
) -> None:
    lc = lifecycle(dir_config)
    wf = create(lc, job_user, ["#DW jobdw type=xfs capacity=1MiB name=scratch"], 9)
    lc.walk(wf, ["Setup"])
    scratch = Path(lc.environment(wf)["DW_JOB_scratch"])
    assert run_as(job_user, "touch", str(scratch / "stuck")).returncode == 0
    with immutable(scratch / "stuck"):
        with pytest.raises(WorkflowFailed, match=r"storage remains.*stuck"):
            lc.teardown(wf)
        status = lc.status(wf)
        assert (status.desired, status.current, status.status) == ("Teardown", "Teardown", "Error")
        assert f"dwsbridge teardown {wf}" in status.message
        assert (scratch / "stuck").exists()
        with pytest.raises(WorkflowFailed):  # a retry that fails again changes nothing
            lc.teardown(wf, hurry=True)
        assert lc.exists(wf)
    lc.teardown(wf)  # the retry once the cause is gone (Slurm's, the sweep's or an admin's)
    assert not lc.exists(wf)
    assert not scratch.exists()


def test_a_persistent_instance_whose_removal_failed_is_neither_usable_nor_forgotten(
    dir_config: Config, job_user: pwd.struct_passwd, other_user: pwd.struct_passwd
) -> None:
    lc = lifecycle(dir_config)
    path = persistent(lc, job_user, "keep", 20)
    assert run_as(job_user, "touch", str(path / "stuck")).returncode == 0
    with immutable(path / "stuck"):
        wf = destroy(lc, job_user, "keep", 21)
        with pytest.raises(WorkflowFailed, match="storage remains"):
            lc.teardown(wf)
        record = lc.backend.store.get_persistent("keep")  # type: ignore[attr-defined]
        assert record is not None and record["state"] == "destroying"
        with pytest.raises(WorkflowFailed, match="does not exist"):
            create(lc, job_user, ["#DW persistentdw name=keep"], 22)
        with pytest.raises(WorkflowFailed, match="already exists"):
            create(lc, other_user, ["#DW create_persistent type=xfs capacity=1MiB name=keep"], 23)
    lc.teardown(wf)
    assert lc.backend.store.get_persistent("keep") is None  # type: ignore[attr-defined]
    assert not path.exists() and not lc.exists(wf)


def test_the_sweep_removes_storage_no_workflow_or_instance_owns_and_nothing_else(
    local_config: Config, job_user: pwd.struct_passwd, other_user: pwd.struct_passwd
) -> None:
    lc = lifecycle(local_config)
    backend: LocalBackend = lc.backend  # type: ignore[assignment]
    live = create(lc, job_user, ["#DW jobdw type=xfs capacity=1MiB name=scratch"], 30)
    lc.walk(live, ["Setup"])
    kept = persistent(lc, job_user, "kept", 31)
    jobs, instances = local_config.root / "storage" / "jobs", local_config.root / "storage" / "persistent"
    orphan_job = jobs / "bb999"
    orphan_job.mkdir()
    make_private_dir(orphan_job, "scratch", other_user.pw_uid, other_user.pw_gid)
    assert (
        run_as(
            other_user, "sh", "-c", f"mkdir -p {orphan_job}/scratch/a/b && ln -s / {orphan_job}/scratch/r"
        ).returncode
        == 0
    )
    make_private_dir(instances, "ghost", other_user.pw_uid, other_user.pw_gid)

    removed = backend.sweep_storage()
    assert sorted(removed) == sorted([str(orphan_job), str(instances / "ghost")])
    assert not orphan_job.exists() and not (instances / "ghost").exists()
    assert (jobs / live / "scratch").is_dir() and kept.is_dir()
    assert os.listdir(local_config.root / "storage" / "trash") == []
    lc.teardown(live)


# --- 11.3: no long transaction; readers never wait for a writer --------------------------------------------


def test_destroying_a_persistent_instance_removes_it_with_no_transaction_open(
    local_config: Config, job_user: pwd.struct_passwd, monkeypatch: pytest.MonkeyPatch
) -> None:
    lc = lifecycle(local_config)
    path = persistent(lc, job_user, "big", 40)
    probe = sqlite3.connect(local_config.root / "state.db", timeout=0, isolation_level=None)
    seen: list[Path] = []
    real_remove = driver_module.remove_tree

    def remove_checking_the_lock(target: Path) -> object:
        if target == path:
            probe.execute("BEGIN IMMEDIATE")  # raises "database is locked" if the removal held it
            probe.execute("ROLLBACK")
            seen.append(target)
        return real_remove(target)

    monkeypatch.setattr(driver_module, "remove_tree", remove_checking_the_lock)
    lc.teardown(destroy(lc, job_user, "big", 41))
    assert seen == [path] and not path.exists()


def test_status_pools_and_a_new_store_answer_while_another_process_holds_the_write_lock(
    local_config: Config, job_user: pwd.struct_passwd
) -> None:
    lc = lifecycle(local_config)
    wf = create(lc, job_user, ["#DW jobdw type=xfs capacity=1MiB name=scratch"], 50)
    lc.walk(wf, ["Setup"])
    persistent(lc, job_user, "held", 51, capacity="1MiB")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None);"
            " c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); sys.stdin.read()",
            str(local_config.root / "state.db"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    answers: dict[str, object] = {}

    def hooks_inside_slurmctld() -> None:
        fresh = lifecycle(local_config)  # opening the store (a hook's first step)
        answers["pools"] = fresh.pools()
        answers["env"] = fresh.environment(wf)
        answers["status"] = fresh.status(wf).current

    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        worker = threading.Thread(target=hooks_inside_slurmctld, daemon=True)
        worker.start()
        worker.join(timeout=30)  # a hang detector: before the fix, opening waited 60 s for the lock
        assert not worker.is_alive(), "a reader waited for the writer"
    finally:
        holder.kill()
        holder.wait()
    pool = answers["pools"][0]  # type: ignore[index]
    assert pool.free == pool.quantity - 1024**2
    assert answers["status"] == "Setup" and "DW_JOB_scratch" in answers["env"]  # type: ignore[operator]
    lc.teardown(wf)


def test_pools_answers_from_its_cache_when_the_database_stays_locked(
    local_config: Config, job_user: pwd.struct_passwd, monkeypatch: pytest.MonkeyPatch
) -> None:
    lc = lifecycle(local_config)
    persistent(lc, job_user, "cached", 52, capacity="2MiB")
    first = lc.pools()[0]
    backend: LocalBackend = lc.backend  # type: ignore[assignment]

    def locked() -> dict[int, tuple[int, int]]:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(backend.store, "persistent_usage", locked)
    assert lc.pools()[0] == first
    assert first.free == first.quantity - 2 * 1024**2


# --- 11.7: per-user limits; usage reported ---------------------------------------------------------------


def test_one_user_cannot_take_more_persistent_instances_or_bytes_than_the_limit(
    world_tmp: Path, job_user: pwd.struct_passwd, other_user: pwd.struct_passwd
) -> None:
    config = Config(
        root=world_tmp / "root",
        pool_size=1024**3,
        persistent_instances_per_user=2,
        persistent_capacity_per_user=3 * 1024**2,
    )
    lc = lifecycle(config)
    attacker, victim = other_user, job_user
    persistent(lc, attacker, "a1", 60)
    persistent(lc, attacker, "a2", 61)
    with pytest.raises(
        WorkflowFailed, match=r"already holds 2 persistent .*persistent_instances_per_user: 2"
    ):
        create(lc, attacker, ["#DW create_persistent type=xfs capacity=1MiB name=a3"], 62)
    persistent(lc, victim, "v1", 63, capacity="3MiB")  # the other user is not affected
    with pytest.raises(WorkflowFailed, match="persistent_capacity_per_user"):
        create(lc, victim, ["#DW create_persistent type=xfs capacity=1MiB name=v2"], 64)
    backend: LocalBackend = lc.backend  # type: ignore[assignment]
    assert backend.persistent_usage() == {attacker.pw_uid: (2, 2 * 1024**2), victim.pw_uid: (1, 3 * 1024**2)}
    assert lc.pools()[0].free == 1024**3 - 5 * 1024**2


def test_the_per_user_limit_holds_when_setups_race(world_tmp: Path, job_user: pwd.struct_passwd) -> None:
    """Proposal's check is early; Setup's, in the transaction that records the instance, is exact."""
    config = Config(root=world_tmp / "root", persistent_instances_per_user=1)
    lc = lifecycle(config)
    first = create(lc, job_user, ["#DW create_persistent type=xfs capacity=1MiB name=r1"], 65)
    second = create(lc, job_user, ["#DW create_persistent type=xfs capacity=1MiB name=r2"], 66)
    lc.advance_to(first, "Setup")
    with pytest.raises(WorkflowFailed, match="persistent_instances_per_user: 1"):
        lc.advance_to(second, "Setup")
    lc.teardown(second)
    assert lc.backend.store.get_persistent("r2") is None  # type: ignore[attr-defined]
    lc.walk(first, MIDDLE[1:])
    lc.teardown(first)


# --- 11.11: persistentdw of another user's instance -------------------------------------------------------


def test_persistentdw_of_another_users_instance_is_refused_by_default(
    local_config: Config, job_user: pwd.struct_passwd, other_user: pwd.struct_passwd
) -> None:
    lc = lifecycle(local_config)
    persistent(lc, other_user, "expected-name", 70)
    with pytest.raises(
        WorkflowFailed, match=r"belongs to another user.*only its owner.*persistent_sharing: owner"
    ):
        create(lc, job_user, ["#DW persistentdw name=expected-name"], 71)
    wf, path = use(lc, other_user, "expected-name", 72)  # its owner still may
    assert path.stat().st_uid == other_user.pw_uid
    lc.teardown(wf)


def test_a_site_may_allow_sharing_persistent_instances(
    world_tmp: Path, job_user: pwd.struct_passwd, other_user: pwd.struct_passwd
) -> None:
    lc = lifecycle(Config(root=world_tmp / "root", persistent_sharing="all"))
    path = persistent(lc, other_user, "shared", 73)
    wf, used = use(lc, job_user, "shared", 74)
    assert used == path
    lc.teardown(wf)
    grouped = lifecycle(Config(root=world_tmp / "root", persistent_sharing="group"))
    with pytest.raises(WorkflowFailed, match="only its owner and its group"):
        create(grouped, job_user, ["#DW persistentdw name=shared"], 75)


# --- 12.3: destroy_persistent of an absent name -----------------------------------------------------------


def test_destroy_persistent_of_an_absent_name_passes_proposal_and_setup_says_what_is_missing(
    local_config: Config, job_user: pwd.struct_passwd
) -> None:
    lc = lifecycle(local_config)
    wf = create(lc, job_user, ["#DW destroy_persistent name=nosuch"], 80)
    assert lc.status(wf).current == "Proposal" and lc.status(wf).ready
    with pytest.raises(
        WorkflowFailed, match=r"persistent storage 'nosuch' does not exist, so there is nothing to destroy"
    ):
        lc.advance_to(wf, "Setup")
    lc.teardown(wf)
    assert not lc.exists(wf)


# --- 11.8: capacity enforced by a filesystem per allocation -------------------------------------------------


def allocated(path: Path) -> int:
    """Bytes the file really takes on disk."""
    return os.stat(path).st_blocks * 512


def test_a_job_cannot_write_past_its_capacity_nor_grow_its_storage_on_the_state_filesystem(
    local_config: Config, job_user: pwd.struct_passwd
) -> None:
    lc = lifecycle(local_config)
    wf = create(lc, job_user, ["#DW jobdw type=xfs capacity=4MiB name=scratch"], 90)
    lc.walk(wf, ["Setup"])
    scratch = Path(lc.environment(wf)["DW_JOB_scratch"])
    image = local_config.root / "storage" / "images" / f"jobs.{wf}.scratch.img"
    assert os.path.ismount(scratch) and scratch.stat().st_uid == job_user.pw_uid
    assert allocated(image) >= 4 * 1024**2  # taken from the state filesystem at Setup, all of it
    assert os.stat(image).st_dev == os.stat(local_config.root / "state.db").st_dev
    fill = run_as(job_user, "dd", "if=/dev/zero", f"of={scratch}/big", "bs=1M", "count=64")
    assert fill.returncode != 0 and "No space left on device" in fill.stderr
    assert (scratch / "big").stat().st_size < 4 * 1024**2
    assert allocated(image) <= 4 * 1024**2 + 64 * 1024  # the job's writes did not grow the image
    assert os.listdir(scratch) == ["big"]  # no lost+found for a tree copy to trip on
    lc.teardown(wf)
    assert not image.exists() and not os.path.ismount(scratch) and not scratch.exists()


def test_a_persistent_instance_keeps_its_capacity_and_its_data_across_an_unmount(
    local_config: Config, job_user: pwd.struct_passwd
) -> None:
    lc = lifecycle(local_config)
    path = persistent(lc, job_user, "kept-data", 91, capacity="4MiB")
    assert os.path.ismount(path)
    assert run_as(job_user, "sh", "-c", f"echo hello > {path}/note").returncode == 0
    subprocess.run(["umount", str(path)], check=True)  # what a reboot does
    assert not (path / "note").exists()
    assert run_as(job_user, "touch", str(path / "under")).returncode != 0  # the bare mount point is root's
    wf, used = use(lc, job_user, "kept-data", 92)
    assert (used / "note").read_text() == "hello\n"
    fill = run_as(job_user, "dd", "if=/dev/zero", f"of={used}/big", "bs=1M", "count=16")
    assert fill.returncode != 0 and "No space left on device" in fill.stderr
    lc.teardown(wf)
    lc.teardown(destroy(lc, job_user, "kept-data", 93))
    assert not path.exists()
    assert os.listdir(local_config.root / "storage" / "images") == []


def test_a_capacity_too_small_for_a_filesystem_is_refused_at_proposal(
    local_config: Config, job_user: pwd.struct_passwd
) -> None:
    lc = lifecycle(local_config)
    with pytest.raises(WorkflowFailed, match=r"Proposal failed: .*capacity must be at least 1MiB here"):
        create(lc, job_user, ["#DW jobdw type=xfs capacity=64KiB name=scratch"], 89)
    assert not lc.exists("bb89")


def test_create_persistent_without_a_capacity_gets_a_filesystem_of_the_default_size(
    local_config: Config, job_user: pwd.struct_passwd
) -> None:
    config = dataclasses.replace(local_config, persistent_default_capacity=8 * 1024**2)
    lc = lifecycle(config)
    path = persistent_without_capacity(lc, job_user, "sized", 95)
    assert os.path.ismount(path)
    assert lc.backend.store.get_persistent("sized")["capacity"] == 8 * 1024**2  # type: ignore[attr-defined]
    fill = run_as(job_user, "dd", "if=/dev/zero", f"of={path}/big", "bs=1M", "count=32")
    assert fill.returncode != 0 and "No space left on device" in fill.stderr
    lc.teardown(destroy(lc, job_user, "sized", 96))


def persistent_without_capacity(lc: Lifecycle, user: pwd.struct_passwd, name: str, job_id: int) -> Path:
    wf = create(lc, user, [f"#DW create_persistent type=xfs name={name}"], job_id)
    lc.walk(wf, MIDDLE)
    lc.teardown(wf)
    return Path(lc.backend.store.get_persistent(name)["path"])  # type: ignore[attr-defined]


def test_dwsbridge_persistent_reports_instances_and_usage_per_user(
    world_tmp: Path, job_user: pwd.struct_passwd, other_user: pwd.struct_passwd
) -> None:
    import json

    root = world_tmp / "root"
    config_file = world_tmp / "config.yaml"
    config_file.write_text(f"root: {root}\npool_size: 1GiB\npersistent_instances_per_user: 3\n")
    lc = lifecycle(Config(root=root, pool_size=1024**3, persistent_instances_per_user=3))
    persistent(lc, job_user, "p1", 97, capacity="2MiB")
    persistent(lc, other_user, "p2", 98, capacity="1MiB")
    cli = [sys.executable, "-m", "dwsbridge", "--config", str(config_file), "persistent"]
    shown = json.loads(subprocess.run([*cli, "--json"], capture_output=True, text=True, check=True).stdout)
    assert [(i["name"], i["uid"], i["state"]) for i in shown["instances"]] == [
        ("p1", job_user.pw_uid, "active"),
        ("p2", other_user.pw_uid, "active"),
    ]
    users = {u["uid"]: u for u in shown["users"]}
    assert users[job_user.pw_uid] == {
        "uid": job_user.pw_uid,
        "instances": 1,
        "bytes": 2 * 1024**2,
        "max_instances": 3,
        "max_bytes": 1024**3 // 4,
    }
    table = subprocess.run(cli, capture_output=True, text=True, check=True).stdout
    assert "p2" in table and str(other_user.pw_uid) in table
    lc.teardown(destroy(lc, job_user, "p1", 99))
    lc.teardown(destroy(lc, other_user, "p2", 100))


def test_a_new_job_whose_id_names_a_workflow_still_in_teardown_is_told_why_at_setup(
    dir_config: Config, world_tmp: Path, job_user: pwd.struct_passwd
) -> None:
    """A job-ID wrap onto a workflow whose storage could not be removed yet: the new job is held with
    the reason; nothing of the old workflow's storage is handed to it."""
    from dwsbridge.slurm import SlurmHooks, run_hook

    lc = lifecycle(dir_config)
    wf = create(lc, job_user, ["#DW jobdw type=xfs capacity=1MiB name=scratch"], 77)
    lc.walk(wf, ["Setup"])
    scratch = Path(lc.environment(wf)["DW_JOB_scratch"])
    assert run_as(job_user, "touch", str(scratch / "stuck")).returncode == 0
    job_script = world_tmp / "job.sh"
    job_script.write_bytes(
        b"#!/bin/bash\n#DW jobdw type=xfs capacity=1MiB name=scratch pool=dws\nhostname\n\0"
    )
    args = ["77", str(job_user.pw_uid), str(job_user.pw_gid), "dws", str(1024**2), str(job_script)]
    with immutable(scratch / "stuck"):
        with pytest.raises(WorkflowFailed):
            lc.teardown(wf)
        result = run_hook(SlurmHooks(dir_config), "setup", args)
        assert not result.ok
        assert "an earlier workflow of job ID 77 is still being torn down" in result.payload
        assert "storage remains" in result.payload
    lc.teardown(wf)
    assert run_hook(SlurmHooks(dir_config), "setup", args).ok
    lc.teardown(wf)


def test_removing_a_deep_tree_holds_a_bounded_number_of_descriptors(world_tmp: Path) -> None:
    """2,000 levels removed by a process allowed only 24 open files (Python itself holds a few)."""
    top = world_tmp / "deep"
    top.mkdir()
    child = (
        "import os, resource, sys\n"
        "from pathlib import Path\n"
        "from dwsbridge.backends.local.storage import remove_tree\n"
        "top = Path(sys.argv[1])\n"
        "os.chdir(top)\n"
        "for _ in range(2000):\n"
        "    os.mkdir('d'); os.chdir('d'); open('f', 'w').close()\n"
        "os.chdir('/')\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))\n"
        "remove_tree(top)\n"
    )
    subprocess.run([sys.executable, "-c", child, str(top)], check=True)
    assert not top.exists()


def test_storage_cannot_fill_the_filesystem_of_the_state_database(
    world_tmp: Path, job_user: pwd.struct_passwd
) -> None:
    """The local root on a 64 MiB filesystem of its own: a promise made at Proposal is kept for its
    Setup, and a job writing past its capacity stops at it while the database stays writable."""
    image, fs = world_tmp / "state-fs.img", world_tmp / "state-fs"
    fs.mkdir()
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(fs)], check=True)
    os.chmod(fs, 0o755)
    lc = lifecycle(Config(root=fs / "root"))
    half = shutil.disk_usage(fs).free * 6 // 10 // 1024**2
    directive = f"#DW jobdw type=xfs capacity={half}MiB name=scratch"
    first = create(lc, job_user, [directive], 110)
    with pytest.raises(WorkflowFailed, match="are available"):
        create(lc, job_user, [directive], 111)  # the first job's space is promised, not yet taken
    lc.walk(first, ["Setup"])
    scratch = Path(lc.environment(first)["DW_JOB_scratch"])
    fill = run_as(job_user, "dd", "if=/dev/zero", f"of={scratch}/big", "bs=1M", "count=128")
    assert "No space left on device" in fill.stderr
    assert shutil.disk_usage(fs).free > 1024**2  # what the database needs is still there
    small = create(lc, job_user, ["#DW jobdw type=xfs capacity=1MiB name=scratch"], 112)
    lc.walk(small, MIDDLE)
    lc.teardown(small)
    lc.teardown(first)
    second = create(lc, job_user, [directive], 111)
    lc.teardown(second)
