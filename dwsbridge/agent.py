"""The bridge agent: a long-running root daemon that runs Slurm's burst-buffer hooks for burst_buffer.lua.

Why: every hook is a fresh Python process. Starting it and importing the bridge (the lifecycle, the
local backend, PyYAML; on the Kubernetes backend the `kubernetes` client and its kubeconfig) costs
tens to hundreds of milliseconds, far more than the hook's own work. The agent pays that once;
burst_buffer.lua then talks to it from Lua (lua-socket), or a small relay process does
(dwsbridge.hookclient) where lua-socket is missing. Long hooks get a heartbeat (Heartbeat), and a
request whose caller has given up is not started (expired).

What it runs is exactly what `python -m dwsbridge.slurm HOOK ARGS` runs in-process: the same
SlurmHooks handlers through `slurm.run_hook`, the same log lines and result protocol
(`slurm.forward_records`, `slurm.write_result`). Requests are served by a pool of threads that each
block in accept() and serve what they accepted: no thread is started and no hand-off is made per
request (job_process sits on every sbatch's path, and a thread start plus a wake-up cost more than
validating). The pool keeps spare acceptors: one that takes a connection when no other is idle
starts another first, so a long or slow hook never holds up the next one (Slurm runs up to 128
hooks of a stage at once); spares beyond SPARE_ACCEPTORS end when idle. Each request gets its
own Lifecycle: the local backend's SQLite connection belongs to one thread, so every request opens
and closes its own. The Kubernetes backend keeps nothing per call but its client, so all requests
share one, connected at start.

Leases (local backend): a state being worked on carries a lease naming the process that works on
it (pid and start time). With the agent that process is the agent, for all its requests. That stays
correct because (1) a lease held by a live agent means one of its threads is working on the state,
and another request that needs that state waits for it exactly as it would wait for another hook
process; (2) when a request ends, the agent clears any lease of its own on that workflow that no
other of its requests still works on, so a finished request counts as a finished process;
(3) if the agent dies, its pid is dead (or a zombie, which `is_alive` treats as dead), so every
lease it held is dead and the next hook, through a new agent or in-process, resumes the state.

Security: root only, a Unix socket (0600; its directory is created 0700) and SO_PEERCRED: a peer
whose uid is not 0 is refused. The hook client sends the configuration it would use itself; the
agent serves only requests made for its own configuration (others fall back to in-process).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import signal
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

from dwsbridge import hookclient, slurm
from dwsbridge.backends.base import Backend
from dwsbridge.config import DEFAULT_CONFIG_PATH, Config, load_config
from dwsbridge.errors import ConfigError, DwsBridgeError
from dwsbridge.lifecycle import Lifecycle, make_backend

REQUEST_LIMIT = 1 << 20  # bytes; a hook's arguments are a few paths
REQUEST_TIMEOUT = 10.0  # seconds to receive a request once connected
STOP_POLL = 0.5  # seconds between checks for a stop request
SPARE_ACCEPTORS = 4  # idle acceptor threads kept waiting for the next request
DEFAULT_DRAIN_TIMEOUT = 30.0
JOB_HOOKS = {"setup", "data_in", "paths", "pre_run", "post_run", "data_out", "job_teardown"}
SERIALIZED_HOOKS = {"setup", "job_teardown"}  # per job, never at once (Agent._serialized)
# Imported at start so that no request pays for them (the modules the hooks import lazily).
WARM_MODULES = (
    "dwsbridge.directives",
    "dwsbridge.workflow",
    "dwsbridge.job_env",
    "json",
    "subprocess",
    "pwd",
)
LOCAL_WARM_MODULES = ("dwsbridge.backends.local.backend", "copyoffload.mover")


def _stderr_line(text: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")
    sys.stderr.flush()


class RequestLogs(io.TextIOBase):
    """The stream slurm.forward_records writes `@@DWSBRIDGE log` lines to: each request thread's lines
    go back with its reply (to slurmctld's log); lines from any other thread go to the agent's stderr."""

    def __init__(self) -> None:
        self._local = threading.local()

    @contextlib.contextmanager
    def captured(self) -> Iterator[list[str]]:
        lines: list[str] = []
        self._local.lines = lines
        try:
            yield lines
        finally:
            self._local.lines = None

    def write(self, text: str) -> int:
        lines = getattr(self._local, "lines", None)
        if lines is not None:
            lines.append(text)
        else:
            for line in text.splitlines():
                _stderr_line(line.removeprefix(slurm.LOG_PREFIX))
        return len(text)

    def flush(self) -> None:
        pass


@dataclass
class Served:
    """The configuration the agent serves, and what was built from it."""

    config: Config
    stamp: tuple[int, int] | None
    shared_backend: Backend | None  # Kubernetes: one client for every request


def file_stamp(path: str | None) -> tuple[int, int] | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _normal_path(value: str | None) -> str:
    return os.path.abspath(value) if value else ""


peer_uid = hookclient.peer_uid


class Agent:
    def __init__(
        self,
        socket_path: str | os.PathLike[str] = hookclient.DEFAULT_SOCKET,
        config_path: str | os.PathLike[str] | None = None,
        *,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    ) -> None:
        self.socket_path = os.path.abspath(socket_path)
        if config_path:  # hooks see it as $DWSBRIDGE_CONFIG
            os.environ["DWSBRIDGE_CONFIG"] = os.path.abspath(config_path)
        self.config_env = _normal_path(os.environ.get("DWSBRIDGE_CONFIG"))
        self.root_env = os.environ.get("DWSBRIDGE_ROOT", "")
        default = str(DEFAULT_CONFIG_PATH) if DEFAULT_CONFIG_PATH.exists() else ""
        self.config_file = self.config_env or default  # the file whose changes reload the config
        self.drain_timeout = drain_timeout
        self.logs = RequestLogs()
        self._served: Served | None = None
        self._lock = threading.Lock()
        self._reloading = threading.Lock()
        self._stopping = threading.Event()
        self._busy: dict[str, int] = {}  # workflow name -> requests working on it
        # workflow name -> [lock, users]: a job's setup and teardown never overlap here (see run)
        self._creating: dict[str, list[Any]] = {}
        self._active = 0
        self._idle = threading.Condition(self._lock)
        self._waiting = 0  # acceptor threads blocked in accept()

    # --- configuration --------------------------------------------------------------------------
    def served(self) -> Served:
        """The current configuration; loaded again when its file has changed. One request reloads
        (on the Kubernetes backend that connects to the API, which may be slow); the others answer
        from the configuration they have meanwhile, never waiting for it."""
        stamp = file_stamp(self.config_file)
        current = self._served
        if current is not None and current.stamp == stamp:
            return current
        if current is None:
            self._reloading.acquire()
        elif not self._reloading.acquire(blocking=False):
            return current
        try:
            if self._served is None or self._served.stamp != stamp:
                reloading = self._served is not None
                self._served = self._load(stamp)
                if reloading:
                    _stderr_line(f"dwsbridge agent: reloaded {self.config_file or 'the defaults'}")
            return self._served
        finally:
            self._reloading.release()

    def _load(self, stamp: tuple[int, int] | None) -> Served:
        config = load_config(self.config_env or None)
        for name in WARM_MODULES + (LOCAL_WARM_MODULES if config.backend == "local" else ()):
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
        from dwsbridge.directives import RuleSet

        with contextlib.suppress(DwsBridgeError, OSError):
            RuleSet.load(config.ruleset)
        shared = None
        if config.backend == "kubernetes":
            shared = make_backend(config)
            try:
                _ = shared.version  # type: ignore[attr-defined]  # connect, probe the Workflow version
            except DwsBridgeError as exc:
                _stderr_line(f"dwsbridge agent: warning: Kubernetes not reachable yet: {exc}")
        return Served(config, stamp, shared)

    def mismatch(self, env: dict[str, str]) -> str:
        """Why this agent cannot answer a request made with `env` ("" when it can)."""
        wanted = _normal_path(env.get("DWSBRIDGE_CONFIG"))
        if wanted != self.config_env:
            return f"agent serves config {self.config_env or '(default)'}, not {wanted or '(default)'}"
        if env.get("DWSBRIDGE_ROOT", "") != self.root_env:
            return f"agent serves DWSBRIDGE_ROOT={self.root_env!r}, not {env.get('DWSBRIDGE_ROOT', '')!r}"
        return ""

    # --- one request ------------------------------------------------------------------------------
    def run(self, hook: str, args: list[str], env: dict[str, str]) -> bytes:
        """The hook's output in the result protocol: its log lines, payload and status line."""
        served = self.served()
        lifecycle = Lifecycle(served.config, backend=served.shared_backend)
        hooks = slurm.SlurmHooks(served.config, lifecycle)
        workflow = self._workflow_of(hook, args)
        self._enter(workflow)
        try:
            with (
                self._serialized(workflow if hook in SERIALIZED_HOOKS else None),
                self.logs.captured() as lines,
            ):
                result = slurm.run_hook(hooks, hook, args)
        finally:
            self._leave(workflow, lifecycle, owned=served.shared_backend is None)
        out = io.BytesIO()
        out.write("".join(lines).encode("utf-8", errors="replace"))
        slurm.write_result(result, out)
        return out.getvalue()

    @contextlib.contextmanager
    def _serialized(self, workflow: str | None) -> Iterator[None]:
        """Run a job's setup and teardown one after the other.

        Slurm kills a hook process it gives up on (a cancel during stage-in, a timeout), but here only
        the client dies: the agent's thread runs on. Without this, a teardown arriving meanwhile could
        find no workflow yet, succeed, and the setup still running would then create one nobody
        tears down. Waiting for the setup makes the teardown remove what it made."""
        if workflow is None:
            yield
            return
        with self._lock:
            entry = self._creating.setdefault(workflow, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._creating[workflow]

    @staticmethod
    def _workflow_of(hook: str, args: list[str]) -> str | None:
        if hook in JOB_HOOKS and args and args[0].strip().isdigit():
            return slurm.workflow_name(str(int(args[0])))
        return None

    def _enter(self, workflow: str | None) -> None:
        if workflow:
            with self._lock:
                self._busy[workflow] = self._busy.get(workflow, 0) + 1

    def _leave(self, workflow: str | None, lifecycle: Lifecycle, *, owned: bool) -> None:
        last = False
        if workflow:
            with self._lock:
                self._busy[workflow] -= 1
                last = self._busy[workflow] == 0
                if last:
                    del self._busy[workflow]
        try:
            store = getattr(lifecycle._backend, "store", None) if owned else None
            if last and store is not None:
                store.release_lease(workflow, os.getpid())
        except Exception as exc:  # the lease is a hint; a dead agent releases it anyway
            _stderr_line(f"dwsbridge agent: warning: cannot release the lease on {workflow}: {exc}")
        finally:
            if owned:
                lifecycle.close()

    def handle(self, conn: socket.socket) -> None:
        """Serve one connection; whatever happens, the agent goes on."""
        started = time.monotonic()
        hook, job, outcome = "-", "-", "error"
        with self._idle:
            self._active += 1
        try:
            request = _read_all(conn)  # read first: closing on unread data resets the connection
            uid = peer_uid(conn)
            if uid != 0:
                outcome = f"refused (peer uid {uid} is not root)"
                conn.sendall(hookclient.REPLY_FALLBACK + b"refused: only root may use the agent\n")
                return
            hook, args, env = hookclient.decode_request(request)
            job = slurm._job_of(hook, args)  # the job label the hook logs use
            reason = self.mismatch(env) or expired(env.pop(hookclient.DEADLINE_ENV, ""))
            if reason:
                outcome = f"fallback ({reason})"
                with contextlib.suppress(OSError):  # an expired request's caller is usually gone
                    conn.sendall(hookclient.REPLY_FALLBACK + reason.encode() + b"\n")
                return
            with Heartbeat(conn, enabled=hook not in hookclient.BLOCKING_HOOKS) as heartbeat:
                try:
                    output = self.run(hook, args, env)
                except ConfigError as exc:  # the hook in-process reports it exactly as it would without us
                    outcome = "fallback"
                    heartbeat.send(hookclient.REPLY_FALLBACK + f"configuration: {exc}".encode() + b"\n")
                    return
                outcome = f"rc={hookclient.exit_code(output)}"
                heartbeat.send(hookclient.REPLY_OK + output)
        except BaseException as exc:  # one request's crash never stops the agent
            outcome = f"crash {type(exc).__name__}: {exc}"
            with contextlib.suppress(OSError):
                conn.sendall(hookclient.REPLY_FALLBACK + b"agent error\n")
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            elapsed = (time.monotonic() - started) * 1000
            _stderr_line(f"dwsbridge agent: hook={hook} job={job} {outcome} {elapsed:.1f}ms")
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    # --- the daemon -------------------------------------------------------------------------------
    def bind(self) -> socket.socket:
        directory = os.path.dirname(self.socket_path)
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700)
        else:
            st = os.stat(directory)
            if st.st_uid != 0 or st.st_mode & 0o022:
                # Whoever may write the directory may put their own socket in the agent's place.
                raise ConfigError(
                    f"{directory} must be owned by root and writable by root alone (it is uid {st.st_uid},"
                    f" mode {stat.S_IMODE(st.st_mode):04o}): refusing to put the agent socket there"
                )
        if os.path.lexists(self.socket_path):
            if not stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                raise ConfigError(f"{self.socket_path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.socket_path)
            except OSError:
                os.unlink(self.socket_path)  # left by an agent that died
            else:
                raise ConfigError(f"another dwsbridge agent already serves {self.socket_path}")
            finally:
                probe.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            listener.bind(self.socket_path)
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o600)
        listener.listen(512)
        return listener

    def stop(self) -> None:
        self._stopping.set()

    def serve(self) -> int:
        """Serve until SIGTERM/SIGINT (or stop()); then finish the requests in flight (up to the
        drain timeout) and remove the socket."""
        if os.geteuid() != 0:
            raise ConfigError("the dwsbridge agent runs as root (the hooks it runs do)")
        served = self.served()
        slurm.forward_records(cast(IO[str], self.logs))
        listener = self.bind()
        inode = os.stat(self.socket_path).st_ino
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        _stderr_line(
            f"dwsbridge agent: pid {os.getpid()} serving {self.socket_path} "
            f"(backend {served.config.backend}, config {self.config_file or 'defaults'})"
        )
        threading.Thread(target=self._sweep_orphans, name="orphans", daemon=True).start()
        try:
            for _ in range(SPARE_ACCEPTORS):
                self._start_acceptor(listener)
            while not self._stopping.wait(STOP_POLL):
                pass
        finally:
            self._stopping.set()  # also when serving ended by an exception: acceptors must not retry
            with contextlib.suppress(OSError):  # wakes every thread blocked in accept() (Linux)
                listener.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                if os.stat(self.socket_path).st_ino == inode:
                    os.unlink(self.socket_path)
        drained = self._drain()
        listener.close()
        return drained

    def _start_acceptor(self, listener: socket.socket) -> None:
        """One more thread waiting in accept(); counted as waiting before it starts, so that two
        busy acceptors never both think the pool has a spare."""
        with self._lock:
            self._waiting += 1
        threading.Thread(target=self._accept_loop, args=(listener,), name="hook", daemon=True).start()

    def _accept_loop(self, listener: socket.socket) -> None:
        """Accept and serve connections one at a time, until the agent stops or the pool has enough
        spares without this thread."""
        while True:
            try:
                conn, _ = listener.accept()
            except OSError as exc:
                if self._stopping.is_set():
                    with self._lock:
                        self._waiting -= 1
                    return
                _stderr_line(f"dwsbridge agent: accept: {exc}")
                time.sleep(0.1)
                continue
            with self._lock:
                self._waiting -= 1
                spare_needed = self._waiting == 0
            if spare_needed:
                self._start_acceptor(listener)
            self.handle(conn)
            with self._lock:
                if self._waiting >= SPARE_ACCEPTORS or self._stopping.is_set():
                    return
                self._waiting += 1

    def _sweep_orphans(self) -> None:
        """Every `orphan_sweep_interval` seconds, tear down workflows whose job Slurm has forgotten
        (dwsbridge.orphans); a workflow must be at least one interval old to be considered."""
        from dwsbridge import orphans

        while True:
            interval = self.served().config.orphan_sweep_interval
            if self._stopping.wait(interval if interval > 0 else 60.0):
                return
            if interval <= 0:
                continue
            served = self.served()
            lifecycle = Lifecycle(served.config, backend=served.shared_backend)
            try:
                for name in orphans.sweep(lifecycle, min_age=interval):
                    _stderr_line(f"dwsbridge agent: tore down orphaned workflow {name}")
                sweep_storage = getattr(lifecycle.backend, "sweep_storage", None)  # local backend only
                for path in sweep_storage() if sweep_storage is not None else ():
                    _stderr_line(f"dwsbridge agent: removed storage no workflow owns: {path}")
            except Exception as exc:  # the sweep is a safety net: it must never stop the agent
                _stderr_line(f"dwsbridge agent: orphan sweep failed: {exc!r}")
            finally:
                if served.shared_backend is None:
                    lifecycle.close()

    def _drain(self) -> int:
        deadline = time.monotonic() + self.drain_timeout
        with self._idle:
            while self._active and time.monotonic() < deadline:
                self._idle.wait(max(0.0, deadline - time.monotonic()))
            left = self._active
        if left:
            _stderr_line(f"dwsbridge agent: stopping with {left} request(s) unfinished (they fall back)")
        _stderr_line("dwsbridge agent: stopped")
        return 0


def expired(deadline: str) -> str:
    """Why a request must not start (its caller gave up waiting at `deadline`), or ""."""
    try:
        late = time.time() - float(deadline)
    except ValueError:
        return ""
    return f"expired: read {late:.1f}s after its caller gave up" if late > 0 else ""


class Heartbeat:
    """Sends "." every hookclient.HEARTBEAT seconds while a long hook runs, so that its caller can tell
    a busy agent from a hung one; the reply itself goes through send(), never interleaved with a beat.
    A caller that has gone only stops the beats: the hook runs on (Slurm may have killed its helper)."""

    def __init__(self, conn: socket.socket, *, enabled: bool) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True) if enabled else None

    def __enter__(self) -> Heartbeat:
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        while not self._done.wait(hookclient.HEARTBEAT):
            with self._lock:
                if self._done.is_set():
                    return
                try:
                    self._conn.sendall(hookclient.HEARTBEAT_BYTE)
                except OSError:
                    return

    def send(self, data: bytes) -> None:
        with self._lock:
            self._done.set()
            self._conn.sendall(data)


