"""What a copy-offload request is and how it runs: the server's "driver" (no HTTP here).

A request accepted by ``/trial`` becomes a :class:`Job` in a bounded :class:`JobTable`. Each job runs in
its own worker thread, at most ``max_running`` at a time (the others wait as ``pending``), calling the
data mover as the workflow's user (``copy_as_user`` with the server's uid/gid) or, when its profile names
one, an external command (sites with dcp). Waiting for a job to finish uses a ``threading.Condition``
per job, never polling; progress lands in the job as the mover reports it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from copyoffload.gofmt import go_duration, go_now
from copyoffload.pipes import OVERLONG, bounded_lines
from copyoffload.privileges import credentials_for

# States and statuses of the v1.0 API (DataMovementStatusResponse).
PENDING, STARTING, RUNNING, COMPLETED, CANCELLING = (
    "pending",
    "starting",
    "running",
    "completed",
    "cancelling",
)
SUCCESS, FAILED, CANCELLED, INVALID, UNKNOWN_STATUS = (
    "success",
    "failed",
    "cancelled",
    "invalid",
    "unknown status",
)

DEFAULT_PROFILES = Path(__file__).with_name("data") / "profiles.yaml"
MOCK_SECONDS = 300.0
# A cancel answers once the copy has stopped, when that takes no longer than this.
CANCEL_SETTLE_SECONDS = 0.5
# The built-in mover forks one process per worker: a request's slots never take it past this.
MOVER_MAX_WORKERS = 64


class RequestRejected(Exception):
    """The request cannot be accepted; ``code`` is the HTTP status the server answers with."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.code = code


class ProfileError(Exception):
    """The profiles file is unusable."""


@dataclass(frozen=True)
class CopyRequest:
    """The v1.0 ``/trial`` body. Missing fields take Go's zero values, as upstream decodes them."""

    compute_name: str = ""
    source_path: str = ""
    destination_path: str = ""
    dryrun: bool = False
    dcp_options: str = ""
    log_stdout: bool = False
    store_stdout: bool = False
    slots: int = 0
    max_slots: int = 0
    dm_profile: str = ""
    mpirun_options: str = ""
    workflow_name: str = ""
    workflow_namespace: str = ""

    def validate(self) -> None:
        """Raise RequestRejected with upstream's exact text for the first problem found."""
        if not self.compute_name:
            raise RequestRejected("compute name must be supplied")
        if not self.source_path:
            raise RequestRejected("source path must be supplied")
        if not self.destination_path:
            raise RequestRejected("destination path must be supplied")
        if self.slots < -1:
            raise RequestRejected("slots must be -1 (defer to profile), 0 (disable), or a positive integer")
        if self.max_slots < -1:
            raise RequestRejected(
                "maxSlots must be -1 (defer to profile), 0 (disable), or a positive integer"
            )


@dataclass(frozen=True)
class Profile:
    """A dmProfile: how many mover workers, an optional cap, or an external command template."""

    name: str
    workers: int = 4
    max_workers: int = 0
    command: tuple[str, ...] = ()
    progress_interval: float = 1.0

    def workers_for(self, slots: int, max_slots: int) -> int:
        """-1 defers to the profile, 0 disables parallelism (one worker), N asks for N workers.

        The built-in mover is held to MOVER_MAX_WORKERS whatever the request asks (an external command
        sizes its own parallelism, e.g. mpirun slots across nodes).
        """
        workers = self.workers if slots == -1 else (1 if slots == 0 else slots)
        cap = self.max_workers if max_slots == -1 else max_slots
        if cap > 0:
            workers = min(workers, cap)
        if not self.command:
            workers = min(workers, MOVER_MAX_WORKERS)
        return max(1, workers)


