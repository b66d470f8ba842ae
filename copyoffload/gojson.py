"""JSON decoded as Go's encoding/json decodes it: the same values, the same error texts.

Upstream's server and golang-jwt are Go; a client (or a test) sees their error texts verbatim, e.g.
``invalid character '"' after object key``. Values: invalid UTF-8 inside strings becomes U+FFFD, one per
bad byte, as Go's decoder does (Linux paths may be any bytes; the request proceeds); a ``\\ud800``
escape with no partner too. Numbers keep their literal text (:class:`GoNumber`) for Go's messages.

Valid input is parsed by Python's json (fast); only a failure runs the byte-by-byte port of Go's
scanner (scanner.go) that names the offending character and what it was looking for.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any

MAX_DEPTH = 10000


class GoJsonError(ValueError):
    """``str()`` is Go's error text."""


class GoNumber(str):
    """A JSON number, kept as its literal (Go prints it in type errors: ``number 1.5``)."""


def _per_byte_replace(exc: UnicodeError) -> tuple[str, int]:
    assert isinstance(exc, UnicodeDecodeError)
    return "\ufffd", exc.start + 1


codecs.register_error("go-replace", _per_byte_replace)

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def go_text(data: bytes) -> str:
    """UTF-8 decoded as Go ranges over a string: each invalid byte is one U+FFFD."""
    return data.decode("utf-8", "go-replace")


def valid_text(value: str) -> str:
    """Lone surrogates (a JSON ``\\ud800`` escape) become U+FFFD, as in Go."""
    return _LONE_SURROGATE.sub("\ufffd", value)


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_int=GoNumber, parse_float=GoNumber)


def decode_first(data: bytes) -> Any:
    """``json.NewDecoder(r).Decode(&v)``: the first value; what follows it is not looked at."""
    if not data.strip(b" \t\r\n"):
        raise GoJsonError("EOF")
    text = go_text(data)
    start = len(text) - len(text.lstrip(" \t\r\n"))
    try:
        value, _ = _DECODER.raw_decode(text, start)
        if not isinstance(value, GoNumber):  # Python stops a number early where Go wants more ("1.")
            return value
    except (ValueError, RecursionError):
        pass
    else:
        error, _ = _scan(data, stream=True)
        if not error:
            return value
        raise GoJsonError(error)
    error, _ = _scan(data, stream=True)
    raise GoJsonError(error or "exceeded max depth")  # valid for Go yet too deep for Python's parser


def unmarshal(data: bytes) -> Any:
    """``json.Unmarshal(data, &v)``: exactly one value, nothing but space after it."""
    text = go_text(data)
    try:
        return _DECODER.decode(text)
    except (ValueError, RecursionError):
        pass
    error, _ = _scan(data, stream=False)
    raise GoJsonError(error or "exceeded max depth")


# --- a port of Go's scanner state machine, for error texts -------------------------------------------

_SPACE = frozenset(b" \t\r\n")
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPABLE = frozenset(b'bfnrt\\/"')
_CHAR_ESCAPES = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v", 0x5C: "\\\\"}


def quote_char(c: int) -> str:
    """Go's quoteChar: the byte as the rune of the same value, strconv-quoted in single quotes."""
    if c == 0x27:
        return "'\\''"
    if c == 0x22:
        return "'\"'"
    if c in _CHAR_ESCAPES:
        return f"'{_CHAR_ESCAPES[c]}'"
    if c < 0x20 or c == 0x7F:
        return f"'\\x{c:02x}'"
    if 0x80 <= c <= 0xA0 or c == 0xAD:
        return f"'\\u{c:04x}'"
    return f"'{chr(c)}'"


class _Stop(Exception):
    def __init__(self, message: str) -> None:
        self.message = message


_LITERALS = {ord("t"): b"true", ord("f"): b"false", ord("n"): b"null"}


