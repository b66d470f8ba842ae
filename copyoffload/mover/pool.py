"""A pool of forked copy processes for directory trees: no GIL between files, few syscalls per file.

The parent (tree.py) walks directories only (scandir's d_type: no stat per file), creates the destination
directories and hands out tasks `(src_dir, dest_dir, names)` of at most `TASK_NAMES` entries of one
directory. A worker stats, copies and stamps each entry relative to directory fds:
`fstatat, openat, openat(O_CREAT|O_EXCL, final mode), copy_file_range, futimens, close, close` for a small
file (plus `fchown`/`fchmod` only when they change something). Entries that need the whole copy's knowledge
(regular files with several links) or are rare (fifos, sockets, devices) come back to the parent, which
finishes them after the pool.

Worker -> parent messages (one `Connection` per worker):
`("scan", bytes)` once a task's entries are stat'ed; `("bytes", n)` while a large file is copied;
`("done", files, bytes, symlinks, deferred)` at the end of a task; `("error", message, path, errno)`,
`("stopped",)` or `("crash", text)` just before the worker exits.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import stat
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe, wait
from types import FrameType
from typing import Any, NoReturn

from copyoffload.mover.files import UNSUPPORTED, ByteMover, temp_name
from copyoffload.mover.model import CopyError, os_failure

TASK_NAMES = 256  # entries per task: small enough to balance, large enough to amortise a message
TASK_NAME_BYTES = 32 * 1024  # ...and a bounded message, so a send to a busy worker never blocks
MAX_OUTSTANDING = 2  # tasks queued per worker
_REPORT_BYTES = 8 * 1024 * 1024  # within a task, bytes are reported at most this late (or per interval)

_SRC_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
_SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX

Task = tuple[str, str, list[str]]
Deferred = tuple[str, str, os.stat_result]
Message = tuple[Any, ...]  # (kind, ...) as listed in the module docstring


@dataclass(frozen=True)
class WorkerConfig:
    chunk_size: int
    atomic_min_size: int
    preserve_owner: bool  # already False unless the process is root
    progress_interval: float


class WorkerDied(Exception):
    """A worker ended without saying why (killed, or crashed before it could report)."""


class _Stopped(Exception):
    pass


@dataclass
class _Handle:
    pid: int
    conn: Connection
    outstanding: int = 0
    alive: bool = True
    said_goodbye: bool = False


class Pool:
    """The parent's side: start, submit, pump messages, finish or abort, always reap."""

    def __init__(self, workers: int, config: WorkerConfig) -> None:
        self.size = workers
        self.config = config
        self.stop = mmap.mmap(-1, 1)  # shared with the workers: 1 = stop after the current file/chunk
        self.handles: list[_Handle] = []
        self.finished = False

    def start(self) -> None:
        """Fork the workers (raises OSError when that fails; nothing is left running then)."""
        pairs = [Pipe(duplex=True) for _ in range(self.size)]
        try:
            for i, (_parent_end, child_end) in enumerate(pairs):
                pid = os.fork()
                if pid == 0:  # pragma: no cover - runs in the child
                    others = [p for p, _ in pairs] + [c for j, (_, c) in enumerate(pairs) if j != i]
                    _child_main(child_end, others, self.stop, self.config)
                self.handles.append(_Handle(pid, pairs[i][0]))
        except BaseException:
            for _, child_end in pairs:
                child_end.close()
            self.close()
            for parent_end, _ in pairs[len(self.handles) :]:
                parent_end.close()
            raise
        for _, child_end in pairs:
            child_end.close()

    @property
    def live(self) -> list[_Handle]:
        return [h for h in self.handles if h.alive]

    def try_submit(self, task: Task) -> bool:
        """Send `task` to the least busy worker if one has room; False when all are full."""
        live = self.live
        if not live:
            raise WorkerDied("no copy worker is left")
        handle = min(live, key=lambda h: h.outstanding)
        if handle.outstanding >= MAX_OUTSTANDING:
            return False
        handle.conn.send(task)
        handle.outstanding += 1
        return True

    def pump(self, timeout: float) -> list[Message]:
        """Messages that arrived within `timeout` seconds; raises WorkerDied for an unannounced exit."""
        live = self.live
        if not live:
            return []
        messages: list[Message] = []
        for conn in wait([h.conn for h in live], timeout):
            handle = next(h for h in live if h.conn is conn)
            try:
                while True:
                    message = handle.conn.recv()
                    if message[0] in ("done", "error", "stopped", "crash"):
                        handle.outstanding = max(0, handle.outstanding - 1)
                    if message[0] in ("error", "stopped", "crash"):
                        handle.said_goodbye = True
                    messages.append(message)
                    if not handle.conn.poll():
                        break
            except (EOFError, OSError):
                handle.alive = False
                # A clean exit follows finish() with every task answered; anything else lost tasks.
                clean = self.finished and handle.outstanding == 0
                if not handle.said_goodbye and not clean and not self.stop[0]:
                    raise WorkerDied(self._reap(handle)) from None
        return messages

    def finish(self) -> None:
        """No more tasks: each worker exits once its queue is done (pump until `live` is empty)."""
        self.finished = True
        for handle in self.live:
            with contextlib.suppress(OSError):
                handle.conn.send(None)

    def close(self) -> None:
        """Stop the workers unless they finished, and reap them all (partial files are gone after this)."""
        if not self.finished or self.live:
            self.stop[0] = 1
            for handle in self.live:  # an idle worker is in recv(): tell it directly
                with contextlib.suppress(OSError):
                    handle.conn.send(None)
        for handle in self.handles:
            handle.conn.close()
        for handle in self.handles:
            self._reap(handle)
        self.handles = []

    @staticmethod
    def _reap(handle: _Handle) -> str:
        handle.alive = False
        try:
            _, status = os.waitpid(handle.pid, 0)
        except ChildProcessError:
            return f"copy worker {handle.pid} is gone"
        if os.WIFSIGNALED(status):
            name = signal.Signals(os.WTERMSIG(status)).name
            return f"copy worker {handle.pid} was killed by {name}"
        return f"copy worker {handle.pid} exited with status {os.WEXITSTATUS(status)}"