@dataclass(frozen=True)
class Profiles:
    default: str
    profiles: Mapping[str, Profile]
    any_name: bool = False  # --mock: an unknown dmProfile means the default one, as upstream's mock

    def select(self, name: str) -> Profile:
        profile = self.profiles.get(name or self.default)
        if profile is None and self.any_name:
            return self.profiles[self.default]
        if profile is None:
            raise RequestRejected(f"data movement profile {name!r} not found")
        return profile

    @classmethod
    def accept_any(cls, profiles: Profiles) -> Profiles:
        return cls(profiles.default, profiles.profiles, any_name=True)

    @classmethod
    def builtin(cls) -> Profiles:
        return cls(
            "default",
            {"default": Profile("default"), "copy-offload-default": Profile("copy-offload-default")},
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Profiles:
        import yaml

        p = Path(path) if path else DEFAULT_PROFILES
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except OSError as exc:
            raise ProfileError(f"unable to read profiles {p}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ProfileError(f"profiles {p} is not valid YAML: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("profiles"), dict) or not doc["profiles"]:
            raise ProfileError(f"profiles {p} must map 'profiles' to at least one named profile")
        profiles: dict[str, Profile] = {}
        for name, spec in doc["profiles"].items():
            spec = spec or {}
            if not isinstance(spec, dict):
                raise ProfileError(f"profile {name!r} in {p} must be a mapping")
            unknown = set(spec) - {"workers", "maxWorkers", "command", "progressInterval"}
            if unknown:
                raise ProfileError(
                    "profile {!r} in {} has unknown keys: {}".format(name, p, ", ".join(sorted(unknown)))
                )
            command = spec.get("command") or ()
            if isinstance(command, str):
                command = shlex.split(command)
            try:
                profiles[str(name)] = Profile(
                    name=str(name),
                    workers=int(spec.get("workers", 4)),
                    max_workers=int(spec.get("maxWorkers", 0)),
                    command=tuple(str(c) for c in command),
                    progress_interval=float(spec.get("progressInterval", 1.0)),
                )
            except (TypeError, ValueError) as exc:
                raise ProfileError(f"profile {name!r} in {p}: {exc}") from None
        default = str(doc.get("default", "default"))
        if default not in profiles:
            raise ProfileError(f"default profile {default!r} is not defined in {p}")
        return cls(default, profiles)


@dataclass
class Progress:
    """What a copier reports while it runs (the mover's Progress has these fields)."""

    percent: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0


class Copier(Protocol):
    def __call__(
        self,
        request: CopyRequest,
        *,
        profile: Profile,
        workers: int,
        uid: int,
        gid: int,
        progress: Callable[[Any], None],
        cancel: threading.Event,
        on_child: Callable[[int], None],
    ) -> str:
        """Run the copy; return a last message; raise CopyFailed or CopyAborted."""
        ...


class CopyFailed(Exception):
    pass


class CopyAborted(Exception):
    pass


def mover_copier(
    request: CopyRequest,
    *,
    profile: Profile,
    workers: int,
    uid: int,
    gid: int,
    progress: Callable[[Any], None],
    cancel: threading.Event,
    on_child: Callable[[int], None],
) -> str:
    """The default: our parallel mover, in a child process running as the workflow's user."""
    from copyoffload import mover

    try:
        result = mover.copy_as_user(
            request.source_path,
            request.destination_path,
            uid=uid,
            gid=gid,
            options=mover.CopyOptions(workers=workers),
            progress=progress,
            cancel=cancel,
            on_child=on_child,
        )
    except mover.CopyCancelled:
        raise CopyAborted() from None
    except mover.CopyError as exc:
        raise CopyFailed(str(exc)) from None
    return _describe_result(result)


def _describe_result(result: Any) -> str:
    files, dirs, size = (int(getattr(result, a, 0) or 0) for a in ("files", "dirs", "bytes"))
    text = f"Copied {human_bytes(size)} in {files} files and {dirs} directories"
    warnings = tuple(getattr(result, "warnings", ()) or ())
    return text + (f"; {len(warnings)} warnings: {warnings[0]}" if warnings else "")


_PERCENT = re.compile(r"\((\d{1,3})%\)|(\d{1,3})%")


def command_copier(
    request: CopyRequest,
    *,
    profile: Profile,
    workers: int,
    uid: int,
    gid: int,
    progress: Callable[[Any], None],
    cancel: threading.Event,
    on_child: Callable[[int], None],
) -> str:
    """An external command from the profile (e.g. mpirun ... dcp), run as the workflow's user."""
    values = {
        "source": request.source_path,
        "destination": request.destination_path,
        "workers": str(workers),
        "slots": str(workers),
        "dcp_options": request.dcp_options,
        "mpirun_options": request.mpirun_options,
    }
    argv: list[str] = []
    for part in profile.command:
        if part in ("{dcp_options}", "{mpirun_options}"):
            argv.extend(shlex.split(values[part[1:-1]]))
        else:
            argv.append(part.format(**values))
    kwargs: dict[str, Any] = {}
    if os.geteuid() == 0 and uid != 0:
        creds = credentials_for(uid, gid)  # the user's own groups, as the built-in mover has them
        kwargs.update(user=creds.uid, group=creds.gid, extra_groups=list(creds.groups))
    elif uid != os.geteuid():
        raise CopyFailed(f"cannot run the copy as uid {uid} without root")
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd="/",
            start_new_session=True,
            **kwargs,
        )
    except OSError as exc:
        raise CopyFailed(
            "unable to start {}: {}".format(argv[0] if argv else "command", exc.strerror or exc)
        ) from None
    on_child(proc.pid)

    def kill_on_cancel() -> None:
        """Ends with the command: a watcher left waiting on ``cancel`` would leak a thread per copy."""
        while not cancel.wait(0.2):
            if proc.poll() is not None:
                return
        if proc.poll() is None:
            _kill_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid, signal.SIGKILL)

    watcher = threading.Thread(target=kill_on_cancel, daemon=True)
    watcher.start()
    last = ""
    tail: list[str] = []
    overlong = False
    assert proc.stdout is not None
    with proc.stdout:
        for raw in bounded_lines(proc.stdout):
            if raw is OVERLONG:  # the user's process is not the command any more: stop it
                overlong = True
                _kill_group(proc.pid, signal.SIGKILL)
                continue
            assert isinstance(raw, bytes)
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            last = line
            tail = [*tail[-19:], line]
            m = _PERCENT.search(line)
            if m:
                progress(Progress(percent=min(100, int(m.group(1) or m.group(2)))))
    rc = proc.wait()
    watcher.join()
    if cancel.is_set():
        raise CopyAborted()
    if overlong:
        raise CopyFailed(f"{argv[0]} (pid {proc.pid}) wrote an output line longer than the limit: stopped")
    if rc != 0:
        raise CopyFailed(f"{argv[0]} exited with status {rc}: {' | '.join(tail[-5:])}")
    return last or "Copy complete"


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def mock_copier(
    request: CopyRequest,
    *,
    profile: Profile,
    workers: int,
    uid: int,
    gid: int,
    progress: Callable[[Any], None],
    cancel: threading.Event,
    on_child: Callable[[int], None],
) -> str:
    """``--mock``: touches no data; runs until cancelled or, as upstream's mock ``sleep 300``, 300 s."""
    if cancel.wait(MOCK_SECONDS):
        raise CopyAborted()
    return "mock copy: nothing copied"


