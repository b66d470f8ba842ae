"""The data mover as the calling process: what `copy_tree` promises (see copyoffload/mover/__init__.py)."""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from copyoffload.mover import (
    CopyCancelled,
    CopyError,
    CopyOptions,
    Progress,
    copy_as_user,
    copy_tree,
)

SMALL_CHUNKS = CopyOptions(workers=2, chunk_size=4096, atomic_min_size=4096, progress_interval=0.0)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def assert_same_tree(a: Path, b: Path) -> None:
    cmp = filecmp.dircmp(a, b)
    pending = [cmp]
    while pending:
        c = pending.pop()
        assert not c.left_only and not c.right_only and not c.diff_files and not c.funny_files, (
            c.left,
            c.right,
        )
        pending.extend(c.subdirs.values())
    assert tree_hashes(a) == tree_hashes(b)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for d in range(3):
        sub = src / f"dir{d}" / "deeper"
        sub.mkdir(parents=True)
        for f in range(5):
            (src / f"dir{d}" / f"file{f}.bin").write_bytes(os.urandom(1000 * f + d))
        (sub / "leaf.txt").write_text(f"leaf {d}\n")
    (src / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    return src


def test_single_file_is_copied_byte_identical(tmp_path: Path) -> None:
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(2 * 1024 * 1024 + 5))
    copy_tree(src, tmp_path / "copy.bin")
    assert sha256(tmp_path / "copy.bin") == sha256(src)


def test_file_into_existing_directory_lands_under_its_basename(tmp_path: Path) -> None:
    src = tmp_path / "data.bin"
    src.write_bytes(b"payload")
    (tmp_path / "into").mkdir()
    copy_tree(src, tmp_path / "into")
    assert (tmp_path / "into" / "data.bin").read_bytes() == b"payload"


def test_tree_is_copied_byte_identical(tree: Path, tmp_path: Path) -> None:
    result = copy_tree(tree, tmp_path / "dest", options=SMALL_CHUNKS)
    assert_same_tree(tree, tmp_path / "dest")
    assert result.files == 19
    assert result.dirs == 7


def test_tree_into_existing_directory_lands_under_its_basename(tree: Path, tmp_path: Path) -> None:
    (tmp_path / "into").mkdir()
    copy_tree(str(tree) + "/", tmp_path / "into")
    assert_same_tree(tree, tmp_path / "into" / "src")


