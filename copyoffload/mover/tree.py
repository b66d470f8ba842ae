"""`copy_tree`: a streamed walk feeding a pool of copy workers, as the calling process.

A directory tree is copied by forked worker processes (pool.py: no GIL between files); a single file, a
dry run, or a copy with `bwlimit` (one shared pacing schedule) uses threads in this process. pool.py (and
multiprocessing) is imported only when a pool is started: a single-file copy's child starts without it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import stat
import threading
import time
from collections.abc import Callable

from copyoffload.mover.files import ByteMover, temp_name
from copyoffload.mover.model import (
    DEFAULT_OPTIONS,
    CopyCancelled,
    CopyError,
    CopyOptions,
    CopyResult,
    Progress,
    os_failure,
)
from copyoffload.s3url import is_s3_url

# Not typing.TYPE_CHECKING: importing typing would cost the mover's child process several ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from copyoffload.mover.pool import Pool

_BATCH_FILES = 64
_BATCH_BYTES = 64 * 1024 * 1024

Entry = tuple[str, str, os.stat_result]  # source path, destination path, source lstat


class _Stopped(Exception):
    """Another worker failed or the caller cancelled: abandon the current file."""


def copy_tree(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    options: CopyOptions = DEFAULT_OPTIONS,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
) -> CopyResult:
    """Copy a file, a symlink or a directory tree like `cp -a`, as the calling process.

    If `dest` is an existing directory (or a symlink to one) the copy is `dest/basename(src)`; otherwise
    `dest` itself is created and its parent must exist. Raises `CopyError` or `CopyCancelled`.
    An `s3://` source or destination is copied by copyoffload.mover.s3 (boto3, imported only then).
    """
    if is_s3_url(os.fspath(src)) or is_s3_url(os.fspath(dest)):
        from copyoffload.mover.s3 import s3_copy

        return s3_copy(os.fspath(src), os.fspath(dest), options=options, progress=progress, cancel=cancel)
    return _TreeCopy(os.fspath(src), os.fspath(dest), options, progress, cancel).run()


def resolve_target(src: str, dest: str) -> str:
    """Where `src` lands: inside `dest` when it is a directory, else `dest` itself (cp's rule)."""
    if os.path.isdir(dest):
        name = os.path.basename(os.path.normpath(src))
        if name in ("", ".", "..", "/"):
            raise CopyError(f"cannot copy {src}: give the source by a name, not {src!r}", path=src)
        return os.path.join(dest, name)
    return dest


class _TreeCopy:
    def __init__(
        self,
        src: str,
        dest: str,
        options: CopyOptions,
        progress: Callable[[Progress], None] | None,
        cancel: threading.Event | None,
    ) -> None:
        self.src = src
        self.dest = dest
        self.options = options
        self.progress_cb = progress
        self.cancel = cancel or threading.Event()
        self.stop = threading.Event()
        self.preserve_owner = options.preserve_owner and os.geteuid() == 0
        self.bytes_mover = ByteMover(options.chunk_size, options.bwlimit)
        self.queue: queue.Queue[list[Entry] | None] = queue.Queue(maxsize=2 * options.workers)
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.bytes_done = self.bytes_total = 0
        self.files_done = self.files_total = 0
        self.dirs = self.symlinks = 0
        self.scan_complete = False
        self.warnings: list[str] = []
        self.dir_attrs: list[tuple[str, os.stat_result]] = []
        self.first_link: dict[tuple[int, int], str] = {}
        self.later_links: list[tuple[str, str]] = []
        self.last_report = 0.0

    # -- driving -------------------------------------------------------------------------------------

    def run(self) -> CopyResult:
        try:
            st = os.lstat(self.src)
        except OSError as exc:
            raise os_failure("stat", self.src, exc) from None
        target = resolve_target(self.src, self.dest)
        self._check_target(st, target)
        if stat.S_ISDIR(st.st_mode) and not self.options.dry_run and not self.options.bwlimit:
            from copyoffload.mover.pool import Pool, WorkerConfig

            pool = Pool(
                self.options.workers,
                WorkerConfig(
                    chunk_size=self.options.chunk_size,
                    atomic_min_size=self.options.atomic_min_size,
                    preserve_owner=self.preserve_owner,
                    progress_interval=self.options.progress_interval,
                ),
            )
            try:
                pool.start()
            except OSError:
                pass  # cannot fork (process limit): the thread pool below still copies
            else:
                return self._run_pool(pool, target, st)
        threads = [] if self.options.dry_run else self._start_workers()
        try:
            try:
                self._scan(self.src, target, st)
            except BaseException as exc:
                self._fail(exc)
            finally:
                with self.lock:
                    self.scan_complete = True
                for _ in threads:
                    self._put(None)
            for thread in threads:
                while thread.is_alive():
                    thread.join(self.options.progress_interval)
                    self._report()
            self._raise_if_stopped()
            if not self.options.dry_run:
                self._finish_links()
                self._finish_dirs()
        except BaseException as exc:
            self._fail(exc)
        return self._result()

    def _result(self) -> CopyResult:
        self._raise_if_stopped()
        self._report(finished=True)
        return CopyResult(
            files=self.files_done,
            dirs=self.dirs,
            symlinks=self.symlinks,
            bytes=self.bytes_done,
            dry_run=self.options.dry_run,
            warnings=tuple(self.warnings),
        )

    def _check_target(self, st: os.stat_result, target: str) -> None:
        try:
            tst = os.stat(target)
        except OSError:
            tst = None
        if tst is not None and os.path.samestat(st, tst):
            raise CopyError(f"cannot copy {self.src} to {target}: they are the same file", path=self.src)
        if stat.S_ISDIR(st.st_mode):
            real_src = os.path.realpath(self.src)
            real_parent = os.path.realpath(os.path.dirname(os.path.abspath(target)))
            if real_parent == real_src or real_parent.startswith(real_src.rstrip("/") + "/"):
                raise CopyError(f"cannot copy a directory, {self.src}, into itself, {target}", path=self.src)

    def _fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.error is None and not isinstance(exc, _Stopped):
                self.error = exc
        self.stop.set()

    def _raise_if_stopped(self) -> None:
        if self.error is not None:
            raise self.error
        if self.cancel.is_set() or self.stop.is_set():
            raise CopyCancelled(f"copy of {self.src} to {self.dest} was cancelled")

    def _check_stop(self) -> None:
        if self.cancel.is_set():
            self.stop.set()
        if self.stop.is_set():
            raise _Stopped

    def _report(self, finished: bool = False) -> None:
        if self.progress_cb is None:
            return
        now = time.monotonic()
        if not finished and now - self.last_report < self.options.progress_interval:
            return
        self.last_report = now
        with self.lock:
            snapshot = Progress(
                bytes_done=self.bytes_done,
                bytes_total=self.bytes_total,
                files_done=self.files_done,
                files_total=self.files_total,
                scan_complete=self.scan_complete,
                finished=finished,
            )
        self.progress_cb(snapshot)

    # -- the process pool (directories, no bandwidth limit) ---------------------------------------------

    def _run_pool(self, pool: Pool, target: str, st: os.stat_result) -> CopyResult:
        """Walk directories here; forked workers copy the entries (see pool.py); rare entries come back."""
        self.pool = pool
        self.pending_scans = 0
        self.walk_done = False
        self.deferred: list[Entry] = []
        try:
            try:
                self._make_dir(self.src, target, st)
                self._walk(target)
                self.walk_done = True
                self._update_scan_complete()
                pool.finish()
                while pool.live:
                    self._pump(self._wait_interval())
            finally:
                pool.close()
            self._raise_if_stopped()
            for src, dest, est in self.deferred:
                self._copy_entry(src, dest, est)
            self._finish_links()
            self._finish_dirs()
        except BaseException as exc:
            self._fail(exc)
        with self.lock:
            self.scan_complete = True
        return self._result()

    def _walk(self, target: str) -> None:
        from copyoffload.mover.pool import TASK_NAME_BYTES, TASK_NAMES

        stack = [(self.src, target)]
        while stack:
            src_dir, dest_dir = stack.pop()
            names: list[str] = []
            size = 0
            try:
                with os.scandir(src_dir) as entries:
                    for entry in entries:
                        self._check_stop()
                        try:
                            is_dir = entry.is_dir(follow_symlinks=False)
                            est = entry.stat(follow_symlinks=False) if is_dir else None
                        except OSError as exc:
                            raise os_failure("stat", entry.path, exc) from None
                        if est is not None:
                            d = os.path.join(dest_dir, entry.name)
                            self._make_dir(entry.path, d, est)
                            stack.append((entry.path, d))
                            continue
                        names.append(entry.name)
                        size += len(entry.name)
                        if len(names) >= TASK_NAMES or size >= TASK_NAME_BYTES:
                            self._submit((src_dir, dest_dir, names))
                            names = []
                            size = 0
            except OSError as exc:
                raise os_failure("read directory", src_dir, exc) from None
            if names:
                self._submit((src_dir, dest_dir, names))

    def _submit(self, task: tuple[str, str, list[str]]) -> None:
        with self.lock:
            self.files_total += len(task[2])
        self.pending_scans += 1
        self._pump(0)
        while not self.pool.try_submit(task):
            self._pump(self._wait_interval())

    def _wait_interval(self) -> float:
        return min(0.1, max(0.01, self.options.progress_interval))

    def _pump(self, timeout: float) -> None:
        """Apply the workers' messages; raise the first error; report progress; honour cancellation."""
        from copyoffload.mover.pool import WorkerDied

        try:
            messages = self.pool.pump(timeout)
        except WorkerDied as exc:
            if self.cancel.is_set():
                raise _Stopped from None
            raise CopyError(f"copy of {self.src} failed: {exc}", path=self.src) from None
        for message in messages:
            kind = message[0]
            if kind == "scan":
                with self.lock:
                    self.bytes_total += message[1]
                self.pending_scans -= 1
                self._update_scan_complete()
            elif kind == "bytes":
                with self.lock:
                    self.bytes_done += message[1]
            elif kind == "done":
                _, files, nbytes, symlinks, deferred = message
                with self.lock:
                    self.files_done += files
                    self.bytes_done += nbytes
                    self.symlinks += symlinks
                    for src, dest, est in deferred:
                        if self._count_links(dest, est):
                            self.deferred.append((src, dest, est))
            elif kind == "error":
                _, text, path, errno = message
                raise CopyError(str(text), path=str(path), errno=errno if isinstance(errno, int) else None)
            elif kind == "crash":
                crash = f"copy of {self.src} failed: a copy worker crashed:\n{message[1]}"
                raise CopyError(crash, path=self.src)
            elif kind == "stopped":
                self.stop.set()
        self._report()
        self._check_stop()

    def _update_scan_complete(self) -> None:
        with self.lock:
            self.scan_complete = self.walk_done and self.pending_scans == 0

    # -- the walk (calling thread) ---------------------------------------------------------------------

    def _scan(self, src: str, target: str, st: os.stat_result) -> None:
        if not stat.S_ISDIR(st.st_mode):
            batch: list[Entry] = []
            self._add(src, target, st, batch)
            self._flush(batch)
            return
        self._make_dir(src, target, st)
        stack = [(src, target)]
        while stack:
            src_dir, dest_dir = stack.pop()
            batch = []
            batch_bytes = 0
            try:
                with os.scandir(src_dir) as entries:
                    for entry in entries:
                        self._check_stop()
                        s = entry.path
                        d = os.path.join(dest_dir, entry.name)
                        try:
                            est = entry.stat(follow_symlinks=False)
                        except OSError as exc:
                            raise os_failure("stat", s, exc) from None
                        if stat.S_ISDIR(est.st_mode):
                            self._make_dir(s, d, est)
                            stack.append((s, d))
                            continue
                        self._add(s, d, est, batch)
                        batch_bytes += est.st_size
                        if len(batch) >= _BATCH_FILES or batch_bytes >= _BATCH_BYTES:
                            self._flush(batch)
                            batch = []
                            batch_bytes = 0
            except OSError as exc:
                raise os_failure("read directory", src_dir, exc) from None
            self._flush(batch)
            self._report()

    def _add(self, src: str, dest: str, st: os.stat_result, batch: list[Entry]) -> None:
        """Count one non-directory entry and queue it; links to an already-seen inode wait for the end."""
        with self.lock:
            self.files_total += 1
            if not self._count_links(dest, st):
                return
        if self.options.dry_run:
            with self.lock:
                self.files_done += 1
                self.bytes_done += st.st_size if stat.S_ISREG(st.st_mode) else 0
                self.symlinks += stat.S_ISLNK(st.st_mode)
            return
        batch.append((src, dest, st))

    def _count_links(self, dest: str, st: os.stat_result) -> bool:
        """Hard links: False for a later link to an inode already seen (linked at the end). Holds the lock."""
        if stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.first_link:
                if self.options.dry_run:
                    self.files_done += 1
                else:
                    self.later_links.append((self.first_link[key], dest))
                return False
            if st.st_nlink > 1:
                self.first_link[key] = dest
            self.bytes_total += st.st_size
        return True

    def _flush(self, batch: list[Entry]) -> None:
        if batch and not self.options.dry_run:
            self._put(batch)

    def _put(self, item: list[Entry] | None) -> None:
        while True:
            try:
                self.queue.put(item, timeout=self.options.progress_interval)
                return
            except queue.Full:
                self._report()

    def _make_dir(self, src: str, dest: str, st: os.stat_result) -> None:
        with self.lock:
            self.dirs += 1
        if self.options.dry_run:
            return
        try:
            os.mkdir(dest, 0o700)
        except FileExistsError:
            dst = os.lstat(dest)
            if not stat.S_ISDIR(dst.st_mode):
                raise CopyError(
                    f"cannot overwrite non-directory {dest} with directory {src}", path=dest
                ) from None
        except OSError as exc:
            raise os_failure("create directory", dest, exc) from None
        self.dir_attrs.append((dest, st))

    # -- the workers -------------------------------------------------------------------------------------

    def _start_workers(self) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=self._work, name=f"mover-{i}", daemon=True)
            for i in range(self.options.workers)
        ]
        for thread in threads:
            thread.start()
        return threads

    def _work(self) -> None:
        while True:
            batch = self.queue.get()
            if batch is None:
                return
            for src, dest, st in batch:
                if self.stop.is_set():
                    break
                try:
                    self._copy_entry(src, dest, st)
                except BaseException as exc:
                    self._fail(exc)

    def _copy_entry(self, src: str, dest: str, st: os.stat_result) -> None:
        self._check_stop()
        mode = st.st_mode
        if stat.S_ISREG(mode):
            self._copy_file(src, dest, st)
        elif stat.S_ISLNK(mode):
            self._copy_symlink(src, dest, st)
        elif stat.S_ISFIFO(mode):
            self._place(dest, lambda path: os.mkfifo(path, 0o600), "create fifo")
            self._set_attrs(dest, st)
        else:
            kind = (
                "socket"
                if stat.S_ISSOCK(mode)
                else "device"
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "file"
            )
            with self.lock:
                self.warnings.append(f"skipped {kind} {src}: special files other than fifos are not copied")
        with self.lock:
            self.files_done += 1

    def _copy_file(self, src: str, dest: str, st: os.stat_result) -> None:
        try:
            fi = os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            raise os_failure("read", src, exc) from None
        try:
            atomic = st.st_size > self.options.atomic_min_size
            path = dest
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            fo = -1
            if not atomic:
                try:
                    fo = os.open(dest, flags, 0o600)
                except FileExistsError:
                    atomic = True
                except OSError as exc:
                    raise os_failure("create", dest, exc) from None
            if atomic:
                path = temp_name(dest)
                try:
                    fo = os.open(path, flags, 0o600)
                except OSError as exc:
                    raise os_failure("create", dest, exc) from None
            try:
                try:
                    self.bytes_mover.copy(fi, fo, st.st_size, st.st_blocks, self._advance)
                except OSError as exc:
                    raise os_failure("copy", f"{src} to {dest}", exc) from None
                self._set_fd_attrs(fo, dest, st)
            except BaseException:
                os.close(fo)
                _unlink_quietly(path)
                raise
            os.close(fo)
            if atomic:
                try:
                    os.replace(path, dest)
                except OSError as exc:
                    _unlink_quietly(path)
                    raise os_failure("replace", dest, exc) from None
        finally:
            os.close(fi)

    def _advance(self, n: int) -> None:
        with self.lock:
            self.bytes_done += n
        self._check_stop()

    def _copy_symlink(self, src: str, dest: str, st: os.stat_result) -> None:
        try:
            link = os.readlink(src)
        except OSError as exc:
            raise os_failure("read symlink", src, exc) from None
        self._place(dest, lambda path: os.symlink(link, path), "create symlink")
        self._set_attrs(dest, st)
        with self.lock:
            self.symlinks += 1

    def _place(self, dest: str, create: Callable[[str], None], verb: str) -> None:
        """Create a non-regular entry; an existing non-directory is replaced atomically."""
        try:
            create(dest)
            return
        except FileExistsError:
            pass
        except OSError as exc:
            raise os_failure(verb, dest, exc) from None
        temp = temp_name(dest)
        try:
            create(temp)
            os.replace(temp, dest)
        except OSError as exc:
            _unlink_quietly(temp)
            raise os_failure(verb, dest, exc) from None

    def _set_fd_attrs(self, fd: int, dest: str, st: os.stat_result) -> None:
        try:
            if self.preserve_owner:
                os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        except OSError as exc:
            raise os_failure("set attributes of", dest, exc) from None

    def _set_attrs(self, dest: str, st: os.stat_result) -> None:
        """Owner, mode and times by path, never following a symlink."""
        try:
            if self.preserve_owner:
                os.chown(dest, st.st_uid, st.st_gid, follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(dest, stat.S_IMODE(st.st_mode))
            os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        except OSError as exc:
            raise os_failure("set attributes of", dest, exc) from None

    # -- after the pool ---------------------------------------------------------------------------------

    def _finish_links(self) -> None:
        for first, dest in self.later_links:
            self._check_stop()
            self._place(dest, functools.partial(os.link, first), "create hard link")
            with self.lock:
                self.files_done += 1

    def _finish_dirs(self) -> None:
        """Directory modes and times last and deepest first: writing entries changes a directory's mtime."""
        for dest, st in reversed(self.dir_attrs):
            self._set_attrs(dest, st)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