def mock_forever_copier(
    request: CopyRequest,
    *,
    profile: Profile,
    workers: int,
    uid: int,
    gid: int,
    progress: Callable[[Any], None],
    cancel: threading.Event,
    on_child: Callable[[int], None],
) -> str:
    """``--mock-forever``: touches no data and runs until cancelled."""
    cancel.wait()
    raise CopyAborted()


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else (f"{value:.1f} {unit}")
        value /= 1024
    return f"{n} B"


@dataclass
class Job:
    """One accepted request. Mutable fields change only under the table's lock."""

    name: str
    request: CopyRequest
    profile: Profile
    workers: int
    command: str
    done: threading.Condition
    state: str = PENDING
    status: str = UNKNOWN_STATUS
    message: str = ""
    start_time: str = ""
    end_time: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    progress: int = 0
    last_message: str = ""
    last_message_time: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)
    child_pid: int = 0

    @property
    def finished(self) -> bool:
        return self.state == COMPLETED

    def to_wire(self) -> dict[str, Any]:
        """The v1.0 status body (fields empty in Go are omitted, as upstream's omitempty does)."""
        if self.state == PENDING:
            return {"state": PENDING, "status": UNKNOWN_STATUS}
        body: dict[str, Any] = {"state": self.state, "status": self.status}
        if self.message:
            body["message"] = self.message
        cmd: dict[str, Any] = {}
        if self.command:
            cmd["command"] = self.command
        if self.progress:
            cmd["progress"] = self.progress
        if self.started_at:
            cmd["elapsedTime"] = go_duration(self._elapsed())
        if self.last_message:
            cmd["lastMessage"] = self.last_message
        if self.last_message_time:
            cmd["lastMessageTime"] = self.last_message_time
        if cmd:
            body["commandStatus"] = cmd
        if self.start_time:
            body["startTime"] = self.start_time
        if self.end_time:
            body["endTime"] = self.end_time
        return body

    def _elapsed(self) -> float:
        end = self.ended_at or time.monotonic()
        return max(0.0, end - self.started_at)