# -- the worker -------------------------------------------------------------------------------------------


def _child_main(
    conn: Connection, others: list[Connection], stop: mmap.mmap, config: WorkerConfig
) -> NoReturn:  # pragma: no cover - runs in the child
    status = 0
    try:
        for other in others:
            other.close()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop[0] = 1

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        os.umask(0)  # every create below passes its final (or a private) mode explicitly
        _Worker(conn, stop, config).serve()
    except _Stopped:
        _send_quietly(conn, ("stopped",))
    except CopyError as exc:
        _send_quietly(conn, ("error", exc.message, exc.path, exc.errno))
    except BaseException:
        _send_quietly(conn, ("crash", traceback.format_exc(limit=8)))
        status = 1
    finally:
        os._exit(status)


def _send_quietly(conn: Connection, message: Message) -> None:
    with contextlib.suppress(Exception):
        conn.send(message)


class _Worker:
    def __init__(self, conn: Connection, stop: mmap.mmap, config: WorkerConfig) -> None:
        self.conn = conn
        self.stop = stop
        self.config = config
        self.mover = ByteMover(config.chunk_size)
        self.uid = os.geteuid()
        self.gid = os.getegid()
        self.unsent = 0  # bytes copied but not yet reported
        self.last_send = time.monotonic()

    def serve(self) -> None:
        while True:
            try:
                task = self.conn.recv()
            except EOFError:
                return
            if task is None:
                return
            self.conn.send(self._run(*task))

    def _run(self, src_dir: str, dest_dir: str, names: list[str]) -> Message:
        try:
            sfd = os.open(src_dir, _DIR_FLAGS)
        except OSError as exc:
            raise os_failure("read directory", src_dir, exc) from None
        try:
            try:
                dfd = os.open(dest_dir, _DIR_FLAGS)
            except OSError as exc:
                raise os_failure("open directory", dest_dir, exc) from None
            try:
                return self._copy(sfd, dfd, src_dir, dest_dir, names)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def _copy(self, sfd: int, dfd: int, src_dir: str, dest_dir: str, names: list[str]) -> Message:
        todo: list[tuple[str, os.stat_result]] = []
        deferred: list[Deferred] = []
        total = 0
        for name in names:
            try:
                st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
            except OSError as exc:
                raise os_failure("stat", os.path.join(src_dir, name), exc) from None
            mode = st.st_mode
            if stat.S_ISREG(mode) and st.st_nlink == 1:
                total += st.st_size
            elif not stat.S_ISLNK(mode):
                deferred.append((os.path.join(src_dir, name), os.path.join(dest_dir, name), st))
                continue
            todo.append((name, st))
        self.conn.send(("scan", total))
        new_gid = self.gid
        if self.config.preserve_owner:
            dst = os.fstat(dfd)
            if dst.st_mode & stat.S_ISGID:
                new_gid = dst.st_gid
        files = symlinks = 0
        stop = self.stop
        for name, st in todo:
            if stop[0]:
                raise _Stopped
            chown = self.config.preserve_owner and (st.st_uid != self.uid or st.st_gid != new_gid)
            if stat.S_ISREG(st.st_mode):
                self._copy_file(sfd, dfd, src_dir, dest_dir, name, st, chown)
            else:
                self._copy_symlink(sfd, dfd, src_dir, dest_dir, name, st, chown)
                symlinks += 1
            files += 1
            if self.unsent >= _REPORT_BYTES:
                self._report()
        unsent, self.unsent = self.unsent, 0
        return ("done", files, unsent, symlinks, deferred)

    def _copy_file(
        self, sfd: int, dfd: int, src_dir: str, dest_dir: str, name: str, st: os.stat_result, chown: bool
    ) -> None:
        try:
            fi = os.open(name, _SRC_FLAGS, dir_fd=sfd)
        except OSError as exc:
            raise os_failure("read", os.path.join(src_dir, name), exc) from None
        try:
            size = st.st_size
            perm = stat.S_IMODE(st.st_mode)
            # Created with its final mode unless a later fchown would clear setuid/setgid bits.
            chmod = bool(perm & _SPECIAL_BITS)
            path = name
            temp = False
            fo = -1
            if size <= self.config.atomic_min_size:
                try:
                    fo = os.open(name, _NEW_FLAGS, 0o600 if chmod else perm, dir_fd=dfd)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise os_failure("create", os.path.join(dest_dir, name), exc) from None
            if fo < 0:
                path = temp_name(name)
                temp = chmod = True
                try:
                    fo = os.open(path, _NEW_FLAGS, 0o600, dir_fd=dfd)
                except OSError as exc:
                    raise os_failure("create", os.path.join(dest_dir, name), exc) from None
            try:
                try:
                    self._copy_bytes(fi, fo, size, st.st_blocks)
                except OSError as exc:
                    where = f"{os.path.join(src_dir, name)} to {os.path.join(dest_dir, name)}"
                    raise os_failure("copy", where, exc) from None
                try:
                    if chown:
                        os.fchown(fo, st.st_uid, st.st_gid)
                    if chmod:
                        os.fchmod(fo, perm)
                    os.utime(fo, ns=(st.st_atime_ns, st.st_mtime_ns))
                except OSError as exc:
                    raise os_failure("set attributes of", os.path.join(dest_dir, name), exc) from None
            except BaseException:
                os.close(fo)
                with contextlib.suppress(OSError):
                    os.unlink(path, dir_fd=dfd)
                raise
            os.close(fo)
            if temp:
                try:
                    os.replace(path, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        os.unlink(path, dir_fd=dfd)
                    raise os_failure("replace", os.path.join(dest_dir, name), exc) from None
        finally:
            os.close(fi)

    def _copy_bytes(self, fi: int, fo: int, size: int, blocks: int) -> None:
        if not size:
            return
        mover = self.mover
        if blocks * 512 >= size and size <= mover.chunk_size and mover.use_copy_file_range:
            done = 0
            try:
                done = os.copy_file_range(fi, fo, size, 0, 0)  # the whole small file in one call
            except OSError as exc:
                if exc.errno not in UNSUPPORTED:
                    raise
                mover.use_copy_file_range = False
            self.unsent += done
            if done == size:
                return
            mover.copy_range(fi, fo, done, size - done, self._advance)
            return
        mover.copy(fi, fo, size, blocks, self._advance)

    def _advance(self, n: int) -> None:
        self.unsent += n
        if self.stop[0]:
            raise _Stopped
        self._report()

    def _report(self) -> None:
        """Send the bytes copied so far when the progress interval has passed."""
        now = time.monotonic()
        if now - self.last_send >= self.config.progress_interval:
            self.last_send = now
            unsent, self.unsent = self.unsent, 0
            self.conn.send(("bytes", unsent))

    def _copy_symlink(
        self, sfd: int, dfd: int, src_dir: str, dest_dir: str, name: str, st: os.stat_result, chown: bool
    ) -> None:
        try:
            link = os.readlink(name, dir_fd=sfd)
        except OSError as exc:
            raise os_failure("read symlink", os.path.join(src_dir, name), exc) from None
        dest = os.path.join(dest_dir, name)
        try:
            os.symlink(link, name, dir_fd=dfd)
        except FileExistsError:
            temp = temp_name(name)
            try:
                os.symlink(link, temp, dir_fd=dfd)
                os.replace(temp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=dfd)
                raise os_failure("create symlink", dest, exc) from None
        except OSError as exc:
            raise os_failure("create symlink", dest, exc) from None
        try:
            if chown:
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
        except OSError as exc:
            raise os_failure("set attributes of", dest, exc) from None