def test_missing_destination_parent_is_an_error(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(CopyError, match=r"cannot create directory .*/no/such: No such file or directory"):
        copy_tree(tree, tmp_path / "no" / "such")


def test_modes_and_nanosecond_times_are_preserved(tree: Path, tmp_path: Path) -> None:
    odd = tree / "dir1" / "file2.bin"
    odd.chmod(0o640)
    os.utime(odd, ns=(1_000_000_123, 1_500_000_000_987_654_321))
    (tree / "dir2").chmod(0o555)
    os.utime(tree / "dir2", ns=(2_000_000_001, 1_600_000_000_000_000_007))
    rels = ("dir1/file2.bin", "dir2", "dir0", ".")
    before = {rel: (tree / rel).lstat() for rel in rels}
    try:
        copy_tree(tree, tmp_path / "dest")
    finally:
        (tree / "dir2").chmod(0o755)
    for rel in rels:
        a, b = before[rel], (tmp_path / "dest" / rel).lstat()
        assert stat.S_IMODE(b.st_mode) == stat.S_IMODE(a.st_mode), rel
        assert b.st_mtime_ns == a.st_mtime_ns, rel
    assert (tmp_path / "dest" / "dir2").lstat().st_atime_ns == 2_000_000_001


def test_symlinks_are_copied_as_symlinks_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not part of the copy")
    src = tmp_path / "src"
    src.mkdir()
    (src / "target.txt").write_text("t")
    (src / "relative").symlink_to("target.txt")
    (src / "absolute").symlink_to(outside / "secret")
    (src / "dangling").symlink_to("does/not/exist")
    (src / "to_dir").symlink_to(outside)
    result = copy_tree(src, tmp_path / "dest")
    dest = tmp_path / "dest"
    for name in ("relative", "absolute", "dangling", "to_dir"):
        assert (dest / name).is_symlink(), name
        assert os.readlink(dest / name) == os.readlink(src / name), name
    assert result.symlinks == 4


def test_symlink_source_is_copied_as_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to("/etc/hostname")
    copy_tree(tmp_path / "link", tmp_path / "copy")
    assert os.readlink(tmp_path / "copy") == "/etc/hostname"


def test_sparse_file_stays_sparse(tmp_path: Path) -> None:
    src = tmp_path / "sparse.img"
    with open(src, "wb") as f:
        f.truncate(64 * 1024 * 1024)
        f.seek(32 * 1024 * 1024)
        f.write(b"x" * 8192)
    if src.stat().st_blocks * 512 >= src.stat().st_size:
        pytest.skip("this filesystem does not keep holes")
    copy_tree(src, tmp_path / "copy.img")
    copied = (tmp_path / "copy.img").stat()
    assert copied.st_size == src.stat().st_size
    assert copied.st_blocks <= src.stat().st_blocks + 64
    assert sha256(tmp_path / "copy.img") == sha256(src)


def test_empty_files_and_directories_are_copied(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "empty_dir" / "nested_empty").mkdir(parents=True)
    (src / "empty_file").touch()
    copy_tree(src, tmp_path / "dest")
    assert (tmp_path / "dest" / "empty_dir" / "nested_empty").is_dir()
    assert (tmp_path / "dest" / "empty_file").stat().st_size == 0


def test_hard_links_stay_linked(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"shared")
    os.link(src / "a", src / "b")
    copy_tree(src, tmp_path / "dest")
    assert (tmp_path / "dest" / "a").stat().st_ino == (tmp_path / "dest" / "b").stat().st_ino


def test_fifo_is_recreated_and_socket_skipped_with_warning(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(src / "sock"))
        result = copy_tree(src, tmp_path / "dest")
    assert stat.S_ISFIFO((tmp_path / "dest" / "pipe").lstat().st_mode)
    assert not (tmp_path / "dest" / "sock").exists()
    assert any("skipped socket" in w and "sock" in w for w in result.warnings)


def test_existing_destination_file_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"new contents")
    (tmp_path / "dest").write_bytes(b"old contents that are longer")
    copy_tree(tmp_path / "src", tmp_path / "dest")
    assert (tmp_path / "dest").read_bytes() == b"new contents"


def test_directory_does_not_replace_a_file(tree: Path, tmp_path: Path) -> None:
    (tmp_path / "into").mkdir()
    (tmp_path / "into" / "src").write_text("a file")
    with pytest.raises(CopyError, match=r"cannot overwrite non-directory .*into/src with directory"):
        copy_tree(tree, tmp_path / "into")


def test_copying_a_directory_into_itself_is_refused(tree: Path) -> None:
    with pytest.raises(CopyError, match="into itself"):
        copy_tree(tree, tree / "dir0")


def test_dry_run_counts_and_writes_nothing(tree: Path, tmp_path: Path) -> None:
    result = copy_tree(tree, tmp_path / "dest", options=CopyOptions(dry_run=True))
    assert not (tmp_path / "dest").exists()
    assert result.dry_run
    assert result.files == 19
    assert result.bytes == sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())


def test_progress_reaches_100_percent_with_correct_totals(tree: Path, tmp_path: Path) -> None:
    seen: list[Progress] = []
    copy_tree(tree, tmp_path / "dest", options=SMALL_CHUNKS, progress=seen.append)
    total = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
    last = seen[-1]
    assert last.finished and last.percent == 100.0
    assert (last.bytes_done, last.bytes_total) == (total, total)
    assert (last.files_done, last.files_total) == (19, 19)
    assert all(p.percent < 100.0 for p in seen[:-1])


