"""Per-workflow signing keys and bearer tokens, in nnf-dm's format.

Upstream (nnf-sos at Setup) makes an ECDSA P-521 key, stores it PKCS#8 in a PEM block labelled
``EC PRIVATE KEY`` and uses the DER bytes inside that PEM (not the PEM text) as the HMAC secret of
an HS256 JWT with claims ``{"sub": "user-container", "iat": <unix time>}``.

We keep that format so upstream servers accept our tokens and ours accept upstream's, and add one
safe refinement: tokens we mint carry a ``wf`` claim naming their workflow. A server that knows its
workflow (``DW_WORKFLOW_NAME``) refuses a token whose ``wf`` names another one; a token without
``wf`` (minted upstream) is still accepted, since the key alone already binds it to one workflow.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import time
from collections import OrderedDict
from pathlib import Path
from threading import Lock
from typing import Any

from copyoffload.gojson import GoJsonError, GoNumber, unmarshal

SUBJECT = "user-container"
ALGORITHM = "HS256"
PEM_LABEL = "EC PRIVATE KEY"
UNEXPECTED_METHOD = "token is unverifiable: error while executing keyfunc: unexpected signing method"


class TokenError(Exception):
    """A token was refused; ``str(err)`` is the reason the server puts after ``token parse failed: ``."""


class KeyFileError(Exception):
    """A key file could not be read or decoded."""


def new_workflow_key() -> bytes:
    """Return a fresh per-workflow signing key as PEM text (bytes), upstream's format."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP521R1())
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem_wrap(der, PEM_LABEL)


def pem_wrap(der: bytes, label: str) -> bytes:
    b64 = base64.b64encode(der).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return ("-----BEGIN {}-----\n{}\n-----END {}-----\n".format(label, "\n".join(lines), label)).encode(
        "ascii"
    )


def secret_from_pem(key_pem: bytes | str) -> bytes:
    """The HMAC secret: DER bytes of the first PEM block, whatever its label (as Go's pem.Decode)."""
    text = key_pem.decode("ascii", "replace") if isinstance(key_pem, bytes) else key_pem
    begin = text.find("-----BEGIN ")
    if begin < 0:
        raise KeyFileError("no PEM block found in the token key")
    header_end = text.find("-----", begin + 11)
    if header_end < 0:
        raise KeyFileError("malformed PEM header in the token key")
    label = text[begin + 11 : header_end]
    body_start = header_end + 5
    end = text.find(f"-----END {label}-----", body_start)
    if end < 0:
        raise KeyFileError("PEM block in the token key has no END line")
    body = "".join(text[body_start:end].split())
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError(f"PEM block in the token key is not valid base64: {exc}") from None
    if not der:
        raise KeyFileError("PEM block in the token key is empty")
    return der


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"unable to read token key {path}: {exc.strerror or exc}") from None
    secret_from_pem(data)
    return data


def write_key_file(path: str | os.PathLike[str], key_pem: bytes | None = None) -> bytes:
    """Write a (new) workflow key to ``path`` with mode 0600, created that way (never briefly readable)."""
    pem = key_pem if key_pem is not None else new_workflow_key()
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return pem


def mint_token(key_pem: bytes | str, workflow: str | None = None, *, now: int | None = None) -> str:
    """Sign a token with a workflow key: HS256, ``sub``/``iat`` (+ ``wf`` when a workflow is given)."""
    claims: dict[str, Any] = {"sub": SUBJECT, "iat": int(time.time() if now is None else now)}
    if workflow:
        claims["wf"] = workflow
    header = _b64encode(_compact({"alg": ALGORITHM, "typ": "JWT"}))
    payload = _b64encode(_compact(claims))
    signing_input = f"{header}.{payload}".encode("ascii")
    return f"{header}.{payload}.{_b64encode(_sign(secret_from_pem(key_pem), signing_input))}"


# HS256 is done here with the standard library rather than PyJWT: upstream's HMAC secret is the DER of an
# EC private key, and PyJWT refuses HMAC secrets that look like asymmetric keys (today PEM and public-key
# DER); a stricter release would silently break compatibility with upstream tokens. The tests cross-check
# this code against PyJWT.


