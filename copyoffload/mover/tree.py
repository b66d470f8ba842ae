"""`copy_tree`: a streamed walk feeding a pool of copy threads, as the calling process."""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import queue
import stat
import threading
import time
from collections.abc import Callable

from copyoffload.mover.files import ByteMover
from copyoffload.mover.model import (
    DEFAULT_OPTIONS,
    CopyCancelled,
    CopyError,
    CopyOptions,
    CopyResult,
    Progress,
    os_failure,
)

_BATCH_FILES = 64
_BATCH_BYTES = 64 * 1024 * 1024
_temp_counter = itertools.count()

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
    """
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
            if stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in self.first_link:
                    if self.options.dry_run:
                        self.files_done += 1
                    else:
                        self.later_links.append((self.first_link[key], dest))
                    return
                if st.st_nlink > 1:
                    self.first_link[key] = dest
                self.bytes_total += st.st_size
        if self.options.dry_run:
            with self.lock:
                self.files_done += 1
                self.bytes_done += st.st_size if stat.S_ISREG(st.st_mode) else 0
                self.symlinks += stat.S_ISLNK(st.st_mode)
            return
        batch.append((src, dest, st))

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
                path = _temp_name(dest)
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
        temp = _temp_name(dest)
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


def _temp_name(dest: str) -> str:
    head, name = os.path.split(dest)
    return os.path.join(head, f".{name}.{os.getpid()}-{next(_temp_counter)}.dwsb-part")


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
