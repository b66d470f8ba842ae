"""Our ``--mock`` server under the request sequence of upstream's regression script (issue 12.5).

nnf-dm's ``daemons/copy-offload-testing/e2e-mocked.sh`` starts ``nnf-copy-offload -mock`` (TLS and token
each on or off) with NNF_NODE_NAME=rabbit01 and drives it with curl and the C library's tester. Here the
same requests go to our server, in the same order, in all four modes: curl steps with the real curl, the
tester's steps as the requests libcopyoffload sends, each checked as the script checks it.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from copyoffload import certs, tokens

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (the script's own client)")


@dataclass
class Mock:
    port: int
    tls: bool
    token: str | None
    cert: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://localhost:{self.port}"

    def curl(self, path: str, *extra: str, with_cert: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["curl", "-sS", "-H", "Accepts-version: 1.0"]
        if self.token:
            argv += ["-H", f"Authorization: Bearer {self.token}"]
        if self.tls and with_cert:
            argv += ["--cacert", str(self.cert)]
        return subprocess.run([*argv, *extra, self.url + path], capture_output=True, text=True, timeout=30)

    def tester(self, method: str, path: str, body: dict[str, object] | None = None) -> tuple[int, str]:
        """One request as libcopyoffload sends it; returns the status and the body the tester prints."""
        if self.tls:
            ctx = ssl.create_default_context(cafile=str(self.cert))
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "localhost", self.port, timeout=10, context=ctx
            )
        else:
            conn = http.client.HTTPConnection("localhost", self.port, timeout=10)
        headers = {"Accepts-version": "1.0"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, path, body=json.dumps(body) if body else None, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read().decode().removesuffix("\n")
        finally:
            conn.close()


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, str]:
    out = tmp_path_factory.mktemp("mock-certs")
    cert, key = certs.make_site_certificate(out, ["localhost"], ["127.0.0.1"])
    token_key = out / "token_key.pem"
    tokens.write_key_file(token_key)
    return cert, key, token_key, tokens.mint_token(token_key.read_bytes())  # as make-jwt: no wf claim


@contextmanager
def mock_server(secrets: tuple[Path, Path, Path, str], *, tls: bool, token: bool) -> Iterator[Mock]:
    cert, key, token_key, jwt = secrets
    ready = cert.parent / f"ready-{tls}-{token}.json"
    ready.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "copyoffload.cli", "server", "-addr", "localhost:0", "-mock"]
    argv += ["--ready-file", str(ready)]  # port 0 and a ready file: no race for a fixed port
    argv += ["-tokenkey", str(token_key)] if token else ["-skip-token"]
    argv += ["-cert", str(cert), "-cakey", str(key)] if tls else ["-skip-tls"]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "NNF_NODE_NAME": "rabbit01",
        "ENVIRONMENT": "test",
        "DW_WORKFLOW_NAME": "yellow",
        "DW_WORKFLOW_NAMESPACE": "default",
    }
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the mock server did not start"
        time.sleep(0.05)
    mock = Mock(int(json.loads(ready.read_text())["port"]), tls, jwt if token else None, cert, proc)
    try:
        # The script's wait loop: curl /hello until it answers.
        for _ in range(100):
            if mock.curl("/hello").stdout == "hello back at ya\n":
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        yield mock
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("token", [True, False], ids=["token", "skip-token"])
@pytest.mark.parametrize("tls", [True, False], ids=["tls", "skip-tls"])
def test_e2e_mocked_sequence_passes(secrets: tuple[Path, Path, Path, str], tls: bool, token: bool) -> None:
    with mock_server(secrets, tls=tls, token=token) as mock:
        assert mock.curl("/hello").stdout.rstrip("\n") == "hello back at ya"
        assert mock.tester("GET", "/hello") == (200, "hello back at ya")
        assert mock.tester("GET", "/list") == (200, "")
        code, text = mock.tester("DELETE", "/cancel/nnf-copy-offload-node-2")
        assert code != 200 and text == "unable to cancel request: request not found"
        copy = {
            "computeName": socket.gethostname(),
            "sourcePath": "/mnt/nnf/ooo",
            "destinationPath": "/lus/foo",
            "dryrun": False,
            "dcpOptions": "",
            "logStdout": True,
            "storeStdout": False,
            "slots": -1,
            "maxSlots": -1,
            "dmProfile": "",
        }
        code, text = mock.tester("POST", "/trial", copy)
        assert (code, text) == (200, "name=mock-rabbit-01--nnf-copy-offload-node-0")
        job1 = text.removeprefix("name=")
        code, text = mock.tester("GET", f"/status/{job1}?maxWaitSecs=-1")  # answered at once by the mock
        assert code == 200 and json.loads(text)["state"] in ("starting", "running")
        code, text = mock.tester("GET", "/list")
        assert code == 200 and len(text.splitlines() or [""]) == 1
        assert mock.tester("DELETE", f"/cancel/{job1}") == (200, "")
        assert mock.tester("GET", "/list") == (200, "")
        if tls:
            assert mock.curl("/hello", with_cert=False).returncode != 0
            with pytest.raises(ssl.SSLCertVerificationError):
                ssl.create_default_context().wrap_socket(
                    socket.create_connection(("localhost", mock.port), timeout=10),
                    server_hostname="localhost",
                )
        shutdown = mock.curl("/shutdown", "-X", "POST")
        assert (shutdown.returncode, shutdown.stdout) == (0, "Server shutting down\n")
        assert mock.proc.wait(15) == 0


def test_mock_accepts_any_profile_and_names_requests_for_mock_rabbit_01(
    secrets: tuple[Path, Path, Path, str],
) -> None:
    with mock_server(secrets, tls=False, token=True) as mock:
        body = {
            "computeName": "c",
            "sourcePath": "/a",
            "destinationPath": "/b",
            "dmProfile": "no-such-profile",
        }
        assert mock.tester("POST", "/trial", body) == (200, "name=mock-rabbit-01--nnf-copy-offload-node-0")
        assert mock.tester("POST", "/trial", body) == (200, "name=mock-rabbit-01--nnf-copy-offload-node-1")
