"""The v1.0 endpoints. Each handler checks, in order: method, auth, version; then its own inputs.

Routes know nothing of sockets or TLS (see transport.py) and nothing of how a copy runs (see jobs.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

from copyoffload.gofmt import go_quote
from copyoffload.jobs import JobTable, Profiles, RequestRejected
from copyoffload.server.auth import Authenticator
from copyoffload.server.bodies import (
    BodyError,
    Request,
    Response,
    decode_copy_request,
    empty,
    json_line,
    ok_text,
    text,
)
from copyoffload.server.paths import go_base, go_clean_path, go_query_escape, go_redirect, parse_go_query
from copyoffload.server.version import check_version

NOT_FOUND = "404 page not found"
MAX_WAIT_CAP = 366 * 24 * 3600
_GO_INT = re.compile(r"[+-]?[0-9]+\Z")
_SUBTREES = ("/status", "/cancel")

Handler = Callable[[Request, str], Response]


class CopyOffloadApi:
    """Dispatches a parsed request to its handler and returns the response to send."""

    def __init__(
        self,
        table: JobTable,
        profiles: Profiles,
        auth: Authenticator,
        *,
        request_shutdown: Callable[[], None] = lambda: None,
    ) -> None:
        self.table = table
        self.profiles = profiles
        self.auth = auth
        self.request_shutdown = request_shutdown
        self._exact: dict[str, tuple[str, Handler]] = {
            "/hello": ("GET", self.hello),
            "/trial": ("POST", self.trial),
            "/list": ("GET", self.list),
            "/shutdown": ("POST", self.shutdown),
        }
        self._prefixed: dict[str, tuple[str, Handler]] = {
            "/status/": ("GET", self.status),
            "/cancel/": ("DELETE", self.cancel),
        }

    def resolve(self, request: Request) -> Response | tuple[str, Handler, str]:
        """Route as Go's ServeMux does: clean-path and trailing-slash 307s, subtree names by last element."""
        raw_path = request.path or "/"
        route = self._exact.get(raw_path)
        if route is not None:
            return route[0], route[1], ""
        # A path with no empty or dot segment is already clean (the common case: skip the work).
        cleaned = go_clean_path(raw_path) if "//" in raw_path or "/." in raw_path else raw_path
        if cleaned in _SUBTREES:
            decoded = unquote_to_bytes(raw_path).decode("latin-1")
            return go_redirect(request, go_clean_path(decoded) + "/")
        if cleaned != raw_path:
            return go_redirect(request, cleaned)
        for prefix, (method, handler) in self._prefixed.items():
            if cleaned.startswith(prefix):
                decoded = (
                    unquote_to_bytes(raw_path).decode("utf-8", "surrogateescape")
                    if "%" in raw_path
                    else raw_path
                )
                return method, handler, go_base(decoded)
        return text(404, NOT_FOUND)

    def admit(self, request: Request) -> Response | None:
        """Judge a request on its header alone (the transport calls this before reading a body)."""
        resolved = self.resolve(request)
        return resolved if isinstance(resolved, Response) else self._check(request, resolved[0])

    def _check(self, request: Request, method: str) -> Response | None:
        if request.method != method:
            return text(501, "method not supported")
        return self.auth.check(request) or check_version(request)

    def handle(self, request: Request) -> Response:
        resolved = self.resolve(request)
        if isinstance(resolved, Response):
            return resolved
        method, handler, name = resolved
        return self._check(request, method) or handler(request, name)

    def hello(self, request: Request, _: str) -> Response:
        return ok_text("hello back at ya")

    def trial(self, request: Request, _: str) -> Response:
        try:
            copy_request = decode_copy_request(request.body)
        except BodyError as exc:
            return text(400, f"unable to decode data movement request body: {exc}")
        try:
            copy_request.validate()
            profile = self.profiles.select(copy_request.dm_profile)
            job = self.table.submit(copy_request, profile)
        except RequestRejected as exc:
            return text(exc.code, str(exc))
        return ok_text(f"name={job.name}")

    def list(self, request: Request, _: str) -> Response:
        names = self.table.active_names()
        return ok_text(",".join(names)) if names else empty(200)

    def status(self, request: Request, name: str) -> Response:
        params = parse_go_query(request.query)
        raw = params.pop("maxWaitSecs", [""])[0]
        parsing = f"unable to parse maxWaitSecs: strconv.Atoi: parsing {go_quote(_bytes(raw))}"
        if not _GO_INT.match(raw):
            return text(400, f"{parsing}: invalid syntax")
        seconds = int(raw)
        if not -(2**63) <= seconds < 2**63:
            return text(400, f"{parsing}: value out of range")
        if params:
            encoded = "&".join(
                f"{go_query_escape(key)}={go_query_escape(value)}"
                for key in sorted(params)
                for value in params[key]
            )
            return text(400, f"unexpected query parameters: {encoded}")
        max_wait = None if seconds < 0 else float(min(seconds, MAX_WAIT_CAP))
        body = self.table.status(name, max_wait)
        if body is None:
            return text(404, "request not found")
        return json_line(body)

    def cancel(self, request: Request, name: str) -> Response:
        if not self.table.cancel(name):
            return text(404, "unable to cancel request: request not found")
        return empty(200)

    def shutdown(self, request: Request, _: str) -> Response:
        if self.table.has_active():
            return text(409, "unable to shutdown server: requests in progress")
        self.request_shutdown()
        return ok_text("Server shutting down")


def _bytes(latin: str) -> bytes:
    return latin.encode("latin-1")
