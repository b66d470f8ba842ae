"""A job's copy-offload server against another local user who tries to exhaust it (issue 11.4).

Two ordinary users: the victim owns the workflow (the server copies as them and holds their token);
the attacker has no token and holds connections open, trickles requests or floods 1 MiB bodies.
The victim's own client (`copyoffload hello`, run as the victim) must keep working, and the root
server's memory must stay bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from copyoffload import certs, tokens
from copyoffload.server.app import CopyOffloadServer, ServerConfig
from tests.helpers_users import ensure_user, shared_tmpdir

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (two ordinary users, a root server)"),
]

ROOT = Path(__file__).resolve().parents[1]
HOSTILE_CONNECTIONS = 1100  # more than the server's 1,024 connection threads
RSS_CAP_KIB = 150 * 1024

# Opens N connections and holds them: some idle, some in the middle of a request header that never ends.
HOLDER = """
import resource, socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for i in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    if i % 2:
        s.sendall(b"\\x16")  # the first byte of a TLS handshake, then nothing
    held.append(s)
print(len(held), flush=True)
sys.stdin.read()  # hold until the test closes our stdin
"""

# Many connections at once, each announcing a 1 MiB body with a bad token and sending all of it but the
# last byte (a server that buffers bodies before checking the token then holds them all).
FLOODER = """
import socket, ssl, sys, threading
port, cert, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context(cafile=cert)
body = b"{" + b" " * ((1 << 20) - 2) + b"}"
head = (b"POST /trial HTTP/1.1\\r\\nHost: localhost\\r\\nAuthorization: Bearer x.y.z\\r\\n"
        b"Accepts-version: 1.0\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body))
sent = threading.Barrier(count + 1)
go = threading.Event()
answers = []
def one():
    try:
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=60),
                            server_hostname="localhost")
    except OSError as exc:
        sent.wait()
        answers.append(repr(exc).encode())
        return
    try:
        s.sendall(head)
        s.sendall(body[:-1])
    except OSError:
        pass
    sent.wait()
    go.wait()
    try:
        answers.append(s.recv(64)[:12])
    except OSError as exc:
        answers.append(repr(exc).encode())
    s.close()
