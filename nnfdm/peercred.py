"""Who is on the other end of a Unix socket: the kernel's SO_PEERCRED, never anything the client says."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any

_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


@dataclass(frozen=True)
class Caller:
    """The process that opened the connection, as the kernel recorded it at connect()."""

    pid: int
    uid: int
    gid: int


class NoCredentials(Exception):
    """The connection carries no peer credentials (not a Unix socket); the call must be refused."""


def peer_credentials(sock: Any) -> Caller:
    """SO_PEERCRED of a connected AF_UNIX socket (a socket.socket or asyncio's TransportSocket)."""
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        raise NoCredentials("the caller is not connected over a Unix socket")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return Caller(pid=pid, uid=uid, gid=gid)


def stream_caller(stream: Any) -> Caller:
    """The caller of a grpclib server stream.

    grpclib keeps the connection's asyncio transport in ``stream.peer``; grpcio's server offers no way
    to reach the socket at all (``context.peer()`` is just ``unix:``), which is why the daemon serves
    with grpclib. Anything unexpected here fails closed: the call is refused, never run as someone.
    """
    transport = getattr(getattr(stream, "peer", None), "_transport", None)
    if transport is None:
        raise NoCredentials("cannot find the caller's connection")
    return peer_credentials(transport.get_extra_info("socket"))
