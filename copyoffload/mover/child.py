"""`copy_as_user`: the copy runs in a child process (its own process group) as the job's user.

Protocol: the child (`python [-S] -m copyoffload.mover SRC DEST --json-progress`) writes one JSON object per
line on stdout: `{"event": "progress", ...}`, then `{"event": "result", ...}` or
`{"event": "error", "kind": "copy"|"cancelled", "message": ...}`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from copyoffload.mover.model import (
    DEFAULT_OPTIONS,
    CopyCancelled,
    CopyError,
    CopyOptions,
    CopyResult,
    Progress,
    S3Options,
)
from copyoffload.pipes import OVERLONG, bounded_lines
from copyoffload.privileges import COPY_UMASK, credentials_for, running_as_root
from copyoffload.s3options import S3_OPTIONS_ENV
from copyoffload.s3url import is_s3_url

# After SIGTERM the child removes its partial files and exits; after this long it gets SIGKILL.
TERM_GRACE_SECONDS = 2.0
_STDERR_KEEP = 4096
# Progress lines waiting for the follower: the reader blocks (and so does the child) beyond this.
_QUEUE_LINES = 256
# S3_OPTIONS_ENV: a server's site S3 settings (JSON), the base of each copy's --s3-options.
_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ", S3_OPTIONS_ENV)
_AWS_PREFIX = "AWS_"


def copy_as_user(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    uid: int,
    gid: int,
    options: CopyOptions = DEFAULT_OPTIONS,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    on_child: Callable[[int], None] | None = None,
) -> CopyResult:
    """Copy as uid/gid in a child process that never holds root (unless uid is 0).

    A root caller's child drops to the user (supplementary groups, gid, uid, umask 077) before Python
    starts. A non-root caller can only copy as itself: the child then runs with the caller's ids.
    `on_child(pid)` is called once the child exists; `os.killpg(pid, SIGKILL)` stops the whole copy.
    """
    argv = child_argv(os.fspath(src), os.fspath(dest), options)
    user: int | None = None
    group: int | None = None
    extra_groups: list[int] | None = None
    as_root = running_as_root()
    if as_root:
        if uid != 0:
            creds = credentials_for(uid, gid)
            user, group, extra_groups = creds.uid, creds.gid, list(creds.groups)
            argv += ["--expect-uid", str(uid), "--expect-gid", str(gid)]
    elif uid != os.geteuid():
        raise CopyError(f"cannot copy as uid {uid}: this process runs as uid {os.geteuid()} and is not root")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
        env=_child_env(uid, callers_own=not as_root),
        process_group=0,
        user=user,
        group=group,
        extra_groups=extra_groups,
        umask=COPY_UMASK,
    )
    return _ChildCopy(proc, os.fspath(src), progress, cancel).wait(on_child)


def child_argv(src: str, dest: str, options: CopyOptions) -> list[str]:
    """`-S` (no site-packages, ~15 ms less start-up) unless an s3:// side needs boto3: a local copy needs
    only the standard library and the checkout, which `_child_env` puts on PYTHONPATH."""
    python = [sys.executable] if is_s3_url(src) or is_s3_url(dest) else [sys.executable, "-S"]
    argv = [*python, "-m", "copyoffload.mover", src, dest, "--json-progress"]
    argv += ["--workers", str(options.workers), "--progress-interval", str(options.progress_interval)]
    argv += ["--chunk-size", str(options.chunk_size), "--atomic-min-size", str(options.atomic_min_size)]
    if options.bwlimit:
        argv += ["--bwlimit", str(options.bwlimit)]
    if options.dry_run:
        argv.append("--dry-run")
    if not options.preserve_owner:
        argv.append("--no-preserve-owner")
    if options.s3 != S3Options():
        argv += ["--s3-options", json.dumps(options.s3.to_dict(), separators=(",", ":"))]
    return argv


def _child_env(uid: int, *, callers_own: bool) -> dict[str, str]:
    """A minimal environment: the caller's secrets (tokens, kubeconfig) stay out of the user's process.

    HOME is the user's, so an s3:// copy finds that user's ~/.aws files. The caller's AWS_* variables
    pass only when the caller is the user itself (root's are never the user's), and the EC2 metadata
    service is never asked for credentials."""
    env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP}
    if callers_own:
        env.update({k: v for k, v in os.environ.items() if k.startswith(_AWS_PREFIX)})
    home = _home_of(uid)
    if home:
        env["HOME"] = home
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env.setdefault("PATH", "/usr/bin:/bin")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _home_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_dir
    except KeyError:
        return os.environ.get("HOME", "") if uid == os.geteuid() else ""


class _ChildCopy:
    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        src: str,
        progress: Callable[[Progress], None] | None,
        cancel: threading.Event | None,
    ) -> None:
        self.proc = proc
        self.src = src
        self.progress = progress
        self.cancel = cancel
        self.lines: queue.Queue[bytes | None] = queue.Queue(_QUEUE_LINES)
        self.stderr_tail = b""
        self.misbehaved = False
        self._closing = threading.Event()

    def wait(self, on_child: Callable[[int], None] | None) -> CopyResult:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        readers = [
            threading.Thread(target=self._read_lines, args=(self.proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self.proc.stderr,), daemon=True),
        ]
        for reader in readers:
            reader.start()
        try:
            if on_child is not None:
                on_child(self.proc.pid)
            outcome = self._follow()
        except BaseException:
            self._stop_child(kill=True)
            raise
        finally:
            self._closing.set()
            self.proc.wait()
            for reader in readers:
                reader.join()
            self.proc.stdout.close()
            self.proc.stderr.close()
        return self._conclude(outcome)

    def _follow(self) -> dict[str, object] | None:
        """Relay progress until the child's final event (or end of output); honour `cancel`."""
        final: dict[str, object] | None = None
        while True:
            if self.cancel is not None and self.cancel.is_set():
                self._stop_child(kill=False)
                raise CopyCancelled(f"copy of {self.src} was cancelled")
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                return final
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            if event.get("event") == "progress" and self.progress is not None:
                self.progress(Progress.from_dict(event))
            elif event.get("event") in ("result", "error"):
                final = event

    def _conclude(self, final: dict[str, object] | None) -> CopyResult:
        code = self.proc.returncode
        if self.misbehaved:
            raise CopyError(
                f"copy of {self.src} stopped: its mover (pid {self.proc.pid}) wrote a progress line "
                "longer than the limit",
                path=self.src,
            )
        if final is not None and final.get("event") == "result" and code == 0:
            return CopyResult.from_dict(final)
        if final is not None and final.get("event") == "error":
            message = str(final.get("message") or "copy failed")
            if final.get("kind") == "cancelled":
                raise CopyCancelled(message)
            raise CopyError(message, path=str(final.get("path") or ""))
        if code is not None and code < 0:
            name = _signal_name(-code)
            raise CopyCancelled(f"copy of {self.src} was killed by {name} (pid {self.proc.pid})")
        detail = self.stderr_tail.decode(errors="replace").strip().splitlines()
        reason = detail[-1] if detail else f"exit status {code}"
        raise CopyError(f"copy of {self.src} failed: {reason}", path=self.src)

    def _stop_child(self, *, kill: bool) -> None:
        """SIGTERM the group (the child removes partial files), then SIGKILL it if it lingers."""
        if not kill:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(TERM_GRACE_SECONDS)
                return
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: int) -> None:
        if self.proc.poll() is not None:
            return  # reaped: the pid may already belong to someone else
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def _read_lines(self, stream: IO[bytes]) -> None:
        """Bounded: an over-long line means the child is not our mover any more (e.g. ptraced): kill it."""
        for line in bounded_lines(stream):
            if line is OVERLONG:
                self.misbehaved = True
                self._signal_group(signal.SIGKILL)
                continue
            assert isinstance(line, bytes)
            self._put(line)
        self._put(None)

    def _put(self, item: bytes | None) -> None:
        while not self._closing.is_set():
            try:
                self.lines.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _read_stderr(self, stream: IO[bytes]) -> None:
        while chunk := stream.read(4096):
            self.stderr_tail = (self.stderr_tail + chunk)[-_STDERR_KEEP:]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
