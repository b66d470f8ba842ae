"""Request and response bodies of the v1.0 API, decoded and encoded as upstream's Go server does.

Every non-empty body ends with a newline: the upstream C client crashes on one that does not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from copyoffload.gojson import GoJsonError, GoNumber, decode_first, valid_text
from copyoffload.jobs import CopyRequest

TEXT = "text/plain; charset=utf-8"


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """First value of a header, by lower-case name (as Go's Header.Get)."""
        return self.headers.get(name)


@dataclass
class Response:
    code: int
    body: bytes = b""
    content_type: str = TEXT
    extra_headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False


def _line(message: str) -> bytes:
    body = message if message.endswith("\n") else message + "\n"
    return valid_text(body).encode("utf-8")


def text(code: int, message: str) -> Response:
    """A text/plain response whose body ends with exactly one newline (http.Error + Fprintln)."""
    return Response(code, _line(message), TEXT, [("X-Content-Type-Options", "nosniff")])


def ok_text(message: str) -> Response:
    return Response(200, _line(message))


def empty(code: int = 200) -> Response:
    return Response(code, b"")


def json_line(obj: Any) -> Response:
    """Compact JSON plus newline, HTML- and line-separator-escaped like Go's json.Encoder.

    Sent as upstream sends it, with no Content-Type of its own: Go sniffs ``text/plain; charset=utf-8``.
    """
    data = valid_text(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))
    for char, escape in _GO_ESCAPES:
        data = data.replace(char, escape)
    return Response(200, (data + "\n").encode("utf-8"), TEXT)


_GO_ESCAPES = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


# The DMRequest fields: JSON name -> (CopyRequest attribute, Go type).
_FIELDS: dict[str, tuple[str, str]] = {
    "computeName": ("compute_name", "string"),
    "workflowName": ("workflow_name", "string"),
    "workflowNamespace": ("workflow_namespace", "string"),
    "sourcePath": ("source_path", "string"),
    "destinationPath": ("destination_path", "string"),
    "dryrun": ("dryrun", "bool"),
    "dcpOptions": ("dcp_options", "string"),
    "logStdout": ("log_stdout", "bool"),
    "storeStdout": ("store_stdout", "bool"),
    "slots": ("slots", "int32"),
    "maxSlots": ("max_slots", "int32"),
    "dmProfile": ("dm_profile", "string"),
    "mpirunOptions": ("mpirun_options", "string"),
}
_FOLDED = {k.lower(): k for k in _FIELDS}


class BodyError(Exception):
    """The body is not a DMRequest; the text follows Go's encoding/json where it matters."""


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, GoNumber):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def decode_copy_request(body: bytes) -> CopyRequest:
    """Decode the first JSON value of the body like json.NewDecoder(body).Decode(&DMRequest{})."""
    try:
        value = decode_first(body)
    except GoJsonError as exc:
        raise BodyError(str(exc)) from None
    if value is None:
        return CopyRequest()
    if not isinstance(value, dict):
        raise BodyError(f"json: cannot unmarshal {_json_kind(value)} into Go value of type driver.DMRequest")
    values: dict[str, Any] = {}
    seen_exact: set[str] = set()
    for key, item in value.items():
        name = key if key in _FIELDS else _FOLDED.get(key.lower())
        if name is None:
            continue
        if name != key and name in seen_exact:
            continue
        if name == key:
            seen_exact.add(name)
        attr, go_type = _FIELDS[name]
        if item is None:
            continue
        values[attr] = _convert(item, go_type, name)
    return CopyRequest(**values)


def _convert(item: Any, go_type: str, name: str) -> Any:
    def fail() -> BodyError:
        kind = _json_kind(item)
        return BodyError(
            f"json: cannot unmarshal {kind} into Go struct field DMRequest.{name} of type {go_type}"
        )

    if go_type == "string":
        if isinstance(item, GoNumber) or not isinstance(item, str):
            raise fail()
        return valid_text(item)
    if go_type == "bool":
        if not isinstance(item, bool):
            raise fail()
        return item
    if not isinstance(item, GoNumber):
        raise fail()
    number = int(item) if item.lstrip("-").isdigit() else None
    if number is None or not -(2**31) <= number < 2**31:
        raise BodyError(
            f"json: cannot unmarshal number {item} into Go struct field DMRequest.{name} of type {go_type}"
        )
    return number
