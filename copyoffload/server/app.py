"""``copyoffload server``: flags and environment as upstream's nnf-copy-offload, plus a ready signal.

A launcher (the local backend's driver) starts it as a separate root-owned process::

    DW_WORKFLOW_NAME=bb12 DW_WORKFLOW_NAMESPACE=default NNF_NODE_NAME=rabbit-0 \\
    copyoffload server --addr 127.0.0.1:0 --cert C --cakey K --tokenkey T --uid U --gid G \\
        --ready-file /run/dwsbridge/bb12.ready

and waits for the ready file: one JSON line ``{"pid", "host", "port", "url", "held"}``, written
(atomically) once the socket listens. ``--addr HOST:0`` picks a free port; the file says which.
With ``--hold`` the socket listens but nothing is served (``"held": true``) until SIGUSR1: the local
backend starts the server so at Setup, keeping the port from other users until PreRun releases it.
SIGTERM or SIGINT stops it gracefully: no new connections, running copies cancelled, exit 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from copyoffload.jobs import (
    Copier,
    JobTable,
    ProfileError,
    Profiles,
    mock_copier,
    mock_forever_copier,
    mover_copier,
)
from copyoffload.server.auth import Authenticator
from copyoffload.server.peers import GONE, REMOTE, peer_uid
from copyoffload.server.routes import CopyOffloadApi
from copyoffload.server.transport import HttpServer, Limits, bind, make_server_context
from copyoffload.tokens import KeyFileError, TokenVerifier, read_key_file

log = logging.getLogger("copyoffload.server")

SHUTDOWN_DELAY = 1.0
MOCK_RABBIT = "mock-rabbit-01"


class ServerConfigError(Exception):
    pass


@dataclass
class ServerConfig:
    addr: str = "localhost:4000"
    cert: str | None = None
    cakey: str | None = None
    tokenkey: str | None = None
    skip_tls: bool = False
    skip_token: bool = False
    mock: bool = False
    profiles: str | None = None
    uid: int | None = None
    gid: int | None = None
    ready_file: str | None = None
    # Listen at once, serve only after SIGUSR1 (the local backend holds the port from Setup to PreRun).
    hold: bool = False
    workflow: str | None = None
    namespace: str | None = None
    node: str | None = None
    max_running: int = 4
    max_body_bytes: int = 1024 * 1024
    max_connections: int = 1024
    max_unadmitted: int = 64
    first_request_timeout: float = 10.0
    # Local peers must run as the workflow's user (or root); off for a server that local users share.
    check_peer_uid: bool = True
    # --mock-forever: today's mock (copies run until cancelled, status waits as for real copies).
    mock_forever: bool = False


def split_addr(addr: str) -> tuple[str, int]:
    """``host:port``, ``:port`` (every address) or ``[v6]:port`` into (host, port)."""
    host, sep, port_text = addr.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ServerConfigError(f"--addr must be HOST:PORT or :PORT, not {addr!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


class CopyOffloadServer:
    """The assembled server: job table + API + HTTP transport. ``start()`` returns once listening."""

    def __init__(self, config: ServerConfig, *, copier: Copier | None = None) -> None:
        """``copier`` replaces the data mover (tests); by default: the mover, or the mock with --mock."""
        self.config = config
        uid = config.uid if config.uid is not None else os.geteuid()
        gid = config.gid if config.gid is not None else os.getegid()
        mocked = config.mock or config.mock_forever
        if os.geteuid() == 0 and (config.uid is None or config.gid is None) and not mocked:
            raise ServerConfigError(
                "running as root: give --uid and --gid of the workflow's user (copies run as them)"
            )
        try:
            profiles = Profiles.load(config.profiles) if config.profiles else Profiles.load()
        except ProfileError as exc:
            raise ServerConfigError(str(exc)) from None
        verifier = None
        if not config.skip_token:
            if not config.tokenkey:
                raise ServerConfigError("--tokenkey is required (or --skip-token for development)")
            try:
                verifier = TokenVerifier(read_key_file(config.tokenkey), config.workflow)
            except KeyFileError as exc:
                raise ServerConfigError(str(exc)) from None
        ssl_context = None
        if not config.skip_tls:
            if not config.cert or not config.cakey:
                raise ServerConfigError("--cert and --cakey are required (or --skip-tls for development)")
            try:
                ssl_context = make_server_context(config.cert, config.cakey)
            except (OSError, ValueError) as exc:
                raise ServerConfigError(f"unable to load certificate and key: {exc}") from None
        node = config.node or socket.gethostname().split(".")[0]
        if config.mock:
            node = MOCK_RABBIT  # upstream's mock names requests for this rabbit, whatever NNF_NODE_NAME says
            profiles = Profiles.accept_any(profiles)
        default_copier = mock_forever_copier if config.mock_forever else mover_copier
        self.table = JobTable(
            node=node,
            copier=copier or (mock_copier if config.mock else default_copier),
            uid=uid,
            gid=gid,
            max_running=config.max_running,
            status_waits=not config.mock,
        )
        self.api = CopyOffloadApi(
            self.table, profiles, Authenticator(verifier), request_shutdown=self.request_stop
        )
        self._allowed_uids = frozenset({uid, 0})
        host, port = split_addr(config.addr)
        try:
            listener = bind(host, port)
        except OSError as exc:
            raise ServerConfigError(f"unable to listen on {config.addr}: {exc.strerror or exc}") from None
        limits = Limits(
            max_body_bytes=config.max_body_bytes,
            max_connections=config.max_connections,
            max_unadmitted=config.max_unadmitted,
            first_request_timeout=config.first_request_timeout,
        )
        self.http = HttpServer(
            self.api.handle,
            listener,
            ssl_context,
            limits,
            admit=self.api.admit,
            peer_allowed=self._peer_allowed if config.check_peer_uid else None,
        )
        self.tls = ssl_context is not None
        self._warned_no_diag = False
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    def _peer_allowed(self, sock: socket.socket) -> bool:
        """A peer on this host must be the workflow's user or root; remote peers need their token."""
        try:
            owner = peer_uid(sock)
        except OSError as exc:
            if not self._warned_no_diag:
                self._warned_no_diag = True
                log.warning("peer uid check unavailable (%s): relying on tokens and connection caps", exc)
            return True
        if owner == REMOTE or owner in self._allowed_uids:
            return True
        if owner != GONE:
            log.info("workflow %s: refused a connection from uid %d", self.config.workflow or "-", owner)
        return False

    @property
    def port(self) -> int:
        return self.http.address[1]

    @property
    def host(self) -> str:
        return self.http.address[0]

    @property
    def url(self) -> str:
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self) -> None:
        self.http.start()
        if self.config.ready_file:
            write_ready_file(self.config.ready_file, self)

    def request_stop(self, delay: float = SHUTDOWN_DELAY) -> None:
        """Stop after ``delay`` seconds (``/shutdown`` answers first); new copies are refused at once."""
        self.table.close(cancel=False, timeout=0)
        timer = threading.Timer(delay, self.stop)
        timer.daemon = True
        timer.start()

    def stop(self, *, cancel_copies: bool = True, grace: float = 10.0) -> None:
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self.table.close(cancel=cancel_copies, timeout=grace)
            self.http.stop(grace=grace)
            if self.config.ready_file:
                Path(self.config.ready_file).unlink(missing_ok=True)
            self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)


