"""API version negotiation: the ``Accepts-version`` header must be exactly ``1.0``."""

from __future__ import annotations

from copyoffload.server.bodies import Request, Response, text

API_VERSION = "1.0"
VALID_VERSIONS = "Valid versions: 1.0"


def check_version(request: Request) -> Response | None:
    if request.header("accepts-version") != API_VERSION:
        return text(406, VALID_VERSIONS)
    return None