def _scan(data: bytes, *, stream: bool) -> tuple[str, bool]:
    """(Go's error text, whether the input ended before a value did)."""
    pos = 0
    n = len(data)
    stack: list[str] = []  # "key" (object, want key/colon), "value" (object, want value/comma), "array"

    def fail(c: int, context: str) -> _Stop:
        return _Stop(f"invalid character {quote_char(c)} {context}")

    def skip_space(i: int) -> int:
        while i < n and data[i] in _SPACE:
            i += 1
        return i

    def push(kind: str) -> None:
        stack.append(kind)
        if len(stack) > MAX_DEPTH:
            raise _Stop("exceeded max depth")

    try:
        state = "value"  # what the scanner wants next: value, value-or-close, key-or-close, key, after
        while True:
            pos = skip_space(pos)
            if pos >= n:
                break
            c = data[pos]
            if state in ("value", "value-or-close"):
                if state == "value-or-close" and c == ord("]"):
                    stack.pop()
                    pos += 1
                    state = "after"
                    continue
                if c == ord("{"):
                    push("key")
                    pos += 1
                    state = "key-or-close"
                elif c == ord("["):
                    push("array")
                    pos += 1
                    state = "value-or-close"
                elif c == ord('"'):
                    pos = _scan_string(data, pos + 1)
                    state = "after"
                elif c == ord("-") or c in _DIGITS:
                    pos = _scan_number(data, pos)
                    state = "after"
                elif c in _LITERALS:
                    pos = _scan_literal(data, pos, _LITERALS[c])
                    state = "after"
                else:
                    raise fail(c, "looking for beginning of value")
            elif state in ("key", "key-or-close"):
                if state == "key-or-close" and c == ord("}"):
                    stack.pop()
                    pos += 1
                    state = "after"
                    continue
                if c != ord('"'):
                    raise fail(c, "looking for beginning of object key string")
                pos = _scan_string(data, pos + 1)
                state = "after"
            else:  # after a value
                if not stack:
                    if stream:
                        return "", False  # the first value is complete: a Decoder stops here
                    raise fail(c, "after top-level value")
                top = stack[-1]
                pos += 1
                if top == "key":
                    if c != ord(":"):
                        raise fail(c, "after object key")
                    stack[-1] = "value"
                    state = "value"
                elif top == "value":
                    if c == ord(","):
                        stack[-1] = "key"
                        state = "key"
                    elif c == ord("}"):
                        stack.pop()
                    else:
                        raise fail(c, "after object key:value pair")
                else:
                    if c == ord(","):
                        state = "value"
                    elif c == ord("]"):
                        stack.pop()
                    else:
                        raise fail(c, "after array element")
    except _Stop as stop:
        if stop.message == "":  # the input ended inside a token
            return ("unexpected EOF" if stream else "unexpected end of JSON input"), True
        if stop.message.startswith("eof:"):  # Unmarshal: the space eof() feeds in is the offender
            return (stop.message[4:] if not stream else "unexpected EOF"), True
        return stop.message, False
    if state == "after" and not stack:
        return "", False
    return ("unexpected EOF" if stream else "unexpected end of JSON input"), True


def _eof() -> _Stop:
    return _Stop("")


def _scan_string(data: bytes, i: int) -> int:
    n = len(data)
    while i < n:
        c = data[i]
        if c == ord('"'):
            return i + 1
        if c == ord("\\"):
            i += 1
            if i >= n:
                raise _Stop("eof:invalid character ' ' in string escape code")
            e = data[i]
            if e == ord("u"):
                for k in range(1, 5):
                    if i + k >= n:
                        raise _Stop("eof:invalid character ' ' in \\u hexadecimal character escape")
                    if data[i + k] not in _HEX:
                        raise _Stop(
                            f"invalid character {quote_char(data[i + k])} in \\u hexadecimal character escape"
                        )
                i += 5
                continue
            if e not in _ESCAPABLE:
                raise _Stop(f"invalid character {quote_char(e)} in string escape code")
            i += 1
            continue
        if c < 0x20:
            raise _Stop(f"invalid character {quote_char(c)} in string literal")
        i += 1
    raise _eof()


def _scan_number(data: bytes, i: int) -> int:
    n = len(data)

    def at(k: int) -> int:
        return data[k] if k < n else -1

    def need_digit(k: int, context: str) -> None:
        if k >= n:
            raise _Stop("eof:" + f"invalid character ' ' {context}")
        if data[k] not in _DIGITS:
            raise _Stop(f"invalid character {quote_char(data[k])} {context}")

    if at(i) == ord("-"):
        i += 1
        need_digit(i, "in numeric literal")
    if at(i) == ord("0"):
        i += 1
    else:
        while at(i) in _DIGITS:
            i += 1
    if at(i) == ord("."):
        i += 1
        need_digit(i, "after decimal point in numeric literal")
        while at(i) in _DIGITS:
            i += 1
    if at(i) in (ord("e"), ord("E")):
        i += 1
        if at(i) in (ord("+"), ord("-")):
            i += 1
        need_digit(i, "in exponent of numeric literal")
        while at(i) in _DIGITS:
            i += 1
    return i


def _scan_literal(data: bytes, i: int, word: bytes) -> int:
    name = word.decode()
    for k in range(1, len(word)):
        if i + k >= len(data):
            raise _Stop("eof:" + f"invalid character ' ' in literal {name} (expecting {quote_char(word[k])})")
        if data[i + k] != word[k]:
            found, expecting = quote_char(data[i + k]), quote_char(word[k])
            raise _Stop(f"invalid character {found} in literal {name} (expecting {expecting})")
    return i + len(word)