def _compact(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """base64.RawURLEncoding.DecodeString: CR/LF skipped, errors name the byte as Go does."""
    for index, char in enumerate(text):
        if char not in _B64URL and char not in "\r\n":
            raise ValueError(f"illegal base64 data at input byte {index}")
    data = text.replace("\r", "").replace("\n", "")
    if len(data) % 4 == 1:
        raise ValueError(f"illegal base64 data at input byte {len(text) - 1}")
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _sign(secret: bytes, signing_input: bytes) -> bytes:
    return hmac.new(secret, signing_input, hashlib.sha256).digest()


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


# golang-jwt v5 registers these; any other alg is "unavailable" before the key is even looked up.
_REGISTERED_METHODS = frozenset(
    {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"}
    | {"PS256", "PS384", "PS512", "EdDSA", "none"}
)


def _decode_part(text: str, what: str, go_type: str) -> dict[str, Any]:
    """One segment as golang-jwt's ParseUnverified decodes it (a JSON null is an empty map in Go)."""
    try:
        raw = _b64decode(text)
    except ValueError as exc:
        raise TokenError(f"token is malformed: could not base64 decode {what}: {exc}") from None
    try:
        value = unmarshal(raw)
    except GoJsonError as exc:
        raise TokenError(f"token is malformed: could not JSON decode {what}: {exc}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        kind = "number" if isinstance(value, GoNumber) else _kind(value)
        raise TokenError(
            f"token is malformed: could not JSON decode {what}: json: cannot unmarshal {kind} "
            f"into Go value of type {go_type}"
        )
    return value


def _number(literal: GoNumber) -> int | float:
    return int(literal) if literal.lstrip("-").isdigit() else float(literal)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    return "array"


class TokenVerifier:
    """Checks bearer tokens against one workflow key; remembers recent good tokens (bounded) to save work.

    Messages follow golang-jwt v5 (what upstream's server prints), so clients see the same text.
    """

    def __init__(self, key_pem: bytes | str, workflow: str | None = None, *, cache_size: int = 256) -> None:
        self._secret = secret_from_pem(key_pem)
        self._workflow = workflow or None
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = Lock()

    def verify(self, token: str) -> dict[str, Any]:
        with self._lock:
            hit = self._cache.get(token)
            if hit is not None:
                self._cache.move_to_end(token)
        if hit is not None:
            _check_times(hit)
            return hit
        claims = self._verify_fully(token)
        with self._lock:
            self._cache[token] = claims
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return claims

    def _verify_fully(self, token: str) -> dict[str, Any]:
        """Check as golang-jwt v5 does: segments, header, claims, alg, signature, key, exp/nbf; then wf."""
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("token is malformed: token contains an invalid number of segments")
        header = _decode_part(parts[0], "header", "map[string]interface {}")
        claims = _decode_part(parts[1], "claim", "jwt.MapClaims")
        alg = header.get("alg")
        if not isinstance(alg, str) or isinstance(alg, GoNumber):
            raise TokenError("token is unverifiable: signing method (alg) is unspecified")
        if alg not in _REGISTERED_METHODS:
            raise TokenError("token is unverifiable: signing method (alg) is unavailable")
        try:
            signature = _b64decode(parts[2])
        except ValueError as exc:
            raise TokenError(f"token is malformed: could not base64 decode signature: {exc}") from None
        if alg != ALGORITHM:
            raise TokenError(UNEXPECTED_METHOD)
        expected = _sign(self._secret, f"{parts[0]}.{parts[1]}".encode("ascii"))
        if not hmac.compare_digest(signature, expected):
            raise TokenError("token signature is invalid: signature is invalid")
        _check_times(claims)
        wf = claims.get("wf")
        if wf is not None and self._workflow is not None and wf != self._workflow:
            raise TokenError("token has invalid claims: token is for another workflow")
        return {
            key: _number(value) if isinstance(value, GoNumber) else value for key, value in claims.items()
        }


def verify_token(token: str, key_pem: bytes | str, workflow: str | None = None) -> dict[str, Any]:
    """Return the claims of a good token; raise TokenError (reason text as upstream) otherwise."""
    return TokenVerifier(key_pem, workflow, cache_size=0)._verify_fully(token)


def _numeric_date(claims: dict[str, Any], name: str) -> tuple[float | None, str | None]:
    """MapClaims.parseNumericDate: absent or 0 is no date; a non-number is ``<name> is invalid``."""
    if name not in claims:
        return None, None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, GoNumber | int | float):
        return None, f"invalid type for claim: {name} is invalid"
    seconds = float(value)
    return (None, None) if seconds == 0 else (float(math.floor(seconds)), None)


def _check_times(claims: dict[str, Any]) -> None:
    """Validator.Validate: every problem found, joined with ", " as Go's joinedError prints them."""
    now = time.time()
    problems: list[str] = []
    exp, bad = _numeric_date(claims, "exp")
    if bad:
        problems.append(bad)
    elif exp is not None and not now < exp:
        problems.append("token is expired")
    nbf, bad = _numeric_date(claims, "nbf")
    if bad:
        problems.append(bad)
    elif nbf is not None and now < nbf:
        problems.append("token is not valid yet")
    if problems:
        raise TokenError("token has invalid claims: " + ", ".join(problems))
