"""Regular expressions with Go's semantics (RE2), for the patterns of site DWDirectiveRules.

DWS compiles ruleset patterns with Go's `regexp`, which is RE2: `[[:alpha:]]` is a POSIX class, `\\pL`
a Unicode class, `(?i)` folds case the Unicode way (`k` matches KELVIN SIGN), `$` matches only at the
end of the text, and lookaround and backreferences do not exist. Python's `re` differs on each, so rule
patterns go through google-re2 (the RE2 library itself), which also matches in linear time whatever
the pattern and the text.

One exception keeps the hook path as light as it was: a *plain* pattern (`plain_subset`: anchored at the
start, ASCII literals, ASCII classes, `\\d`, one group of alternatives, at most one quantifier, the
shape of every pattern in the bundled NNF ruleset) means the same to Python's `re` and to RE2 on any
text without a newline, and Python's `re` matches it in linear time; it is compiled with `re`, and
`re2` (~2 ms to import) is imported only for the first pattern that is not plain, or a text with a
newline. tests/test_directives_re2.py checks both claims on arbitrary patterns.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from dwsbridge.errors import ConfigError


class PatternError(ValueError):
    """RE2 cannot compile the pattern (for instance a lookahead, which Go's regexp refuses too)."""


class Pattern:
    """A compiled rule pattern; `search` is an unanchored search, as Go's `MatchString`."""

    __slots__ = ("pattern",)
    engine = ""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pattern!r})"

    def search(self, text: str) -> bool:
        raise NotImplementedError


class RE2Pattern(Pattern):
    """A pattern compiled by RE2."""

    __slots__ = ("_fast", "_regexp")
    engine = "re2"

    def __init__(self, pattern: str, regexp: Any) -> None:
        super().__init__(pattern)
        self._regexp = regexp
        # The binding's `search` builds a match object and maps byte offsets back to characters
        # (~4 us); a yes/no answer needs only RE2's Match on the UTF-8 bytes (~0.5 us). Fall back
        # to the public API if a release of the binding no longer has that shape.
        raw = getattr(regexp, "_regexp", None)
        self._fast = _fast_search(raw) if raw is not None and hasattr(raw, "Match") else None

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


class PlainPattern(Pattern):
    """A plain pattern (see `plain_subset`), matched by Python's `re`; a text with a newline, where
    Python's `$` also matches before a final newline, is answered by RE2."""

    __slots__ = ("_re", "_re2")
    engine = "re"

    def __init__(self, pattern: str) -> None:
        super().__init__(pattern)
        self._re = re.compile(pattern, re.ASCII)
        self._re2: Pattern | None = None

    def search(self, text: str) -> bool:
        if "\n" in text:
            if self._re2 is None:
                self._re2 = _compile_re2(self.pattern)
            return self._re2.search(text)
        return self._re.search(text) is not None


_LITERAL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def plain_subset(pattern: str) -> bool:
    """Whether `pattern` is plain: `^`, then atoms (an ASCII letter, digit, `_` or `-`; `\\d`; a class
    of those characters and ranges), at most one group of alternatives of atoms, at most one `+`, `*`
    or `?` (after an atom, not a group), and an optional final `$`. Python's `re` and RE2 agree on such
    a pattern, and with one quantifier and the anchor Python's backtracking stays linear."""
    if not pattern.startswith("^"):
        return False
    body = pattern[1:-1] if pattern.endswith("$") else pattern[1:]
    index, quantifiers, groups, in_group, last = 0, 0, 0, False, ""  # last: "", "atom", "group"
    while index < len(body):
        char = body[index]
        if char in _LITERAL:
            index, last = index + 1, "atom"
        elif char == "\\" and body[index + 1 : index + 2] == "d":
            index, last = index + 2, "atom"
        elif char == "[":
            close = body.find("]", index + 1)
            content = body[index + 1 : close] if close > 0 else ""
            if not content or not set(content) <= _LITERAL or "--" in content:
                return False
            index, last = close + 1, "atom"
        elif char == "(" and not in_group and groups == 0:
            index, in_group, groups, last = index + 1, True, 1, ""
        elif char == "|" and in_group:
            index, last = index + 1, ""
        elif char == ")" and in_group:
            index, in_group, last = index + 1, False, "group"
        elif char in "+*?" and last == "atom" and not in_group and quantifiers == 0:
            index, quantifiers, last = index + 1, 1, "quantified"
        else:
            return False
    return not in_group


def _fast_search(raw: Any) -> Any:
    import re2

    anchor, no_match = re2._Anchor.UNANCHORED, re2._NULL_SPAN

    def search(data: bytes) -> bool:
        return bool(raw.Match(anchor, data, 0, len(data))[0] != no_match)

    return search


_OPTIONS: Any = None


def compile_pattern(pattern: str) -> Pattern:
    """Compile `pattern` as Go's regexp would; raise PatternError with RE2's reason when it cannot."""
    if plain_subset(pattern):
        try:
            return PlainPattern(pattern)
        except re.error:
            pass  # e.g. a reversed range: let RE2 say why, as Go would
    return _compile_re2(pattern)


def _compile_re2(pattern: str) -> RE2Pattern:
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
        return RE2Pattern(pattern, re2.compile(pattern, _OPTIONS))
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
