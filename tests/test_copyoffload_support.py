"""Shared fixtures for the copy-offload tests: real TLS material, real servers on 127.0.0.1, raw HTTP.

(No tests here; imported by the test_copyoffload_* modules.)
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from copyoffload import certs, tokens
from copyoffload.jobs import CopyAborted, CopyRequest, Profile, Progress
from copyoffload.server.app import CopyOffloadServer, ServerConfig

WORKFLOW = "bb42"


@dataclass(frozen=True)
class Tls:
    cert: Path
    key: Path


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    out = tmp_path_factory.mktemp("tls")
    cert, key = certs.make_site_certificate(out, ["localhost"], ["127.0.0.1"])
    return Tls(cert, key)


@pytest.fixture(scope="session")
def workflow_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wfkey") / "token_key.pem"
    tokens.write_key_file(path)
    return path


@pytest.fixture(scope="session")
def token(workflow_key: Path) -> str:
    return tokens.mint_token(workflow_key.read_bytes(), WORKFLOW)


class GatedCopier:
    """A copier under the test's control: each job reports 42 % and runs until released or cancelled."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.fail_with: str | None = None

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
        progress(Progress(percent=42, bytes_done=42, bytes_total=100, files_done=1, files_total=2))
        self.started.release()
        while not self.release.wait(0.05):
            if cancel.is_set():
                raise CopyAborted()
        if self.fail_with:
            from copyoffload.jobs import CopyFailed

            raise CopyFailed(self.fail_with)
        return "copied by the gate"


@dataclass
class Running:
    server: CopyOffloadServer
    tls: Tls | None
    token: str | None
    copier: GatedCopier | None
    _conns: list[http.client.HTTPConnection] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port

    def connect(self, host: str = "127.0.0.1") -> http.client.HTTPConnection:
        if self.tls is None:
            conn: http.client.HTTPConnection = http.client.HTTPConnection(host, self.port, timeout=30)
        else:
            conn = http.client.HTTPSConnection(host, self.port, timeout=30, context=client_context(self.tls))
        self._conns.append(conn)
        return conn

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        *,
        token: str | bool | None = True,
        version: str | None = "1.0",
        headers: dict[str, str] | None = None,
        conn: http.client.HTTPConnection | None = None,
    ) -> tuple[int, bytes, http.client.HTTPResponse]:
        """One request; ``token=True`` sends ``Bearer <the good token>``, a string sends that header value."""
        h: dict[str, str] = {}
        if token is True and self.token:
            h["Authorization"] = "Bearer " + self.token
        elif isinstance(token, str):
            h["Authorization"] = token
        if version is not None:
            h["Accepts-version"] = version
        h.update(headers or {})
        c = conn or self.connect()
        c.request(method, path, body=body, headers=h)
        resp = c.getresponse()
        data = resp.read()
        if conn is None:
            c.close()
        return resp.status, data, resp

    def trial(self, source: str = "/src", dest: str = "/dest", **fields: Any) -> str:
        import json

        body = {"computeName": "compute-0", "sourcePath": source, "destinationPath": dest, **fields}
        code, data, _ = self.request("POST", "/trial", json.dumps(body))
        assert code == 200, data
        assert data.startswith(b"name=") and data.endswith(b"\n")
        return data[5:-1].decode()

    def close(self) -> None:
        for c in self._conns:
            c.close()


def client_context(tls: Tls) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(tls.cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


@contextmanager
def running_server(
    *,
    tls: Tls | None,
    key: Path | None,
    token: str | None = None,
    gated: bool = True,
    copier: Any = None,
    **config: Any,
) -> Iterator[Running]:
    gate = GatedCopier() if gated and copier is None else None
    cfg = ServerConfig(
        addr="127.0.0.1:0",
        cert=str(tls.cert) if tls else None,
        cakey=str(tls.key) if tls else None,
        tokenkey=str(key) if key else None,
        skip_tls=tls is None,
        skip_token=key is None,
        workflow=config.pop("workflow", WORKFLOW),
        node=config.pop("node", "rabbit-0"),
        uid=config.pop("uid", os.getuid()),
        gid=config.pop("gid", os.getgid()),
        **config,
    )
    server = CopyOffloadServer(cfg, copier=copier or gate)
    server.start()
    running = Running(server, tls, token, gate)
    try:
        yield running
    finally:
        if gate is not None:
            gate.release.set()
        running.close()
        server.stop(grace=2)


@pytest.fixture
def server(tls: Tls, workflow_key: Path, token: str) -> Iterator[Running]:
    """A TLS + token server whose copies are gated (they run until the test releases them)."""
    with running_server(tls=tls, key=workflow_key, token=token) as running:
        yield running


def raw_exchange(port: int, data: bytes, *, tls: Tls | None = None, timeout: float = 10) -> bytes:
    """Send raw bytes, read until the server closes or stays quiet; return what came back."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls is not None:
        sock = client_context(tls).wrap_socket(sock, server_hostname="127.0.0.1")
    try:
        sock.sendall(data)
        chunks = []
        sock.settimeout(1.0)
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ssl.SSLError, OSError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        sock.close()
