"""Issue 12.2: rule patterns mean what they mean to DWS (Go's regexp, RE2).

What is checked, and how:
- Property: on arbitrary patterns built from the RE2 subset the bundled NNF ruleset uses (anchors ^ $,
  ASCII literals, classes such as [a-z0-9-], \\d, groups with alternation, + * ?), and arbitrary
  directive values (any non-whitespace text, Unicode included), RE2 finds a match exactly when
  Python's `re` (ASCII mode, the engine before) does.
- Property: the bundled ruleset judges arbitrary jobdw/container/copy_in directives the same with
  either engine (errors and their texts).
- Outside that subset the answer is RE2's (and Go's): POSIX classes, \\pL, Unicode case folding,
  `$` only at the very end; lookaround, backreferences, \\Z, \\C and counts over 1000 are refused at
  load, as Go refuses to compile them; a pattern that backtracks exponentially in Python's `re`
  runs in linear time.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dwsbridge.directives import CommandRule, RuleDef, RuleSet, bundled_ruleset, check_job
from dwsbridge.errors import ConfigError
from dwsbridge.regexp import Pattern, PatternError, RE2Pattern, _compile_re2, compile_pattern, plain_subset

FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GO_WHITESPACE = "\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000" + "".join(
    chr(c) for c in range(0x2000, 0x200B)
)


class PythonPattern:
    """The engine before: Python's `re` in ASCII mode, with the interface RuleDef expects."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._re = re.compile(pattern, re.ASCII)

    def search(self, text: str) -> bool:
        return self._re.search(text) is not None


# --- patterns from the bundled ruleset's subset ------------------------------------------------------

literal = st.sampled_from([*"abcxyzAZ019_-/", "KiB", "GB", "DW_JOB_"])
class_item = st.sampled_from(["a-z", "A-Z", "0-9", "5-7", "_", "x"])
char_class = st.tuples(
    st.lists(class_item, min_size=1, max_size=3, unique=True), st.sampled_from(["", "-"])
).map(lambda parts: "[" + "".join(parts[0]) + parts[1] + "]")  # a '-' last, as in [a-z0-9-]
atom = st.one_of(literal, char_class, st.just(r"\d"))
quantified = st.tuples(atom, st.sampled_from(["", "", "+", "*", "?"])).map("".join)
sequence = st.lists(quantified, min_size=1, max_size=4).map("".join)
group = st.lists(sequence, min_size=1, max_size=3).map(lambda alts: "(" + "|".join(alts) + ")")
body = st.lists(st.one_of(quantified, group), min_size=1, max_size=3).map("".join)
subset_pattern = st.tuples(st.sampled_from(["", "^"]), body, st.sampled_from(["", "$"])).map("".join)

field_text = st.text(
    alphabet=st.characters(blacklist_characters=GO_WHITESPACE, blacklist_categories=("Cs",)), max_size=16
)
value = st.one_of(field_text, st.from_regex(r"[a-z0-9_-]{0,8}(KiB|GB)?", fullmatch=True))


@FAST
@given(subset_pattern, st.lists(value, min_size=1, max_size=5))
def test_re2_and_python_agree_on_the_bundled_rulesets_subset(pattern: str, values: list[str]) -> None:
    before, after = PythonPattern(pattern), compile_pattern(pattern)
    public = public_api(after)
    for text in values:
        assert after.search(text) == before.search(text) == public.search(text), (pattern, text)


def public_api(pattern: Pattern) -> RE2Pattern:
    """The same pattern compiled by RE2 and answered through the binding's public `search` (the
    fallback of RE2Pattern's fast path)."""
    slow = _compile_re2(pattern.pattern)
    slow._fast = None
    return slow


