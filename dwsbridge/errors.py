"""Error types a user can act on: each carries what failed and, where known, the workflow and directive."""

from __future__ import annotations


class DwsBridgeError(Exception):
    """Base of every error dwsbridge raises on purpose; `str(err)` is the user-facing message."""

    exit_code = 1


class DirectiveError(DwsBridgeError):
    """One problem with one #DW directive; `line` is 1-based in the job script (0 when unknown)."""

    def __init__(self, message: str, *, directive: str = "", line: int = 0, argument: str = "") -> None:
        self.reason = message
        self.directive = directive
        self.line = line
        self.argument = argument
        super().__init__(self.render())

    def render(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        text = self.directive if len(self.directive) <= 80 else self.directive[:77] + "..."
        what = f"{text}: " if text else ""
        return f"{where}{what}{self.reason}"


class MoreErrors(DirectiveError):
    """The last entry of a bounded problem list: how many problems were found beyond it."""

    def __init__(self, count: int) -> None:
        self.count = count
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"... and {count} more {noun} (fix those shown, then validate again)")


class ValidationFailed(DwsBridgeError):
    """The directives of a job are invalid; holds every problem found, not just the first."""

    def __init__(self, errors: list[DirectiveError]) -> None:
        self.errors = errors
        super().__init__("; ".join(e.render() for e in errors) or "invalid directives")


class AdmissionError(DwsBridgeError):
    """DWS's admission webhook (or our copy of its rules) refused a create or update (HTTP 403)."""


class WorkflowNotFound(DwsBridgeError):
    """No workflow by that name exists."""

    exit_code = 3


class WorkflowFailed(DwsBridgeError):
    """The workflow reached status Error in some state; the message is the driver's."""

    def __init__(self, name: str, state: str, message: str) -> None:
        self.name = name
        self.state = state
        self.message = message
        super().__init__(f"workflow {name}: {state} failed: {message}")


class WorkflowTimeout(DwsBridgeError):
    """A state did not complete within the allowed time."""

    def __init__(self, name: str, state: str, seconds: float, detail: str = "") -> None:
        self.name = name
        self.state = state
        extra = f" ({detail})" if detail else ""
        super().__init__(f"workflow {name}: {state} did not complete within {seconds:g}s{extra}")


class Cancelled(DwsBridgeError):
    """The caller asked to stop waiting."""


class ConfigError(DwsBridgeError):
    """The configuration file or an override is invalid."""

    exit_code = 2
