# ruff: noqa: F401, F811  (pytest fixtures are imported from test_copyoffload_support by name)
"""Bad input never crashes the server: 10,000 random requests on the wire, plus property tests."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import ssl
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from copyoffload.jobs import CopyRequest, JobTable, Profiles, mock_copier
from copyoffload.server.auth import Authenticator
from copyoffload.server.bodies import BodyError, Request, decode_copy_request
from copyoffload.server.routes import CopyOffloadApi
from tests.test_copyoffload_support import (
    Running,
    Tls,
    client_context,
    running_server,
    tls,
    token,
    workflow_key,
)

METHODS = ["GET", "POST", "DELETE", "PUT", "HEAD", "OPTIONS", "PATCH", "get", "G\x00T", "", "BREW"]
PATHS = [
    "/hello",
    "/trial",
    "/list",
    "/shutdown",
    "/status/",
    "/status/x?maxWaitSecs=0",
    "/status/../../etc/passwd?maxWaitSecs=0",
    "/status/%2e%2e%2f%2e%2e%2fetc?maxWaitSecs=0",
    "/cancel/../../../root",
    "/status/name?maxWaitSecs=99999999999999999999999",
    "/status/name?maxWaitSecs=-0",
    "/status/name?maxWaitSecs=1&maxWaitSecs=2&x",
    "//hello",
    "/hello?%zz",
    "*",
    "http://h/hello",
    "/" + "a" * 5000,
    "/\u00e9",
]
BODIES = [
    b"",
    b"{",
    b"null",
    b"[]",
    b'{"computeName":"c","sourcePath":"/a","destinationPath":"/b","dryrun":true}',
    b'{"computeName":"c","sourcePath":"/a","destinationPath":"/b","slots":-5}',
    b'{"computeName":1e999}',
    b'{"a":' * 5000,
    b"\xff\xfe\x00garbage",
    b'{"computeName":"\\ud800"}',
]


def random_request(rng: random.Random, token: str, *, short_bodies: bool = True) -> tuple[bytes, bool]:
    """A random request, and whether the server will wait for more body than was sent (send EOF then)."""
    method = rng.choice(METHODS)
    path = (
        rng.choice(PATHS) if rng.random() < 0.8 else "/" + "".join(rng.choice("ab/.%?=&") for _ in range(20))
    )
    headers = []
    if rng.random() < 0.7:
        headers.append(
            ("Authorization", rng.choice([f"Bearer {token}", token, "Bearer x.y.z", "Bearer", ""]))
        )
    if rng.random() < 0.7:
        headers.append(("Accepts-version", rng.choice(["1.0", "1.1", "", "1.0, 2.0"])))
    body = (
        rng.choice(BODIES)
        if rng.random() < 0.5
        else bytes(rng.getrandbits(8) for _ in range(rng.randrange(64)))
    )
    style = rng.random()
    short = False
    if style < 0.6:
        headers.append(("Content-Length", str(len(body))))
    elif style < 0.7:
        headers.append(("Transfer-Encoding", "chunked"))
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    elif style < 0.8:
        choices = ["-1", "abc", "99999999999", "5, 6"] + ([str(len(body) + 3)] if short_bodies else [])
        length = rng.choice(choices)
        short = length == str(len(body) + 3)
        headers.append(("Content-Length", length))
    elif style < 0.9:
        headers.append((rng.choice(["X Bad", "", ":", "Héader"]), "v"))
    head = f"{method} {path} {rng.choice(['HTTP/1.1', 'HTTP/1.1', 'HTTP/1.0', 'HTTP/2.0', 'FOO'])}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("utf-8", "surrogateescape") + b"\r\n" + body, short


def send_all(port: int, requests: list[tuple[bytes, bool]], tls_material: Tls | None) -> int:
    """Send requests on as few connections as the server allows; return how many responses came back."""
    responses = 0
    pending = list(requests)
    while pending:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if tls_material is not None:
            sock = client_context(tls_material).wrap_socket(sock, server_hostname="127.0.0.1")
        try:
            while pending:
                data, short = pending.pop()
                try:
                    sock.sendall(data)
                    if short:
                        sock.shutdown(socket.SHUT_WR)
                    reply = sock.recv(65536)
                except (OSError, ssl.SSLError):
                    break
                if not reply:
                    break
                responses += 1
                if short or b"Connection: close" in reply or not reply.startswith(b"HTTP/1.1 "):
                    break
                if b"Content-Length: 0" not in reply and reply.endswith(b"\r\n\r\n"):
                    break
        finally:
            sock.close()
    return responses


@pytest.fixture
def plain_server(workflow_key: Path, token: str) -> Running:
    with running_server(tls=None, key=workflow_key, token=token, mock=True, gated=False) as srv:
        yield srv  # type: ignore[misc]


def test_ten_thousand_random_requests_never_crash_the_server(
    plain_server: Running, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    plain_server.trial()  # a mock copy that runs until cancelled: /shutdown is refused (409) throughout
    rng = random.Random(20240605)
    requests = [random_request(rng, token) for _ in range(10_000)]
    with caplog.at_level(logging.ERROR, logger="copyoffload.server"):
        answered = send_all(plain_server.port, requests, None)
    assert answered > 5000
    assert [r for r in caplog.records if "failed" in r.getMessage()] == []
    assert plain_server.request("GET", "/hello")[:2] == (200, b"hello back at ya\n")


def test_random_requests_over_tls(tls: Tls, workflow_key: Path, token: str) -> None:
    rng = random.Random(7)
    with running_server(tls=tls, key=workflow_key, token=token, mock=True, gated=False) as srv:
        srv.trial()
        send_all(srv.port, [random_request(rng, token, short_bodies=False) for _ in range(500)], tls)
        assert srv.request("GET", "/hello")[:2] == (200, b"hello back at ya\n")


def test_truncated_and_oversized_heads_get_4xx(plain_server: Running, token: str) -> None:
    port = plain_server.port
    auth = b"Authorization: Bearer " + token.encode() + b"\r\nAccepts-version: 1.0\r\n"
    for data, code in [
        (b"GET /hello HTTP/1.1\r\n" + b"X: " + b"a" * 40000 + b"\r\n\r\n", b"431"),
        (b"GET /hello HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(200)) + b"\r\n", b"431"),
        (b"POST /trial HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", b"400"),
        (b"POST /trial HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", b"501"),
        (b"POST /trial HTTP/1.1\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\nfffffff\r\n", b"413"),
        (b"GET /hello HTTP/3.0\r\n\r\n", b"505"),
    ]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(data)
            reply = s.recv(65536)
        assert reply.split(b" ")[1] == code, reply
        assert reply.endswith(b"\n")


_settings = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_settings
@given(st.binary(max_size=512))
def test_body_decoder_only_raises_body_error(body: bytes) -> None:
    with contextlib.suppress(BodyError):
        assert isinstance(decode_copy_request(body), CopyRequest)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@_settings
@given(
    st.dictionaries(
        st.sampled_from(
            ["computeName", "sourcePath", "destinationPath", "slots", "maxSlots", "dryrun", "x", "SLOTS"]
        ),
        json_values,
    )
)
def test_any_json_object_decodes_or_is_refused_cleanly(fields: dict[str, object]) -> None:
    try:
        decode_copy_request(json.dumps(fields).encode()).validate()
    except BodyError:
        pass
    except Exception as exc:
        assert type(exc).__name__ == "RequestRejected"


@pytest.fixture(scope="module")
def api() -> CopyOffloadApi:
    table = JobTable(node="n", copier=mock_copier, uid=0, gid=0, max_active=10_000)
    return CopyOffloadApi(table, Profiles.builtin(), Authenticator(None))


@_settings
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT"]),
    path=st.one_of(
        st.sampled_from(["/hello", "/trial", "/list", "/status/x", "/cancel/x"]), st.text(max_size=40)
    ),
    query=st.text(max_size=40),
    version=st.sampled_from(["1.0", "2", ""]),
    body=st.binary(max_size=200),
)
def test_routes_answer_every_request_with_a_newline_terminated_body(
    api: CopyOffloadApi, method: str, path: str, query: str, version: str, body: bytes
) -> None:
    if path.startswith("/shutdown"):
        path = "/x"
    response = api.handle(Request(method, path, query, {"accepts-version": version}, body))
    assert 200 <= response.code < 600
    assert response.body == b"" or response.body.endswith(b"\n")