def _read_all(conn: socket.socket) -> bytes:
    """The whole request (the client shuts its side down after it), within REQUEST_TIMEOUT per read.

    The timeout is the kernel's (SO_RCVTIMEO, one call) on a blocking socket, not Python's (the socket
    made non-blocking, and a poll() before every read and back): system calls are what an answer
    costs most when the CPU comes to it cold, between sbatches (BENCHMARKS.md "Slurm")."""
    seconds = int(REQUEST_TIMEOUT)
    timeval = struct.pack("@ll", seconds, int((REQUEST_TIMEOUT - seconds) * 1_000_000))  # 64-bit Linux
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = conn.recv(65536)
        except BlockingIOError:  # EAGAIN: SO_RCVTIMEO ran out
            raise TimeoutError(f"no whole request within {REQUEST_TIMEOUT:g}s") from None
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > REQUEST_LIMIT:
            raise ValueError("request too large")
        chunks.append(chunk)


def systemd_unit(python: str, socket_path: str, config: str | None) -> str:
    """A systemd unit that runs the agent (written beside burst_buffer.lua by `dwsbridge slurm install`)."""
    command = f"{python} -I -m dwsbridge agent --socket {socket_path}"
    if config:
        command += f" --config {config}"
    return f"""\
# dwsbridge-agent.service: the bridge agent burst_buffer.lua's hooks delegate to.
# Install: cp dwsbridge-agent.service /etc/systemd/system/ && systemctl enable --now dwsbridge-agent
# Without it the hooks still work (each runs the bridge in-process, slower).
[Unit]
Description=dwsbridge agent (Slurm burst_buffer/lua hooks)
Before=slurmctld.service

[Service]
Type=simple
ExecStart={command}
# The hooks' environment: give it what slurmctld has (SLURM_CONF, KUBECONFIG) if not the defaults.
#Environment=SLURM_CONF=/etc/slurm/slurm.conf
Restart=on-failure
RestartSec=2
# Only the agent: the copy-offload servers and copies it started for running jobs stay up.
KillMode=process
TimeoutStopSec={int(DEFAULT_DRAIN_TIMEOUT) + 10}

[Install]
WantedBy=multi-user.target
"""


def main(socket_path: str, config_path: str | None, drain_timeout: float = DEFAULT_DRAIN_TIMEOUT) -> int:
    return Agent(socket_path, config_path, drain_timeout=drain_timeout).serve()


__all__ = ["Agent", "Served", "main", "systemd_unit"]
