"""Bearer-token check, as upstream's validateMessage does it (before the version check)."""

from __future__ import annotations

from copyoffload.server.bodies import Request, Response, text
from copyoffload.tokens import TokenError, TokenVerifier

# strings.TrimSpace on a header's bytes: ASCII white space (0x85 and 0xA0 alone are not UTF-8 runes).
_GO_SPACE = " \t\n\r\v\f"


class Authenticator:
    """Checks the Authorization header against this workflow's key; ``None`` verifier = --skip-token."""

    def __init__(self, verifier: TokenVerifier | None) -> None:
        self._verifier = verifier

    def check(self, request: Request) -> Response | None:
        """None when the request may proceed, else the 401 to send."""
        if self._verifier is None:
            return None
        header = request.header("authorization")
        if not header:
            return text(401, "unauthorized")
        # Upstream removes the first "Bearer" wherever it is and trims: a bare token works too.
        token = header.replace("Bearer", "", 1).strip(_GO_SPACE)
        try:
            self._verifier.verify(token)
        except TokenError as exc:
            return text(401, f"token parse failed: {exc}")
        return None