threads = [threading.Thread(target=one) for _ in range(count)]
for t in threads: t.start()
sent.wait()
print("sent", flush=True)
sys.stdin.readline()
go.set()
for t in threads: t.join()
print(sum(a == b"HTTP/1.1 401" for a in answers), flush=True)
"""


@dataclass
class Party:
    uid: int
    gid: int


@dataclass
class Setup:
    victim: Party
    attacker: Party
    dir: Path
    cert: Path
    key: Path
    token_key: Path
    token: str


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    victim = Party(*ensure_user("dwsbt-covictim"))
    attacker = Party(*ensure_user("dwsbt-coattack"))
    with shared_tmpdir() as tmp:
        d = Path(tmp)
        tls = d / "tls"
        tls.mkdir()
        cert, key = certs.make_site_certificate(tls, ["localhost"], ["127.0.0.1"])
        os.chmod(tls, 0o755)
        os.chmod(cert, 0o644)
        token_key = d / "token_key.pem"
        tokens.write_key_file(token_key)
        token = tokens.mint_token(token_key.read_bytes(), "bb77")
        yield Setup(victim, attacker, d, cert, key, token_key, token)


def config(s: Setup, **overrides: object) -> ServerConfig:
    fields: dict[str, object] = {
        "addr": "127.0.0.1:0",
        "cert": str(s.cert),
        "cakey": str(s.key),
        "tokenkey": str(s.token_key),
        "uid": s.victim.uid,
        "gid": s.victim.gid,
        "workflow": "bb77",
        "node": "rabbit-0",
        **overrides,
    }
    return ServerConfig(**fields)  # type: ignore[arg-type]


@contextmanager
def server(s: Setup, **overrides: object) -> Iterator[CopyOffloadServer]:
    srv = CopyOffloadServer(config(s, **overrides))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(grace=2)


def as_user(party: Party, argv: list[str], **kwargs: object) -> subprocess.Popen[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **kwargs.pop("env", {})}  # type: ignore[dict-item]
    return subprocess.Popen(
        argv,
        user=party.uid,
        group=party.gid,
        extra_groups=[],
        cwd="/",
        env=env,
        text=True,
        **kwargs,  # type: ignore[call-overload]
    )


def victim_hello(s: Setup, port: int) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "copyoffload.cli", "hello", "--host", "localhost", "--port", str(port)]
    argv += ["--cert", str(s.cert)]
    proc = as_user(
        s.victim, argv, env={"DW_WORKFLOW_TOKEN": s.token}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@contextmanager
def held_connections(s: Setup, port: int, count: int) -> Iterator[None]:
    holder = as_user(
        s.attacker,
        [sys.executable, "-c", HOLDER, str(port), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == str(count)
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(30)


def test_victim_hello_works_while_another_user_holds_1100_connections(setup: Setup) -> None:
    with server(setup) as srv, held_connections(setup, srv.port, HOSTILE_CONNECTIONS):
        result = victim_hello(setup, srv.port)
    assert (result.returncode, result.stdout) == (0, "hello back at ya\n"), result.stderr


def test_connections_from_another_local_user_are_closed_at_accept(setup: Setup) -> None:
    with server(setup) as srv, held_connections(setup, srv.port, 50):
        deadline = time.monotonic() + 30
        while srv.http.refused_peers < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (srv.http.refused_peers, srv.http.connection_count()) == (50, 0)


def test_without_the_peer_check_strangers_are_capped_and_the_victim_still_gets_in(setup: Setup) -> None:
    """As for peers the kernel cannot attribute (another host): only the stranger cap protects."""
    with (
        server(setup, check_peer_uid=False) as srv,
        held_connections(setup, srv.port, HOSTILE_CONNECTIONS),
    ):
        assert srv.http.connection_count() <= 64  # the stranger cap
        result = victim_hello(setup, srv.port)
    assert (result.returncode, result.stdout) == (0, "hello back at ya\n"), result.stderr


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_trickled_request_is_cut_off_at_its_deadline(setup: Setup, tls: bool) -> None:
    """Slowloris: one header byte every 0.2 s would take a minute; the whole request has 1 s. Over TLS
    too, where the connection the watchdog closes is the wrapped one, not the socket accepted."""
    trickle = (
        "import socket, ssl, sys, time\n"
        "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
        "if sys.argv[2] == 'tls':\n"
        "    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n"
        "    ctx.check_hostname = False\n"
        "    ctx.verify_mode = ssl.CERT_NONE\n"
        "    s = ctx.wrap_socket(s)\n"
        "for b in b'GET /hello HTTP/1.1\\r\\nX-Pad: ' + b'a' * 300:\n"
        "    try:\n"
        "        s.sendall(bytes([b]))\n"
        "    except OSError:\n"
        "        print('cut', flush=True); break\n"
        "    time.sleep(0.2)\n"
        "else:\n"
        "    print('served to the end', flush=True)\n"
    )
    with server(setup, check_peer_uid=False, skip_tls=not tls, first_request_timeout=1.0) as srv:
        argv = [sys.executable, "-c", trickle, str(srv.port), "tls" if tls else "plain"]
        proc = as_user(setup.attacker, argv, stdout=subprocess.PIPE)
        out, _ = proc.communicate(timeout=60)
    assert out.strip() == "cut"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_server_memory_stays_bounded_under_600_unauthenticated_1mib_bodies(setup: Setup) -> None:
    ready = setup.dir / "flood.ready"
    argv = [sys.executable, "-m", "copyoffload.cli", "server", "--addr", "127.0.0.1:0"]
    argv += ["--cert", str(setup.cert), "--cakey", str(setup.key), "--tokenkey", str(setup.token_key)]
    argv += ["--uid", str(setup.victim.uid), "--gid", str(setup.victim.gid), "--ready-file", str(ready)]
    argv += ["--any-local-user"]  # let the attacker's connections reach request parsing
    server_proc = subprocess.Popen(
        argv, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "DW_WORKFLOW_NAME": "bb77"}
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert server_proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        port = int(json.loads(ready.read_text())["port"])
        flood = as_user(
            setup.attacker,
            [sys.executable, "-c", FLOODER, str(port), str(setup.cert), "600"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert flood.stdout is not None and flood.stdin is not None
        assert flood.stdout.readline().strip() == "sent"
        time.sleep(0.5)
        peak = rss_kib(server_proc.pid)  # every body sent but its last byte, all connections open
        out, _ = flood.communicate("go\n", timeout=240)
        assert peak < RSS_CAP_KIB
        assert int(out.strip()) > 0  # the flood really reached the server and was refused
        result = victim_hello(setup, port)
        assert (result.returncode, result.stdout) == (0, "hello back at ya\n"), result.stderr
    finally:
        server_proc.terminate()
        server_proc.wait(30)


def test_the_victims_open_keep_alive_connection_survives_a_stranger_flood(setup: Setup) -> None:
    """Eviction takes strangers only: a connection that sent an admitted request is never evicted."""
    import http.client
    import ssl

    with server(setup, check_peer_uid=False) as srv:
        ctx = ssl.create_default_context(cafile=str(setup.cert))
        conn = http.client.HTTPSConnection("localhost", srv.port, timeout=30, context=ctx)
        headers = {"Authorization": f"Bearer {setup.token}", "Accepts-version": "1.0"}
        try:
            conn.request("GET", "/hello", headers=headers)
            assert conn.getresponse().read() == b"hello back at ya\n"
            with held_connections(setup, srv.port, HOSTILE_CONNECTIONS):
                conn.request("GET", "/hello", headers=headers)  # the same connection, mid-flood
                assert conn.getresponse().read() == b"hello back at ya\n"
        finally:
            conn.close()