class CancelAfter(threading.Event):
    """An Event that reads as set from its n-th check on: cancels mid-copy without timing."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.remaining = checks
        self.guard = threading.Lock()

    def is_set(self) -> bool:
        with self.guard:
            self.remaining -= 1
            return self.remaining < 0 or super().is_set()


def test_cancellation_raises_and_leaves_no_partial_file(tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(1024 * 1024))
    options = CopyOptions(workers=1, chunk_size=4096, atomic_min_size=4096)
    with pytest.raises(CopyCancelled):
        copy_tree(src, tmp_path / "copy.bin", options=options, cancel=CancelAfter(10))
    assert os.listdir(tmp_path) == ["big.bin"]


def test_cancellation_of_a_tree_stops_before_the_end(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(CopyCancelled):
        copy_tree(tree, tmp_path / "dest", options=SMALL_CHUNKS, cancel=CancelAfter(12))
    copied = [p for p in (tmp_path / "dest").rglob("*") if p.is_file()]
    assert len(copied) < 19
    assert not [p for p in (tmp_path / "dest").rglob("*dwsb-part")]


def test_missing_source_is_a_copy_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(CopyError, match=r"cannot stat .*/nowhere: No such file or directory"):
        copy_tree(tmp_path / "nowhere", tmp_path / "dest")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere; see test_mover_privileges.py")
def test_unwritable_destination_is_a_copy_error_naming_it(tree: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(CopyError, match=r"locked/src: Permission denied"):
        copy_tree(tree, locked)


def test_copy_as_self_runs_in_a_child_and_reports_it(tree: Path, tmp_path: Path) -> None:
    pids: list[int] = []
    seen: list[Progress] = []
    result = copy_as_user(
        tree,
        tmp_path / "dest",
        uid=os.geteuid(),
        gid=os.getegid(),
        on_child=pids.append,
        progress=seen.append,
    )
    assert_same_tree(tree, tmp_path / "dest")
    assert result.files == 19
    assert pids and pids[0] != os.getpid()
    assert seen[-1].finished


def test_copy_as_self_relays_the_childs_error(tmp_path: Path) -> None:
    with pytest.raises(CopyError, match=r"cannot stat .*/nowhere: No such file or directory"):
        copy_as_user(tmp_path / "nowhere", tmp_path / "dest", uid=os.geteuid(), gid=os.getegid())


def test_cancel_event_stops_a_child_copy(tree: Path, tmp_path: Path) -> None:
    cancel = threading.Event()
    with pytest.raises(CopyCancelled):
        copy_as_user(
            tree,
            tmp_path / "dest",
            uid=os.geteuid(),
            gid=os.getegid(),
            cancel=cancel,
            on_child=lambda pid: cancel.set(),
        )


def test_module_entry_point_prints_json_lines(tree: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "copyoffload.mover", str(tree), str(tmp_path / "dest"), "--json-progress"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    events = [json.loads(line) for line in out.splitlines()]
    assert events[-1]["event"] == "result" and events[-1]["files"] == 19
    assert events[-2]["event"] == "progress" and events[-2]["percent"] == 100.0


# -- the process pool (directory trees are copied by forked workers; see copyoffload/mover/pool.py) --------


def _children() -> set[int]:
    """Live (or unreaped) child processes of this process."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid():
                found.add(int(entry))
    return found


def test_many_files_in_many_directories_are_copied_and_workers_reaped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
    for f in range(600):  # more than one task's worth in one directory
        (src / "d0" / f"f{f}").write_bytes(f.to_bytes(2, "big") * (f % 7))
    for d in range(1, 4):
        for f in range(20):
            (src / f"d{d}" / f"g{f}").write_text(str(d * f))
    seen: list[Progress] = []
    before = _children()
    result = copy_tree(src, tmp_path / "dest", options=CopyOptions(workers=3), progress=seen.append)
    assert_same_tree(src, tmp_path / "dest")
    assert (result.files, result.dirs) == (660, 5)
    assert seen[-1].files_done == seen[-1].files_total == 660
    assert _children() <= before


