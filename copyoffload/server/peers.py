"""Who is on the other end of a TCP connection from this host: the owner uid of the peer's socket.

Why: a job's copy-offload server listens on TCP, which any local user can reach. For a peer on this host
the kernel knows the owner of the connecting socket; we ask it with one exact sock_diag lookup over
netlink (``NETLINK_SOCK_DIAG``, the interface ``ss`` uses), by the connection's 4-tuple, which costs
microseconds and does not scan every socket as reading ``/proc/net/tcp`` would. A peer on another host
is not in this host's socket table: the lookup answers ``REMOTE`` (for a loopback peer that cannot
happen, so a missing entry there means the peer is already gone).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Final

NETLINK_SOCK_DIAG: Final = 4
SOCK_DIAG_BY_FAMILY: Final = 20
NLM_F_REQUEST: Final = 1
NLMSG_ERROR: Final = 2
_NO_COOKIE: Final = 0xFFFFFFFF
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_UID_OFFSET: Final = 4 + 48 + 12  # inet_diag_msg: family/state/timer/retrans, sockid, expires/rqueue/wqueue

_CLOSED_STATES: Final = frozenset({6, 7})  # TCP_TIME_WAIT, TCP_CLOSE
REMOTE: Final = -1
GONE: Final = -2


def _sockid(host: str) -> tuple[int, bytes]:
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    return family, address.packed.ljust(16, b"\0")


def _request(peer: tuple[str, int], local: tuple[str, int]) -> bytes:
    family, src = _sockid(peer[0])
    _, dst = _sockid(local[0])
    body = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF)
    body += struct.pack("!HH", peer[1], local[1]) + src + dst
    body += struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
    return _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + body


def peer_uid(sock: socket.socket) -> int:
    """The uid owning the peer's socket when the peer is on this host; REMOTE or GONE otherwise.

    Raises OSError when the kernel cannot be asked (no sock_diag): the caller decides what that means.
    """
    peer = sock.getpeername()[:2]
    local = sock.getsockname()[:2]
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)
        nl.send(_request(peer, local))
        reply = nl.recv(8192)
    length, kind = struct.unpack_from("=IH", reply)
    if kind == NLMSG_ERROR:
        (errno_value,) = struct.unpack_from("=i", reply, _HEADER.size)
        if errno_value == 0:
            raise OSError("sock_diag answered without a socket")
        return GONE if ipaddress.ip_address(_plain(peer[0])).is_loopback else REMOTE
    if kind != SOCK_DIAG_BY_FAMILY or length < _HEADER.size + _UID_OFFSET + 4:
        raise OSError(f"unexpected sock_diag reply (type {kind}, {length} bytes)")
    state = reply[_HEADER.size + 1]
    if state in _CLOSED_STATES:
        return GONE  # a closed connection's leftover entry carries no owner
    (uid,) = struct.unpack_from("=I", reply, _HEADER.size + _UID_OFFSET)
    return int(uid)


def _plain(host: str) -> str:
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)
