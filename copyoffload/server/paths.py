"""URL paths and queries as Go's net/http and net/url treat them (upstream's server is Go's ServeMux).

Strings here are byte strings carried as latin-1 text: a query or path may hold any bytes after
unescaping, as in Go.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from copyoffload.server.bodies import Request, Response

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_PATH_KEEP = _UNRESERVED | frozenset(b"$&+,/:;=@")
_HEX = frozenset("0123456789abcdefABCDEF")


def go_clean(path: str) -> str:
    """path.Clean: the shortest equivalent path (no ``//``, ``.``, or ``..`` above the root)."""
    if not path:
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(segment)
    cleaned = ("/" if rooted else "") + "/".join(parts)
    return cleaned or ("/" if rooted else ".")


def go_clean_path(path: str) -> str:
    """net/http's cleanPath: rooted, cleaned, keeping a trailing slash."""
    if not path:
        return "/"
    if not path.startswith("/"):
        path = "/" + path
    cleaned = go_clean(path)
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


def go_base(path: str) -> str:
    """filepath.Base: the last element, trailing slashes ignored (upstream's request name)."""
    if not path:
        return "."
    stripped = path.rstrip("/")
    if not stripped:
        return "/"
    return stripped.rsplit("/", 1)[-1]


def _escape(text: str, keep: frozenset[int], plus_for_space: bool) -> str:
    out = []
    for byte in text.encode("latin-1", "replace"):
        if byte in keep:
            out.append(chr(byte))
        elif byte == 0x20 and plus_for_space:
            out.append("+")
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


_HTML = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;"})


def go_query_escape(text: str) -> str:
    """url.QueryEscape."""
    return _escape(text, _UNRESERVED, True)


def go_path_escape(text: str) -> str:
    """url.URL's path escaping (encodePath): only ``?`` among the reserved characters is escaped."""
    return _escape(text, _PATH_KEEP, False)


def _query_unescape(text: str) -> str | None:
    """url.QueryUnescape as latin-1 text; None where Go reports an invalid escape."""
    if "%" not in text and "+" not in text:
        return text
    index = text.find("%")
    while index >= 0:
        if len(text) < index + 3 or not set(text[index + 1 : index + 3]) <= _HEX:
            return None
        index = text.find("%", index + 3)
    return unquote_to_bytes(text.replace("+", " ")).decode("latin-1")


def parse_go_query(query: str) -> dict[str, list[str]]:
    """url.ParseQuery, errors dropped as Request.URL.Query() drops them (bad pairs are left out)."""
    values: dict[str, list[str]] = {}
    for pair in query.split("&") if query else ():
        if ";" in pair or not pair:
            continue
        raw_key, _, raw_value = pair.partition("=")
        key, value = _query_unescape(raw_key), _query_unescape(raw_value)
        if key is None or value is None:
            continue
        values.setdefault(key, []).append(value)
    return values


def go_redirect(request: Request, path: str) -> Response:
    """ServeMux's redirect: 307 with Location; GET gets http.Redirect's little HTML body."""
    location = go_path_escape(path) + (f"?{request.query}" if request.query else "")
    headers = [("Location", location)]
    if request.method == "GET":
        body = f'<a href="{location.translate(_HTML)}">Temporary Redirect</a>.\n\n'.encode()
        return Response(307, body, "text/html; charset=utf-8", headers)
    if request.method == "HEAD":
        headers.append(("Content-Type", "text/html; charset=utf-8"))
    return Response(307, b"", extra_headers=headers)