def write_ready_file(path: str, server: CopyOffloadServer, *, held: bool = False) -> None:
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    info = {"pid": os.getpid(), "host": server.host, "port": server.port, "url": server.url, "held": held}
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, p)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    # Upstream's Go flags are single-dash (-addr); accept both spellings.
    parser.add_argument(
        "--addr", "-addr", default="localhost:4000", help="HOST:PORT to listen on (default %(default)s)"
    )
    parser.add_argument(
        "--cert", "-cert", default=env("TLS_CERT_PATH"), help="TLS certificate PEM (default $TLS_CERT_PATH)"
    )
    parser.add_argument(
        "--cakey", "-cakey", default=env("TLS_KEY_PATH"), help="TLS key PEM (default $TLS_KEY_PATH)"
    )
    parser.add_argument(
        "--tokenkey",
        "-tokenkey",
        default=env("TOKEN_KEY_PATH"),
        help="the workflow's token signing key PEM (default $TOKEN_KEY_PATH)",
    )
    parser.add_argument("--skip-tls", "-skip-tls", action="store_true", help="plain HTTP (development only)")
    parser.add_argument(
        "--skip-token", "-skip-token", action="store_true", help="no bearer token (development only)"
    )
    parser.add_argument(
        "--mock",
        "-mock",
        action="store_true",
        help="as upstream's -mock: touch no data, name requests mock-rabbit-01--nnf-copy-offload-node-N, "
        "accept any dmProfile, answer status at once (copies run until cancelled, 300 s at most)",
    )
    parser.add_argument(
        "--mock-forever",
        action="store_true",
        help="touch no data; copies run until cancelled and status waits for them as for real copies",
    )
    parser.add_argument(
        "--any-local-user",
        action="store_true",
        help="accept connections from every local user (default: only the workflow's user and root; "
        "remote peers are always accepted and need the token)",
    )
    parser.add_argument(
        "--profiles", metavar="FILE", help="dmProfile definitions (default: the shipped profiles.yaml)"
    )
    parser.add_argument("--uid", type=int, help="user id copies run as (the workflow's user)")
    parser.add_argument("--gid", type=int, help="group id copies run as")
    parser.add_argument(
        "--ready-file", metavar="PATH", help="write {pid,host,port,url} JSON here once listening"
    )
    parser.add_argument(
        "--hold",
        action="store_true",
        help="listen at once but serve only after SIGUSR1 (the ready file says held: true until then)",
    )
    parser.add_argument("--max-running", type=int, default=4, help="copies run at once; more wait as pending")
    parser.add_argument("--verbose", "-v", action="store_true", help="log more")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        addr=args.addr,
        cert=args.cert,
        cakey=args.cakey,
        tokenkey=args.tokenkey,
        skip_tls=args.skip_tls,
        skip_token=args.skip_token,
        mock=args.mock,
        mock_forever=args.mock_forever,
        check_peer_uid=not args.any_local_user,
        profiles=args.profiles,
        uid=args.uid,
        gid=args.gid,
        ready_file=args.ready_file,
        hold=args.hold,
        workflow=os.environ.get("DW_WORKFLOW_NAME") or None,
        namespace=os.environ.get("DW_WORKFLOW_NAMESPACE") or None,
        node=os.environ.get("NNF_NODE_NAME") or None,
        max_running=args.max_running,
    )


def run(config: ServerConfig) -> int:
    """Run until /shutdown, SIGTERM or SIGINT; return the exit code."""
    try:
        server = CopyOffloadServer(config)
    except ServerConfigError as exc:
        print(f"copyoffload server: {exc}", file=sys.stderr)
        return 2
    signalled = threading.Event()
    released = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        signalled.set()

    def on_release(signum: int, frame: object) -> None:
        released.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, on_release)
    try:
        if config.hold:
            if config.ready_file:
                write_ready_file(config.ready_file, server, held=True)
            print(f"copyoffload server holding {server.url} until SIGUSR1", flush=True)
            while not released.wait(0.2):
                if signalled.is_set():
                    server.stop()
                    return 0
        server.start()
        print(
            "copyoffload server ready on {} (workflow {}, node {}, tls {}, token {}, mock {})".format(
                server.url,
                config.workflow or "-",
                config.node or socket.gethostname(),
                not config.skip_tls,
                not config.skip_token,
                "upstream" if config.mock else "forever" if config.mock_forever else False,
            ),
            flush=True,
        )
        while not signalled.is_set() and not server.wait(0.2):
            pass
        server.stop()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="copyoffload server", description=__doc__.split("\n")[0])
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s"
    )
    return run(config_from_args(args))