# Wider patterns: plain ones and every way of leaving the plain subset (no anchor, two quantifiers,
# a quantified group, nesting, top-level alternation, other escapes and classes, flags, non-ASCII).
wide_atom = st.one_of(
    atom,
    st.sampled_from(
        [".", r"\w", r"\s", r"\pL", "[[:alpha:]]", "[^a-z]", "é", "(?i)k", r"\.", "[-x]", "[z-a]"]
    ),
)
wide_piece = st.tuples(wide_atom, st.sampled_from(["", "", "+", "*", "?", "{2}", "+?"])).map("".join)
wide_group = st.lists(st.lists(wide_piece, min_size=1, max_size=3).map("".join), min_size=1, max_size=3).map(
    lambda alts: "(" + "|".join(alts) + ")" + ""
)
wide_body = st.lists(st.one_of(wide_piece, wide_group, st.just("|")), min_size=1, max_size=4).map("".join)
wide_pattern = st.tuples(st.sampled_from(["", "^", "^^"]), wide_body, st.sampled_from(["", "$", "$$"])).map(
    "".join
)
any_text = st.one_of(value, st.text(max_size=12), st.sampled_from(["a\n", "\n", "ab\ncd", "K", "\u212a"]))


@FAST
@given(st.one_of(subset_pattern, wide_pattern), st.lists(any_text, min_size=1, max_size=5))
def test_every_pattern_answers_as_re2_whichever_engine_it_gets(pattern: str, texts: list[str]) -> None:
    try:
        reference: RE2Pattern | None = _compile_re2(pattern)
    except PatternError:
        reference = None
    if reference is None:
        with pytest.raises(PatternError):
            compile_pattern(pattern)
        return
    compiled = compile_pattern(pattern)
    assert compiled.engine == ("re" if plain_subset(pattern) else "re2")
    for text in texts:
        assert compiled.search(text) == reference.search(text), (pattern, text, compiled.engine)


def bundled_with_python_patterns() -> RuleSet:
    def convert(rdef: RuleDef) -> RuleDef:
        return dataclasses.replace(
            rdef,
            key_re=PythonPattern(rdef.key_re.pattern),  # type: ignore[arg-type]
            pattern_re=PythonPattern(rdef.pattern) if rdef.pattern_re is not None else None,  # type: ignore[arg-type]
            patterns=tuple(PythonPattern(p.pattern) for p in rdef.patterns),  # type: ignore[misc]
        )

    rules = [
        CommandRule(r.command, tuple(convert(d) for d in r.rule_defs), r.driver_id, r.watch_states)
        for r in bundled_ruleset().rules
    ]
    return RuleSet(rules, source="bundled, Python re")


BEFORE = bundled_with_python_patterns()
token = st.one_of(
    st.tuples(
        st.sampled_from(["type", "capacity", "name", "profile", "requires", "source", "DW_JOB_data", "Name"]),
        value,
    ).map(lambda kv: f"{kv[0]}={kv[1]}"),
    field_text.filter(lambda w: w != ""),
)


@FAST
@given(
    st.sampled_from(["jobdw", "create_persistent", "persistentdw", "container", "copy_in"]),
    st.lists(token, max_size=6),
)
def test_the_bundled_ruleset_judges_as_before(command: str, tokens: list[str]) -> None:
    text = " ".join(["#DW", command, *tokens])
    after = [str(e) for e in check_job([text])[1]]
    before = [str(e) for e in check_job([text], ruleset=BEFORE)[1]]
    assert after == before


# --- outside the subset: RE2's answers ---------------------------------------------------------------


def site_rules(pattern: str) -> RuleSet:
    return RuleSet.from_documents(
        [{"spec": [{"command": "w", "ruleDefs": [{"key": "^v$", "type": "string", "pattern": pattern}]}]}]
    )


def accepts(pattern: str, text: str) -> bool:
    return not check_job([f"#DW w v={text}"], ruleset=site_rules(pattern))[1]


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("^[[:alpha:]]+$", "abc", True),  # a POSIX class; Python's re reads a set of characters
        ("^[[:alpha:]]+$", "a:b", False),
        (r"^\pL+$", "héllo", True),  # a Unicode class; Python's re refuses to compile it
        (r"^\pL+$", "h3llo", False),
        (r"^\p{Greek}+$", "αβγ", True),
        ("(?i)^k$", "\u212a", True),  # KELVIN SIGN folds to k in Go; not in Python's ASCII re
        ("(?i)^s$", "\u017f", True),  # LATIN SMALL LETTER LONG S folds to s
        (r"^\d+$", "٣", False),  # \d is ASCII in Go
        (r"^\w+$", "é", False),  # so is \w
    ],
)
def test_patterns_outside_the_subset_mean_what_they_mean_to_go(
    pattern: str, text: str, expected: bool
) -> None:
    assert accepts(pattern, text) is expected


