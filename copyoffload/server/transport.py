"""A small, strict HTTP/1.1 server over TLS 1.3: one thread per connection, keep-alive, hard limits.

Why threads: handlers may block (``/status?maxWaitSecs=N`` waits on a Condition), TLS work happens in
OpenSSL with the GIL released, and a thread per keep-alive connection gives the throughput we need
(see BENCHMARKS.md) without an event loop. Every limit is explicit: header bytes, header count, body
size, connection count, handshake/idle/read timeouts. Anything malformed gets a 4xx and the connection
is closed; nothing a client sends can raise out of a connection thread.

Against a hostile local user (11.4): a peer filter refuses connections whose socket another user owns
(see peers.py); a request is admitted (route, method, token, version) on its header alone, so an
unauthenticated body is never read; a watchdog enforces whole-request deadlines however slowly bytes
trickle in; and connections that have not yet sent an admitted request are capped, the oldest evicted
first, so idle strangers cannot crowd out the job's own client.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

from copyoffload.server.bodies import TEXT, Request, Response

log = logging.getLogger("copyoffload.server")

_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    max_body_bytes: int = 1024 * 1024
    max_connections: int = 1024
    handshake_timeout: float = 10.0
    idle_timeout: float = 120.0
    read_timeout: float = 30.0
    # A new connection must complete an admitted request within this; later requests within
    # request_timeout of their first byte (headers and body, however slowly they arrive).
    first_request_timeout: float = 10.0
    request_timeout: float = 30.0
    # Connections that have not yet sent an admitted request; beyond this the oldest is closed.
    max_unadmitted: int = 64


class HttpError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _DateCache:
    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._value = email.utils.formatdate(now, usegmt=True).encode("ascii")
            self._second = now
        return self._value


_REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


def render(response: Response, date: bytes, keep_alive: bool) -> bytes:
    head = [
        b"HTTP/1.1 %d %s" % (response.code, _REASONS.get(response.code, b"Unknown")),
        b"Date: " + date,
        b"Content-Length: %d" % len(response.body),
    ]
    if response.body or response.code >= 400:
        head.append(b"Content-Type: " + response.content_type.encode("ascii"))
    for name, value in response.extra_headers:
        head.append((f"{name}: {value}").encode("latin-1"))
    if not keep_alive:
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + response.body


@dataclass(eq=False)
class _Connection:
    """One accepted connection, as the accept loop and the watchdog see it (changed under the lock)."""

    raw: socket.socket
    accepted: float
    deadline: float | None
    admitted: bool = False
    idle: bool = True
    evicted: bool = False


class HttpServer:
    """Serves ``handler(Request) -> Response`` on one listening socket, TLS when a context is given.

    ``admit(request)`` (optional) judges a request on its header alone: a Response refuses it before its
    body is read; None admits it (and the connection stops counting as a stranger's).
    ``peer_allowed(sock)`` (optional) is asked at accept; False closes the connection at once.
    """

    def __init__(
        self,
        handler: Callable[[Request], Response],
        listener: socket.socket,
        ssl_context: ssl.SSLContext | None,
        limits: Limits = Limits(),
        *,
        admit: Callable[[Request], Response | None] | None = None,
        peer_allowed: Callable[[socket.socket], bool] | None = None,
    ) -> None:
        self._handler = handler
        self._admit = admit
        self._peer_allowed = peer_allowed
        self._listener = listener
        self._ssl = ssl_context
        self._limits = limits
        self._date = _DateCache()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, _Connection] = {}  # by raw socket
        self._threads: set[threading.Thread] = set()
        self._accept_thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self.refused_peers = 0  # connections closed at accept by peer_allowed (monitoring, tests)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return host, port

    def connection_count(self) -> int:
        """Open connections not yet evicted (for monitoring and tests)."""
        with self._lock:
            return sum(not c.evicted for c in self._connections.values())

    def start(self) -> None:
        self._accept_thread = threading.Thread(target=self._accept_loop, name="accept", daemon=True)
        self._accept_thread.start()
        self._watchdog = threading.Thread(target=self._watch_deadlines, name="deadlines", daemon=True)
        self._watchdog.start()

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, close idle keep-alive connections, give in-flight requests ``grace`` seconds."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(2)
        deadline = time.monotonic() + grace
        while True:
            with self._lock:
                for conn in self._connections.values():
                    if conn.idle:
                        _shutdown_quietly(conn.raw)
                threads = list(self._threads)
            if not threads or time.monotonic() >= deadline:
                break
            threads[0].join(min(0.05, max(0.0, deadline - time.monotonic())))
        with self._lock:
            for conn in self._connections.values():
                _shutdown_quietly(conn.raw)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.01)  # e.g. EMFILE: back off instead of spinning
                continue
            if self._peer_allowed is not None and not self._peer_allowed(sock):
                sock.close()
                self.refused_peers += 1
                continue
            now = time.monotonic()
            conn = _Connection(sock, now, now + self._limits.first_request_timeout, self._admit is None)
            with self._lock:
                admitted = self._make_room()
                if admitted:
                    thread = threading.Thread(target=self._serve_connection, args=(conn,), daemon=True)
                    self._threads.add(thread)
                    self._connections[sock] = conn
            if not admitted:
                sock.close()
                continue
            thread.start()

    def _make_room(self) -> bool:
        """Under the lock: evict the oldest stranger when strangers or connections are at their cap."""
        live = [c for c in self._connections.values() if not c.evicted]
        strangers = [c for c in live if not c.admitted]
        full = len(self._threads) >= self._limits.max_connections
        if len(strangers) < self._limits.max_unadmitted and not full:
            return True
        if not strangers:
            return False
        self._evict(min(strangers, key=lambda c: c.accepted))
        return True

    def _evict(self, conn: _Connection) -> None:
        conn.evicted = True
        conn.deadline = None
        _shutdown_quietly(conn.raw)

    def _watch_deadlines(self) -> None:
        """Close connections past their deadline: a blocked recv or send then returns at once."""
        while not self._stopping.wait(0.2):
            now = time.monotonic()
            with self._lock:
                for conn in self._connections.values():
                    if conn.deadline is not None and conn.deadline <= now:
                        self._evict(conn)

    def _set_deadline(self, conn: _Connection, seconds: float | None, *, idle: bool | None = None) -> None:
        """Lock-free (single attribute stores): at worst the watchdog closes a connection twice."""
        if conn.evicted:
            return
        if not conn.admitted:  # a stranger's deadline never moves: bad requests buy no time
            conn.deadline = conn.accepted + self._limits.first_request_timeout
        else:
            conn.deadline = None if seconds is None else time.monotonic() + seconds
        if idle is not None:
            conn.idle = idle

    def _serve_connection(self, conn: _Connection) -> None:
        raw = conn.raw
        sock: socket.socket = raw
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.settimeout(self._limits.handshake_timeout)
            if self._ssl is not None:
                first = raw.recv(1, socket.MSG_PEEK)
                if not first:
                    return
                if first != b"\x16":  # not a TLS handshake record: most likely plain HTTP
                    raw.sendall(
                        b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                        b"Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
                    )
                    return
                sock = self._ssl.wrap_socket(raw, server_side=True)
                conn.raw = sock  # wrap_socket detached `raw`: the watchdog and stop() must close this one
            self._serve_requests(conn, sock)
        except (OSError, ssl.SSLError, ValueError):
            pass
        except Exception:  # pragma: no cover - a bug; keep the server alive and say what happened
            log.exception("connection handler failed")
        finally:
            with self._lock:
                self._connections.pop(raw, None)
                self._threads.discard(threading.current_thread())
            _shutdown_quietly(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def _serve_requests(self, conn: _Connection, sock: socket.socket) -> None:
        buf = bytearray()
        limits = self._limits
        while not self._stopping.is_set():
            sock.settimeout(limits.idle_timeout if not buf else limits.read_timeout)
            if conn.admitted:
                wait = limits.idle_timeout if not buf else limits.request_timeout
                self._set_deadline(conn, wait, idle=True)
            try:
                request, keep_alive = self._read_request(conn, sock, buf)
            except HttpError as exc:
                body = (str(exc) + "\n").encode()
                response = Response(exc.code, body, TEXT)
                self._set_deadline(conn, limits.request_timeout)
                sock.sendall(render(response, self._date.get(), False))
                _linger(sock)
                return
            if request is None:
                return
            self._set_deadline(conn, None, idle=False)  # a handler may wait (status maxWaitSecs)
            try:
                response = self._handler(request)
            except Exception:
                log.exception("handler failed for %s %s", request.method, request.path)
                response = Response(500, b"internal server error\n", TEXT)
            keep_alive = keep_alive and not response.close and not self._stopping.is_set()
            self._set_deadline(conn, limits.request_timeout)
            sock.sendall(render(response, self._date.get(), keep_alive))
            if not keep_alive:
                return

    def _refuse_before_body(self, sock: socket.socket, response: Response) -> None:
        """Answer a refused request without reading its body, then close (the body is never buffered)."""
        sock.sendall(render(response, self._date.get(), False))
        _linger(sock)

    def _read_request(
        self, conn: _Connection, sock: socket.socket, buf: bytearray
    ) -> tuple[Request | None, bool]:
        limits = self._limits
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > limits.max_header_bytes:
                raise HttpError(431, "request header fields too large")
            try:
                data = sock.recv(16384)
            except TimeoutError:
                if buf:
                    raise HttpError(408, "request timeout") from None
                return None, False
            if not data:
                if buf:
                    raise HttpError(400, "incomplete request")
                return None, False
            if not buf and conn.admitted:
                self._set_deadline(conn, limits.request_timeout, idle=False)  # the whole request, from now
            buf += data
            if not buf.strip(b"\r\n"):
                buf.clear()  # tolerate stray CRLFs between requests (RFC 9112 2.2)
        if end > limits.max_header_bytes:
            raise HttpError(431, "request header fields too large")
        head = bytes(buf[:end])
        del buf[: end + 4]
        lines = head.lstrip(b"\r\n").split(b"\r\n")
        method, target, version = _parse_request_line(lines[0])
        headers: dict[str, str] = {}
        if len(lines) - 1 > limits.max_headers:
            raise HttpError(431, "too many header fields")
        content_lengths: set[bytes] = set()
        chunked = False
        connection_tokens: set[str] = set()
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or not set(name) <= _TOKEN_CHARS:
                raise HttpError(400, "malformed header line")
            value = value.strip(b" \t")
            if b"\r" in value or b"\n" in value or b"\x00" in value:
                raise HttpError(400, "malformed header value")
            key = name.decode("ascii").lower()
            text_value = value.decode("latin-1")
            if key == "content-length":
                content_lengths.add(value)
            elif key == "transfer-encoding":
                if value.lower() != b"chunked" or chunked:
                    raise HttpError(501, "unsupported transfer encoding")
                chunked = True
            elif key == "connection":
                connection_tokens.update(t.strip().lower() for t in text_value.split(","))
            headers.setdefault(key, text_value)
        if version == "HTTP/1.1":
            keep_alive = "close" not in connection_tokens
        else:
            keep_alive = "keep-alive" in connection_tokens
        if chunked and content_lengths:
            raise HttpError(400, "both Transfer-Encoding and Content-Length")
        if len(content_lengths) > 1:
            raise HttpError(400, "conflicting Content-Length")
        expect = headers.get("expect", "").lower()
        if expect and expect != "100-continue":
            raise HttpError(417, "expectation failed")
        if target.startswith("/"):  # origin-form, as sent: "//x" is a path here, not a host
            path, _, query = target.partition("?")
        else:
            split = urlsplit(target)
            path, query = split.path or "/", split.query
        length = 0
        if content_lengths:
            raw_length = next(iter(content_lengths))
            if not raw_length.isdigit() or len(raw_length) > 18:
                raise HttpError(400, "bad Content-Length")
            length = int(raw_length)
        if self._admit is not None and (length or chunked or not conn.admitted):
            refusal = self._admit(Request(method, path, query, headers))
            if refusal is not None:
                if length or chunked:
                    self._refuse_before_body(sock, refusal)
                    return None, False
            else:
                conn.admitted = True
        body = b""
        if content_lengths:
            if length > limits.max_body_bytes:
                raise HttpError(413, f"request body too large (limit {limits.max_body_bytes} bytes)")
            if expect and length > len(buf):
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = self._read_exact(sock, buf, length)
        elif chunked:
            if expect:
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = self._read_chunked(sock, buf)
        return Request(method, path, query, headers, body), keep_alive

    def _fill(self, sock: socket.socket, buf: bytearray, want: int) -> None:
        while len(buf) < want:
            try:
                data = sock.recv(max(65536, want - len(buf)))
            except TimeoutError:
                raise HttpError(408, "request timeout") from None
            if not data:
                raise HttpError(400, "incomplete request body")
            buf += data

    def _read_exact(self, sock: socket.socket, buf: bytearray, length: int) -> bytes:
        self._fill(sock, buf, length)
        body = bytes(buf[:length])
        del buf[:length]
        return body

    def _read_chunked(self, sock: socket.socket, buf: bytearray) -> bytes:
        body = bytearray()
        limit = self._limits.max_body_bytes
        while True:
            while b"\r\n" not in buf:
                if len(buf) > 4096:
                    raise HttpError(400, "malformed chunk size")
                self._fill(sock, buf, len(buf) + 1)
            line_end = buf.find(b"\r\n")
            size_text = bytes(buf[:line_end]).split(b";", 1)[0].strip()
            del buf[: line_end + 2]
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HttpError(400, "malformed chunk size") from None
            if size < 0 or len(body) + size > limit:
                raise HttpError(413, f"request body too large (limit {limit} bytes)")
            if size == 0:
                while True:  # trailers, ignored, until the empty line
                    while b"\r\n" not in buf:
                        if len(buf) > 4096:
                            raise HttpError(400, "malformed trailer")
                        self._fill(sock, buf, len(buf) + 1)
                    line_end = buf.find(b"\r\n")
                    del buf[: line_end + 2]
                    if line_end == 0:
                        return bytes(body)
            self._fill(sock, buf, size + 2)
            if buf[size : size + 2] != b"\r\n":
                raise HttpError(400, "malformed chunk")
            body += buf[:size]
            del buf[: size + 2]


def _parse_request_line(line: bytes) -> tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not set(method) <= _TOKEN_CHARS:
        raise HttpError(400, "malformed method")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if version.startswith(b"HTTP/"):
            raise HttpError(505, "unsupported protocol version")
        raise HttpError(400, "malformed request line")
    if any(c <= 0x20 or c >= 0x7F for c in target):
        raise HttpError(400, "malformed request target")
    if not (target.startswith(b"/") or target.startswith(b"http://") or target.startswith(b"https://")):
        raise HttpError(400, "malformed request target")
    return method.decode("ascii"), target.decode("ascii"), version.decode("ascii")


def _linger(sock: socket.socket, limit: int = 8 * 1024 * 1024, quiet: float = 0.5) -> None:
    """Read and drop what the client is still sending (bounded), so it gets to read our error reply."""
    sock.settimeout(quiet)
    dropped = 0
    try:
        while dropped < limit:
            data = sock.recv(65536)
            if not data:
                return
            dropped += len(data)
    except (OSError, ValueError):
        return


def _shutdown_quietly(sock: socket.socket) -> None:
    try:
        if isinstance(sock, ssl.SSLSocket):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        else:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass


def make_server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """TLS 1.3 only, no client certificates, HTTP/1.1 via ALPN."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; ``host`` empty means every address (IPv6 dual-stack where available)."""
    if not host:
        try:
            sock = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=1024)
        except (OSError, ValueError):
            sock = socket.create_server(("", port), backlog=1024)
    else:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        sock = socket.create_server(address[:2], family=family, backlog=1024)
    return sock