class JobTable:
    """Every job this server knows: bounded, thread-safe, with per-job completion conditions."""

    def __init__(
        self,
        *,
        node: str,
        copier: Copier,
        uid: int,
        gid: int,
        max_running: int = 4,
        max_active: int = 256,
        keep_finished: int = 1000,
        status_waits: bool = True,
    ) -> None:
        self._lock = threading.Lock()
        self._slots = threading.Condition(self._lock)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._counter = itertools.count()
        self._prefix = f"{_url_safe(node)}--nnf-copy-offload-node-"
        self._copier = copier
        self._uid, self._gid = uid, gid
        self._max_running = max(1, max_running)
        self._max_active = max_active
        self._keep_finished = keep_finished
        self._status_waits = status_waits
        self._running = 0
        self._active = 0
        self._closed = False
        self._threads: set[threading.Thread] = set()

    def submit(self, request: CopyRequest, profile: Profile) -> Job:
        workers = profile.workers_for(request.slots, request.max_slots)
        with self._lock:
            if self._closed:
                raise RequestRejected("unable to accept request: server is shutting down", 503)
            if self._active >= self._max_active:
                raise RequestRejected("unable to accept request: too many requests in progress", 503)
            name = self._prefix + str(next(self._counter))
            job = Job(
                name=name,
                request=request,
                profile=profile,
                workers=workers,
                command=_command_text(request, profile, workers),
                done=threading.Condition(self._lock),
            )
            self._jobs[name] = job
            self._active += 1
            thread = threading.Thread(target=self._run, args=(job,), name="copy " + name, daemon=True)
            self._threads.add(thread)
        thread.start()
        return job

    def _run(self, job: Job) -> None:
        try:
            with self._lock:
                while self._running >= self._max_running and not job.cancel.is_set():
                    self._slots.wait()
                if job.cancel.is_set():
                    self._finish(job, CANCELLED, "")
                    return
                self._running += 1
                job.state = STARTING
                job.start_time = go_now()
                job.started_at = time.monotonic()
            try:
                message = self._execute(job)
            except CopyAborted:
                self._complete(job, CANCELLED, "")
            except CopyFailed as exc:
                self._complete(job, FAILED, str(exc))
            except Exception as exc:  # a bug in a copier must not take the server down
                self._complete(job, FAILED, f"internal error: {type(exc).__name__}: {exc}")
            else:
                self._complete(job, CANCELLED if job.cancel.is_set() else SUCCESS, "", message)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _execute(self, job: Job) -> str:
        with self._lock:
            if job.cancel.is_set():
                raise CopyAborted()
            job.state = RUNNING
        if job.request.dryrun:
            return "dry run: nothing copied"

        def on_progress(p: Any) -> None:
            percent = int(getattr(p, "percent", 0) or 0)
            with self._lock:
                job.progress = max(0, min(100, percent))
                job.last_message = _progress_line(p)
                job.last_message_time = go_now()

        def on_child(pid: int) -> None:
            with self._lock:
                job.child_pid = pid

        copier: Copier = command_copier if job.profile.command else self._copier
        return copier(
            job.request,
            profile=job.profile,
            workers=job.workers,
            uid=self._uid,
            gid=self._gid,
            progress=on_progress,
            cancel=job.cancel,
            on_child=on_child,
        )

    def _complete(self, job: Job, status: str, message: str, last: str = "") -> None:
        with self._lock:
            self._running -= 1
            if status == SUCCESS:
                job.progress = 100
            if last:
                job.last_message = last
                job.last_message_time = go_now()
            self._finish(job, status, message)
            self._slots.notify_all()

    def _finish(self, job: Job, status: str, message: str) -> None:
        """Under the lock: mark the job completed, wake its waiters, evict old finished jobs."""
        job.state = COMPLETED
        job.status = status
        job.message = message
        job.end_time = go_now()
        job.ended_at = time.monotonic()
        self._active -= 1
        job.done.notify_all()
        self._finished[job.name] = None
        while len(self._finished) > self._keep_finished:
            old, _ = self._finished.popitem(last=False)
            self._jobs.pop(old, None)

    def status(self, name: str, max_wait: float | None = 0) -> dict[str, Any] | None:
        """The wire status of a job; wait up to ``max_wait`` s (None: until done) for it to finish."""
        with self._lock:
            job = self._jobs.get(name)
            if job is None:
                return None
            if max_wait != 0 and self._status_waits:
                deadline = None if max_wait is None else time.monotonic() + max_wait
                while not job.finished and not self._closed:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    job.done.wait(remaining)
            return job.to_wire()

    def active_names(self) -> list[str]:
        with self._lock:
            return sorted(n for n, j in self._jobs.items() if not j.finished)

    def has_active(self) -> bool:
        with self._lock:
            return self._active > 0

    def cancel(self, name: str, *, settle: float = CANCEL_SETTLE_SECONDS) -> bool:
        """Ask a job to stop; False when the name is unknown. Cancelling a finished job does nothing.

        Waits up to ``settle`` seconds for the job to stop, so a ``/list`` right after sees it gone."""
        with self._lock:
            job = self._jobs.get(name)
            if job is None:
                return False
            if job.finished:
                return True
            if job.state in (STARTING, RUNNING):
                job.state = CANCELLING
            job.cancel.set()
            self._slots.notify_all()
            if settle > 0:
                job.done.wait_for(lambda: job.finished, settle)
            return True

    def close(self, *, cancel: bool = True, timeout: float = 30.0) -> None:
        """Stop accepting; cancel what runs (when asked); wait for the workers; release every waiter."""
        with self._lock:
            self._closed = True
            jobs = [j for j in self._jobs.values() if not j.finished]
            threads = list(self._threads)
        if cancel:
            for job in jobs:
                self.cancel(job.name, settle=0)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            for job in self._jobs.values():
                job.done.notify_all()


def _url_safe(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return cleaned or "node"


def _command_text(request: CopyRequest, profile: Profile, workers: int) -> str:
    if request.dryrun:
        return "true"
    if profile.command:
        return " ".join(profile.command)
    src, dest = shlex.quote(request.source_path), shlex.quote(request.destination_path)
    return f"copyoffload-mover --workers {workers} {src} {dest}"


def _progress_line(p: Any) -> str:
    percent = int(getattr(p, "percent", 0) or 0)
    total = int(getattr(p, "bytes_total", 0) or 0)
    done = int(getattr(p, "bytes_done", 0) or 0)
    files_total = int(getattr(p, "files_total", 0) or 0)
    files_done = int(getattr(p, "files_done", 0) or 0)
    if total or files_total:
        size = f"{human_bytes(done)} of {human_bytes(total)}"
        return f"Copied {size} ({percent}%) {files_done} of {files_total} files"
    return f"Copied ({percent}%)"