def test_dollar_matches_only_at_the_end_of_the_text_as_in_go() -> None:
    assert compile_pattern("^a$").search("a\n") is False
    assert PythonPattern("^a$").search("a\n") is True


def test_unicode_case_folding_is_differs_from_the_engine_before() -> None:
    assert PythonPattern("(?i)^k$").search("\u212a") is False


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("^(?=x)", "invalid perl operator"),  # lookahead
        ("^(?<!x)y", "invalid perl operator"),  # lookbehind
        (r"(a)\1", "invalid escape sequence"),  # backreference
        (r"a\Z", "invalid escape sequence"),
        (r"a\C", "invalid escape sequence"),  # RE2 itself accepts \C; Go does not
        ("a{1001}", "invalid repetition size"),
        ("a++", "bad repetition operator"),
        ("(unclosed", "missing )"),
    ],
)
def test_a_pattern_go_cannot_compile_is_refused_at_load(pattern: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(reason)) as info:
        site_rules(pattern)
    assert "rulesets use Go's RE2 syntax" in str(info.value)


def test_a_key_pattern_go_cannot_compile_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match="invalid perl operator"):
        RuleSet.from_documents(
            [{"spec": [{"command": "w", "ruleDefs": [{"key": "(?!x)", "type": "string"}]}]}]
        )


def test_a_pattern_that_backtracks_exponentially_in_python_is_linear_in_re2() -> None:
    # Python's re needs ~2**30 steps for this; RE2 answers at once (a hang is the test timing out).
    assert accepts("^(a+)+$", "a" * 30 + "!") is False
    assert accepts("^(a|aa)+$", "a" * 5000) is True


def test_a_lone_surrogate_in_a_value_is_read_as_a_replacement_character() -> None:
    assert compile_pattern("^a\ufffd$").search("a\ud800") is True
    assert public_api(compile_pattern("^a\ufffd$")).search("a\ud800") is True


def test_the_fast_path_is_in_use_with_this_binding() -> None:
    assert compile_pattern("x")._fast is not None


def test_pattern_error_carries_re2s_reason() -> None:
    with pytest.raises(PatternError, match="missing \\)"):
        compile_pattern("(x")


def test_without_google_re2_loading_a_ruleset_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_re2(name: str, *args: object, **kwargs: object) -> object:
        if name == "re2":
            raise ImportError("No module named 're2'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_re2)
    with pytest.raises(ConfigError, match="pip install google-re2"):
        site_rules(r"^\pL$")
    assert site_rules("^[a-z]+$")  # a plain pattern does not need it


def test_the_bundled_ruleset_is_plain_and_never_imports_re2() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from dwsbridge.directives import bundled_ruleset, validate_job\n"
        "rules = bundled_ruleset()\n"
        "validate_job(['#DW jobdw type=xfs capacity=1GiB name=ab', '#DW container name=cc profile=pp'])\n"
        "engines = {p.engine for r in rules.rules for d in r.rule_defs\n"
        "           for p in (d.key_re, *([d.pattern_re] if d.pattern_re else []), *d.patterns)}\n"
        "print(sorted(engines), 're2' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[0] == "['re'] False"


def test_a_site_pattern_outside_the_plain_subset_gets_re2() -> None:
    assert compile_pattern(r"^\pL+$").engine == "re2"
    assert compile_pattern("^[a-z]+[0-9]+$").engine == "re2"  # two quantifiers: Python could backtrack
    assert compile_pattern("[a-z]+x").engine == "re2"  # unanchored
    assert compile_pattern("^(ab)+$").engine == "re2"  # a quantified group
    assert compile_pattern("^\\d+(KiB|GB)$").engine == "re"


def test_a_plain_pattern_with_a_reversed_range_is_refused_with_re2s_reason() -> None:
    with pytest.raises(PatternError, match="invalid character class range"):
        compile_pattern("^[z-a]$")