def test_merge_replaces_existing_files_and_symlinks_atomically(tree: Path, tmp_path: Path) -> None:
    (tree / "dir0" / "link").symlink_to("file1.bin")
    (tmp_path / "into").mkdir()
    copy_tree(tree, tmp_path / "into")
    dest = tmp_path / "into" / "src"
    (dest / "dir0" / "file1.bin").write_bytes(b"stale and longer than the source file " * 100)
    (dest / "dir0" / "link").unlink()
    (dest / "dir0" / "link").symlink_to("elsewhere")
    (dest / "dir1" / "extra").write_text("kept")
    copy_tree(tree, tmp_path / "into")  # merges into into/src
    assert (dest / "dir0" / "file1.bin").read_bytes() == (tree / "dir0" / "file1.bin").read_bytes()
    assert os.readlink(dest / "dir0" / "link") == "file1.bin"
    assert (dest / "dir1" / "extra").read_text() == "kept"
    assert not list(dest.rglob("*dwsb-part"))


def test_hard_links_across_directories_and_to_outside_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    (src / "a" / "one").write_bytes(b"linked")
    os.link(src / "a" / "one", src / "b" / "two")
    (tmp_path / "outside").write_bytes(b"outer")
    os.link(tmp_path / "outside", src / "b" / "three")
    result = copy_tree(src, tmp_path / "dest")
    dest = tmp_path / "dest"
    assert (dest / "a" / "one").stat().st_ino == (dest / "b" / "two").stat().st_ino
    assert (dest / "b" / "three").read_bytes() == b"outer"
    assert (dest / "b" / "three").stat().st_nlink == 1
    assert result.files == 3


def test_modes_ignore_the_umask_and_keep_special_bits(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    modes = {"open": 0o777, "ro": 0o444, "none": 0o000, "setgid": 0o2750, "sticky": 0o1777}
    for name, mode in modes.items():
        (src / name).write_text(name)
        (src / name).chmod(mode)
    old = os.umask(0o077)
    try:
        copy_tree(src, tmp_path / "dest")
    finally:
        os.umask(old)
    for name, mode in modes.items():
        assert stat.S_IMODE((tmp_path / "dest" / name).lstat().st_mode) == mode, name


def test_a_workers_error_names_the_path_and_stops_the_copy(tree: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "src" / "dir1" / "file3.bin").mkdir(parents=True)  # a directory where a file must go
    before = _children()
    with pytest.raises(CopyError, match=r"cannot replace .*dest/src/dir1/file3.bin: Is a directory"):
        copy_tree(tree, dest)
    assert not list(dest.rglob("*dwsb-part"))
    assert _children() <= before


def test_bwlimit_copies_a_tree_with_the_thread_pool(tree: Path, tmp_path: Path) -> None:
    result = copy_tree(tree, tmp_path / "dest", options=CopyOptions(bwlimit=1 << 30))
    assert_same_tree(tree, tmp_path / "dest")
    assert result.files == 19


def test_sigterm_to_a_child_copy_removes_partial_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        with open(src / f"big{i}", "wb") as f:
            f.write(os.urandom(1024 * 1024) * 24)
    proc = subprocess.Popen(
        [sys.executable, "-m", "copyoffload.mover", str(src), str(tmp_path / "dest"), "--json-progress"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # the first progress event: workers are copying
    os.killpg(proc.pid, 15)
    assert proc.wait(10) == 130
    assert not list((tmp_path / "dest").rglob("*dwsb-part"))


def test_a_worker_killed_after_finish_with_tasks_outstanding_is_an_error(tmp_path: Path) -> None:
    """finish() does not excuse a worker that dies before answering its tasks: files would be missing."""
    import signal

    from copyoffload.mover.pool import Pool, WorkerConfig, WorkerDied

    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    (src / "f").write_bytes(b"x")
    pool = Pool(
        1, WorkerConfig(chunk_size=4096, atomic_min_size=4096, preserve_owner=False, progress_interval=0)
    )
    pool.start()
    try:
        pid = pool.handles[0].pid
        os.kill(pid, signal.SIGSTOP)  # the task below stays unanswered
        assert pool.try_submit((str(src), str(dest), ["f"]))
        pool.finish()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerDied, match="SIGKILL"):
            while pool.live:
                pool.pump(0.1)
    finally:
        pool.close()
    assert not (dest / "f").exists()
