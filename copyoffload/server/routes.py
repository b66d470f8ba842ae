"""The v1.0 endpoints. Each handler checks, in order: method, auth, version; then its own inputs.

Routes know nothing of sockets or TLS (see transport.py) and nothing of how a copy runs (see jobs.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from urllib.parse import parse_qsl, unquote

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
from copyoffload.server.version import check_version

NOT_FOUND = "404 page not found"
MAX_WAIT_CAP = 366 * 24 * 3600
_GO_INT = re.compile(r"[+-]?[0-9]+\Z")

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

    def handle(self, request: Request) -> Response:
        route = self._exact.get(request.path)
        arg = ""
        if route is None:
            for prefix, candidate in self._prefixed.items():
                if request.path.startswith(prefix):
                    arg = unquote(request.path[len(prefix) :])
                    if "/" in arg or "\x00" in arg:
                        return text(404, NOT_FOUND)
                    route = candidate
                    break
        if route is None:
            return text(404, NOT_FOUND)
        method, handler = route
        if request.method != method:
            return text(501, "method not supported")
        refusal = self.auth.check(request) or check_version(request)
        if refusal is not None:
            return refusal
        return handler(request, arg)

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
        params = parse_qsl(request.query, keep_blank_values=True)
        unexpected = sorted({k for k, _ in params if k != "maxWaitSecs"})
        if unexpected:
            return text(
                400,
                "unexpected query parameters: {}".format(", ".join(json.dumps(k)[1:-1] for k in unexpected)),
            )
        raw = next((v for k, v in params if k == "maxWaitSecs"), "")
        if not _GO_INT.match(raw):
            return text(
                400, f"unable to parse maxWaitSecs: strconv.Atoi: parsing {json.dumps(raw)}: invalid syntax"
            )
        seconds = int(raw)
        if not -(2**63) <= seconds < 2**63:
            return text(
                400,
                f"unable to parse maxWaitSecs: strconv.Atoi: parsing {json.dumps(raw)}: value out of range",
            )
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
