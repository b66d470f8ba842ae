"""The hook side of the bridge agent: hand one Slurm hook to `dwsbridge agent`, or say why not.

burst_buffer.lua talks to the agent itself when Debian's lua-socket is installed; without it, it starts
a Python process per hook, and this module is that process. Importing the bridge (and, on the Kubernetes
backend, the client library) costs far more than the hook's own work, so a running agent does the
work and this module only relays: it connects to the agent's Unix socket, sends the hook and its
arguments, and copies the agent's reply (already in the result protocol, see dwsbridge.slurm) to
stdout. When there is no agent (no socket, nobody listening, a refusal, a reply cut short), the
caller runs the hook in-process exactly as without an agent.

This module is imported before anything else on the hook path: it uses only `_socket`, `os` and
`sys` (the `socket` module imports `enum` and `selectors`, `json` imports `re`: ~10 ms together).

Wire format (version DWSB1), one request per connection:
  request:  NUL-separated fields "DWSB1", hook, the number of environment entries, the entries
            ("KEY=VALUE"; DWSBRIDGE_DEADLINE=<epoch seconds>: the agent must not start the hook after
            that, its caller has given up), then the hook's arguments; the client then shuts down its
            sending side. burst_buffer.lua builds the same bytes.
  reply:    "DWSB1 OK\\n" followed by the hook's protocol output (log lines, payload, status line),
            or "DWSB1 FALLBACK <reason>\\n": the client runs the hook itself. For the hooks not in
            BLOCKING_HOOKS the agent sends "." every HEARTBEAT seconds before the reply, while it works.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

VERSION = "DWSB1"
SOCKET_ENV = "DWSBRIDGE_AGENT_SOCKET"  # set by burst_buffer.lua; unset or empty: no agent
DEFAULT_SOCKET = "/run/dwsbridge/agent.sock"
# What the agent must agree on with the hook's process (it refuses a request made for another
# configuration), and what it needs to answer like the hook would.
FORWARDED_ENV = ("DWSBRIDGE_CONFIG", "DWSBRIDGE_ROOT", "DWSBRIDGE_LOG_LEVEL")
CONNECT_TIMEOUT = 1.0
# job_process, pools and paths block slurmctld, and get_status a user at the terminal: if the agent
# has not answered within BLOCKING_TIMEOUT seconds, the hook runs in-process instead (job_process is
# refused instead, see NO_RERUN_HOOKS). The other hooks wait for the agent (Slurm's burst_buffer.conf
# timeouts bound them).
BLOCKING_HOOKS = ("job_process", "pools", "paths", "get_status")
BLOCKING_TIMEOUT = 3.0
NO_RERUN_HOOKS = ("job_process",)  # after a timeout: refused, never validated a second time in-process
DEADLINE_ENV = "DWSBRIDGE_DEADLINE"
HEARTBEAT = 1.0  # seconds between the agent's "." while a long hook runs
HEARTBEAT_BYTE = b"."
REPLY_OK = f"{VERSION} OK\n".encode()
REPLY_FALLBACK = f"{VERSION} FALLBACK ".encode()
STATUS_MARK = b"@@DWSBRIDGE rc="


class AgentUnavailable(Exception):
    """The agent cannot serve this hook; str() says why (for the log line of the fallback)."""

    quiet = False  # True when there is simply no agent running: nothing worth logging
    timed_out = False  # True when the agent took the request and did not answer in time


def timeout_refusal(reason: str) -> str:
    """What a user sees when job_process's agent did not answer in time (burst_buffer.lua says the same)."""
    return (
        f"dwsbridge: the bridge agent did not answer in time ({reason}); the job was not submitted: try "
        "again, and if it persists ask your admin to check `dwsbridge agent`"
    )


def encode_request(hook: str, args: Sequence[str], env: dict[str, str]) -> bytes:
    entries = [f"{k}={v}" for k, v in sorted(env.items())]
    fields = [VERSION, hook, str(len(entries)), *entries, *args]
    return "\0".join(fields).encode("utf-8", "surrogateescape")


