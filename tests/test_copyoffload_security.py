# ruff: noqa: F811  (pytest fixtures are imported from test_copyoffload_support by name)
"""Refusals: bad tokens of every kind, plain HTTP to the TLS port, TLS 1.2, wrong CA; secrets' modes."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import stat
import time
from pathlib import Path

import jwt
import pytest

from copyoffload import certs, tokens
from tests.test_copyoffload_support import (  # noqa: F401  (fixtures)
    WORKFLOW,
    Running,
    Tls,
    raw_exchange,
    running_server,
    server,
    tls,
    token,
    workflow_key,
)

UNEXPECTED_METHOD = (
    b"token parse failed: token is unverifiable: error while executing keyfunc: unexpected signing method\n"
)
BAD_SIGNATURE = b"token parse failed: token signature is invalid: signature is invalid\n"


def secret(key: Path) -> bytes:
    return tokens.secret_from_pem(key.read_bytes())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hello_with(server: Running, authorization: str | None) -> tuple[int, bytes]:
    code, body, _ = server.request(
        "GET", "/hello", token=authorization if authorization is not None else None
    )
    return code, body


def test_no_token_is_401_unauthorized(server: Running) -> None:
    assert hello_with(server, None) == (401, b"unauthorized\n")


def test_empty_authorization_header_is_401_unauthorized(server: Running) -> None:
    assert hello_with(server, "") == (401, b"unauthorized\n")


def test_token_signed_with_another_workflows_key_is_refused(server: Running) -> None:
    other = tokens.mint_token(tokens.new_workflow_key(), WORKFLOW)
    assert hello_with(server, "Bearer " + other) == (401, BAD_SIGNATURE)


def test_hs512_token_is_refused_as_unexpected_signing_method(server: Running, workflow_key: Path) -> None:
    forged = jwt.encode(
        {"sub": "user-container", "iat": int(time.time())}, secret(workflow_key), algorithm="HS512"
    )
    assert hello_with(server, "Bearer " + forged) == (401, UNEXPECTED_METHOD)


def test_alg_none_token_is_refused(server: Running) -> None:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"sub": "user-container", "iat": int(time.time())}).encode())
    for forged in (f"{header}.{claims}.", f"{header}.{claims}"):
        code, body = hello_with(server, "Bearer " + forged)
        assert code == 401 and body.startswith(b"token parse failed: ")


def test_alg_none_with_three_parts_says_unexpected_signing_method(server: Running) -> None:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"sub": "user-container"}).encode())
    assert hello_with(server, f"Bearer {header}.{claims}.") == (401, UNEXPECTED_METHOD)


def test_tampered_signature_is_refused(server: Running, token: str) -> None:
    head, claims, sig = token.split(".")
    flipped = sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB")
    assert hello_with(server, f"Bearer {head}.{claims}.{flipped}") == (401, BAD_SIGNATURE)


def test_tampered_claims_are_refused(server: Running, token: str) -> None:
    head, _, sig = token.split(".")
    claims = b64(json.dumps({"sub": "root", "iat": 1}).encode())
    assert hello_with(server, f"Bearer {head}.{claims}.{sig}") == (401, BAD_SIGNATURE)


def test_expired_token_is_refused(server: Running, workflow_key: Path) -> None:
    expired = jwt.encode(
        {"sub": "user-container", "iat": 1, "exp": int(time.time()) - 10}, secret(workflow_key)
    )
    assert hello_with(server, "Bearer " + expired) == (
        401,
        b"token parse failed: token has invalid claims: token is expired\n",
    )


def test_token_not_yet_valid_is_refused(server: Running, workflow_key: Path) -> None:
    early = jwt.encode({"sub": "user-container", "nbf": int(time.time()) + 3600}, secret(workflow_key))
    expected = b"token parse failed: token has invalid claims: token is not valid yet\n"
    assert hello_with(server, "Bearer " + early) == (401, expected)


def test_unexpired_token_with_exp_is_accepted(server: Running, workflow_key: Path) -> None:
    fresh = jwt.encode({"sub": "user-container", "exp": int(time.time()) + 3600}, secret(workflow_key))
    assert hello_with(server, "Bearer " + fresh)[0] == 200


def test_token_bound_to_another_workflow_is_refused(server: Running, workflow_key: Path) -> None:
    other_wf = tokens.mint_token(workflow_key.read_bytes(), "bb999")
    expected = b"token parse failed: token has invalid claims: token is for another workflow\n"
    assert hello_with(server, "Bearer " + other_wf) == (401, expected)


def test_upstream_token_without_wf_claim_is_accepted(server: Running, workflow_key: Path) -> None:
    upstream = jwt.encode(
        {"sub": "user-container", "iat": int(time.time())}, secret(workflow_key), algorithm="HS256"
    )
    assert hello_with(server, "Bearer " + upstream) == (200, b"hello back at ya\n")


def test_garbage_token_is_malformed(server: Running) -> None:
    code, body = hello_with(server, "Bearer not-a-jwt")
    assert code == 401 and body.startswith(b"token parse failed: token is malformed") and body.endswith(b"\n")


def test_lowercase_bearer_prefix_is_not_stripped(server: Running, token: str) -> None:
    # Upstream strips only "Bearer"; "bearer <t>" is not a token.
    assert hello_with(server, "bearer " + token)[0] == 401


def test_token_of_a_torn_down_workflow_is_refused_by_its_next_server(
    tls: Tls, tmp_path: Path, token: str
) -> None:
    # A new key for the same workflow name (the old one deleted at teardown) invalidates old tokens.
    new_key = tmp_path / "new.pem"
    tokens.write_key_file(new_key)
    with running_server(tls=tls, key=new_key, token=token) as srv:
        assert srv.request("GET", "/hello")[:2] == (401, BAD_SIGNATURE)


def test_skip_token_server_needs_no_token(tls: Tls) -> None:
    with running_server(tls=tls, key=None) as srv:
        assert srv.request("GET", "/hello", token=None)[:2] == (200, b"hello back at ya\n")


def test_plain_http_to_the_tls_port_is_refused(server: Running, token: str) -> None:
    reply = raw_exchange(
        server.port,
        b"GET /hello HTTP/1.1\r\nHost: x\r\nAccepts-version: 1.0\r\n"
        + f"Authorization: Bearer {token}\r\n\r\n".encode(),
    )
    assert reply.startswith(b"HTTP/1.0 400 Bad Request")
    assert b"hello back at ya" not in reply
    assert server.request("GET", "/hello")[0] == 200


def test_tls_1_2_only_client_is_refused(server: Running, tls: Tls) -> None:
    ctx = ssl.create_default_context(cafile=str(tls.cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, pytest.raises(ssl.SSLError):
        ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    assert server.request("GET", "/hello")[0] == 200


def test_tls_1_3_is_negotiated(server: Running, tls: Tls) -> None:
    ctx = ssl.create_default_context(cafile=str(tls.cert))
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        assert s.version() == "TLSv1.3"


def test_client_with_another_ca_cannot_connect(server: Running, tmp_path: Path) -> None:
    other_cert, _ = certs.make_site_certificate(tmp_path, ["localhost"], ["127.0.0.1"])
    ctx = ssl.create_default_context(cafile=str(other_cert))
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def test_workflow_key_file_is_0600_and_in_upstream_format(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    pem = tokens.write_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pem.startswith(b"-----BEGIN EC PRIVATE KEY-----\n")
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_der_private_key

    key = load_der_private_key(tokens.secret_from_pem(pem), None)  # PKCS#8 DER inside
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp521r1"


def test_site_tls_key_is_0600(tmp_path: Path) -> None:
    cert, key = certs.make_site_certificate(tmp_path, ["rabbit-0"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert.stat().st_mode) == 0o644


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal is for a server running as root")
def test_root_server_refuses_a_uid_without_its_gid(tls: Tls, workflow_key: Path) -> None:
    """Copies as the user with group 0 (and root's groups) would reach more than the user may."""
    from copyoffload.server.app import CopyOffloadServer, ServerConfig, ServerConfigError

    config = ServerConfig(
        addr="127.0.0.1:0", cert=str(tls.cert), cakey=str(tls.key), tokenkey=str(workflow_key), uid=1000
    )
    with pytest.raises(ServerConfigError, match="--gid"):
        CopyOffloadServer(config)
