"""Running the daemon: the listening socket, the gRPC server, and the sweep that ends requests.

The socket is made under a temporary name, given its mode (0766, as upstream's), and renamed into
place, so no one can connect to it half-made; a live daemon already serving the path is never
replaced. Requests learn that their workflow ended in two ways: every call reads the workflow, and a
sweep every ``sweep_interval`` seconds cancels and forgets the requests of workflows past PreRun (a
hurry teardown does not wait for it: the local driver kills the copies it finds registered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from dwsbridge.config import Config
from nnfdm.service import Book, DataMoverService

log = logging.getLogger("nnfdm")


class SocketInUse(Exception):
    """Another process serves (or something else occupies) the socket path."""


@dataclass(frozen=True)
class DaemonOptions:
    socket: str
    simulated: bool = False
    node_name: str = "localhost"
    sweep_interval: float = 1.0
    max_running: int = 4
    ready_file: str | None = None
    copy_offload_cert: str | None = None
    max_requests_per_user: int = 256
    max_waits_per_user: int = 64


def listen_unix(path: str, mode: int = 0o766) -> socket.socket:
    target = Path(path)
    if target.exists() or target.is_symlink():
        if not stat.S_ISSOCK(target.lstat().st_mode):
            raise SocketInUse(f"{path} exists and is not a socket: refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            target.unlink()  # a stale socket of a daemon that is gone
        else:
            raise SocketInUse(f"another daemon is already serving {path}")
        finally:
            probe.close()
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(temp))
        os.chmod(temp, mode)
        sock.listen(128)
        os.rename(temp, target)
    except BaseException:
        sock.close()
        temp.unlink(missing_ok=True)
        raise
    sock.setblocking(False)
    return sock


def build_book(config: Config, options: DaemonOptions) -> tuple[Book, object | None]:
    """The request book for the mode and backend, and the engine to close at exit (if any)."""
    if options.simulated:
        from nnfdm.simulated import SimulatedBook

        return SimulatedBook(max_per_user=options.max_requests_per_user), None
    from nnfdm.book import RequestBook
    from nnfdm.workflows import WorkflowReader

    reader = WorkflowReader(config)
    engine: object
    if config.backend == "kubernetes":
        from nnfdm.forward import ForwardEngine

        engine = ForwardEngine(reader.token, node=options.node_name, cert=options.copy_offload_cert)
    else:
        from nnfdm.local import LocalEngine

        engine = LocalEngine(config, node=options.node_name, max_running=options.max_running)
    return RequestBook(
        engine,
        reader,
        default_namespace=config.namespace,
        max_active_per_user=options.max_requests_per_user,
    ), engine


async def serve(config: Config, options: DaemonOptions, version: str) -> None:
    from grpclib.server import Server

    book, engine = build_book(config, options)
    service = DataMoverService(book, version=version, max_waits_per_user=options.max_waits_per_user)
    sock = listen_unix(options.socket)
    server = Server([service])
    await server.start(sock=sock)
    mode = "simulated" if options.simulated else config.backend
    log.info("nnf-dm %s serving %s (%s)", version, options.socket, mode)
    if options.ready_file:
        Path(options.ready_file).write_text(f"{os.getpid()}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sweeper = asyncio.create_task(_sweep(service, options.sweep_interval, stop))
    try:
        await stop.wait()
    finally:
        log.info("nnf-dm stopping")
        sweeper.cancel()
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(options.socket)
        close = getattr(engine, "close", None)
        if close is not None:
            await loop.run_in_executor(None, close)
        service.close()


async def _sweep(service: DataMoverService, interval: float, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        await asyncio.sleep(interval)
        try:
            await loop.run_in_executor(service.calls, service.book.sweep)
        except Exception:  # a backend hiccup must not end the sweeps
            log.exception("nnf-dm sweep failed")