def decode_request(data: bytes) -> tuple[str, list[str], dict[str, str]]:
    """(hook, args, env) from a request; ValueError when it is not one."""
    fields = data.decode("utf-8", "surrogateescape").split("\0")
    if len(fields) < 3 or fields[0] != VERSION or not fields[2].isdigit():
        raise ValueError("not a dwsbridge agent request")
    count = int(fields[2])
    entries, args = fields[3 : 3 + count], fields[3 + count :]
    if len(entries) != count or not all("=" in e for e in entries):
        raise ValueError("malformed environment in agent request")
    env = dict(e.split("=", 1) for e in entries)
    return fields[1], args, env


def request_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def call_agent(path: str, hook: str, args: Sequence[str], env: dict[str, str] | None = None) -> bytes:
    """The agent's protocol output for this hook; raises AgentUnavailable to fall back."""
    import _socket
    import time

    timeout = BLOCKING_TIMEOUT if hook in BLOCKING_HOOKS else None
    env = dict(request_env() if env is None else env)
    if timeout is not None:
        env[DEADLINE_ENV] = f"{time.time() + CONNECT_TIMEOUT + timeout:.3f}"
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(path)
        except OSError as exc:
            unavailable = AgentUnavailable(f"cannot connect to {path}: {exc.strerror or exc}")
            unavailable.quiet = isinstance(exc, (FileNotFoundError, ConnectionRefusedError))
            raise unavailable from None
        owner = peer_uid(sock)
        if owner != 0:  # someone else's socket in the agent's place: never hand it a hook
            raise AgentUnavailable(f"{path} is served by uid {owner}, not root: not using it")
        try:
            sock.settimeout(timeout)
            sock.sendall(encode_request(hook, args, env))
            sock.shutdown(_socket.SHUT_WR)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            unavailable = AgentUnavailable(f"agent at {path}: no answer within {timeout:g}s")
            unavailable.timed_out = True
            raise unavailable from None
        except OSError as exc:
            raise AgentUnavailable(f"agent at {path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    return parse_reply(b"".join(chunks), path)


def peer_uid(sock: Any) -> int:
    """The uid of the process at the other end of a connected Unix socket (SO_PEERCRED)."""
    import _socket

    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)  # struct ucred: pid, uid, gid
    return int.from_bytes(creds[4:8], sys.byteorder)


def parse_reply(reply: bytes, path: str = "agent") -> bytes:
    reply = reply.lstrip(HEARTBEAT_BYTE)
    if reply.startswith(REPLY_OK):
        output = reply[len(REPLY_OK) :]
        last = output[output.rfind(b"\n", 0, len(output) - 1) + 1 :]
        if output.endswith(b"\n") and last.startswith(STATUS_MARK):
            return output
        raise AgentUnavailable(f"agent at {path}: reply cut short")
    if reply.startswith(REPLY_FALLBACK):
        reason = reply[len(REPLY_FALLBACK) :].decode("utf-8", "replace").strip()
        raise AgentUnavailable(f"agent at {path}: {reason}")
    raise AgentUnavailable(f"agent at {path}: no reply" if not reply else f"agent at {path}: bad reply")


def exit_code(output: bytes) -> int:
    last = output[output.rfind(b"\n", 0, len(output) - 1) + 1 :]
    return 0 if last.startswith(STATUS_MARK + b"0 ") else 1


def refuse(message: str) -> int:
    """Fail the hook with `message` in the result protocol (without importing the bridge)."""
    payload = message.encode("utf-8", "replace")
    sys.stdout.buffer.write(payload + b"\n" + STATUS_MARK + b"1 len=%d\n" % len(payload))
    sys.stdout.buffer.flush()
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the hook launcher burst_buffer.lua runs (`python -I -S -c ...`): the agent,
    else the hook in-process (then the interpreter's site-packages are added, as -S left them out)."""
    args = list(sys.argv[1:] if argv is None else argv)
    path = os.environ.get(SOCKET_ENV, "")
    note = ""
    if path and args and args[0] not in ("-h", "--help"):
        try:
            output = call_agent(path, args[0], args[1:])
        except AgentUnavailable as exc:
            if exc.timed_out and args[0] in NO_RERUN_HOOKS:
                return refuse(timeout_refusal(str(exc)))
            note = "" if exc.quiet else str(exc)
        else:
            sys.stdout.buffer.write(output)
            sys.stdout.buffer.flush()
            return exit_code(output)
    if sys.flags.no_site:
        import site

        site.main()
    from dwsbridge.slurm import run_in_process

    return run_in_process(args, fallback_note=note)
