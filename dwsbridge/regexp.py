"""Regular expressions with Go's semantics (RE2), for the patterns of site DWDirectiveRules.

DWS compiles ruleset patterns with Go's `regexp`, which is RE2: `[[:alpha:]]` is a POSIX class, `\\pL`
a Unicode class, `(?i)` folds case the Unicode way (`k` matches KELVIN SIGN), `$` matches only at the
end of the text, and lookaround and backreferences do not exist. Python's `re` differs on each, so rule
patterns go through google-re2 (the RE2 library itself), which also matches in linear time whatever
the pattern and the text. `re2` is imported the first time a pattern is compiled.
"""

from __future__ import annotations

import sys
from typing import Any

from dwsbridge.errors import ConfigError


class PatternError(ValueError):
    """RE2 cannot compile the pattern (for instance a lookahead, which Go's regexp refuses too)."""


class Pattern:
    """A compiled RE2 pattern; `search` is an unanchored search, as Go's `MatchString`."""

    __slots__ = ("_fast", "_regexp", "pattern")

    def __init__(self, pattern: str, regexp: Any) -> None:
        self.pattern = pattern
        self._regexp = regexp
        # The binding's `search` builds a match object and maps byte offsets back to characters
        # (~4 us); a yes/no answer needs only RE2's Match on the UTF-8 bytes (~0.5 us). Fall back
        # to the public API if a release of the binding no longer has that shape.
        raw = getattr(regexp, "_regexp", None)
        self._fast = _fast_search(raw) if raw is not None and hasattr(raw, "Match") else None

    def __repr__(self) -> str:
        return f"Pattern({self.pattern!r})"

    def search(self, text: str) -> bool:
        """Whether the pattern occurs in `text`. A lone surrogate (JSON can carry one, UTF-8 cannot)
        is read as U+FFFD, as Go's JSON decoding does."""
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            data = text.encode("utf-8")
        if self._fast is not None:
            return self._fast(data)
        return self._regexp.search(text) is not None


def _fast_search(raw: Any) -> Any:
    import re2

    anchor, no_match = re2._Anchor.UNANCHORED, re2._NULL_SPAN

    def search(data: bytes) -> bool:
        return bool(raw.Match(anchor, data, 0, len(data))[0] != no_match)

    return search


_OPTIONS: Any = None


def compile_pattern(pattern: str) -> Pattern:
    """Compile `pattern` as Go's regexp would; raise PatternError with RE2's reason when it cannot."""
    global _OPTIONS
    try:
        import re2
    except ImportError as exc:  # a dependency of dwsbridge: the interpreter running it lacks it
        raise ConfigError(
            f"rule patterns need google-re2 (Go's regexp semantics), which {sys.executable} cannot "
            f"import ({exc}): pip install google-re2, or run dwsbridge with the interpreter it was "
            "installed for"
        ) from None

    if _OPTIONS is None:
        options = re2.Options()
        options.log_errors = False  # the reason goes into PatternError, not to slurmctld's stderr
        _OPTIONS = options
    if _has_any_byte_escape(pattern):
        raise PatternError("invalid escape sequence: \\C (Go's regexp has no any-byte escape)")
    try:
        return Pattern(pattern, re2.compile(pattern, _OPTIONS))
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise PatternError(str(reason)) from None
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. a NUL the binding refuses
        raise PatternError(str(exc)) from None


def _has_any_byte_escape(pattern: str) -> bool:
    """Whether `pattern` uses `\\C` (any byte), which RE2 accepts and Go's regexp refuses."""
    index, quoted = 0, False
    while index < len(pattern) - 1:
        if pattern[index] == "\\":
            escaped = pattern[index + 1]
            if quoted:
                quoted = escaped != "E"
            elif escaped == "Q":
                quoted = True
            elif escaped == "C":
                return True
            index += 2
        else:
            index += 1
    return False
