"""Property-based tests: the engine never raises anything but its own errors, and never accepts a
directive that breaks a rule."""

from __future__ import annotations

import contextlib
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dwsbridge.directives import (
    RuleSet,
    check_job,
    extract_from_script,
    format_directive,
    parse_directive,
    split_flux,
    validate_job,
)
from dwsbridge.errors import ConfigError, DirectiveError, ValidationFailed

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GO_SPACES = ["\t", "\n", "\v", "\f", "\r", " ", "\x85", "\xa0", "\u2003", "\u3000"]

# An oracle written from the NNF ruleset's text, independent of the engine's code.
CAPACITY = re.compile(r"[0-9]+(KiB|KB|MiB|MB|GiB|GB|TiB|TB)")
NAME = re.compile(r"[a-z][a-z0-9-]+")


def nonzero_capacity(value: str) -> bool:
    """The ruleset's pattern, and nnf-sos's Proposal rule: 'capacity' must be a non-zero value."""
    match = CAPACITY.fullmatch(value)
    return match is not None and int(value[: match.start(1)]) > 0


JOBDW_RULES = {
    "type": lambda v: v in ("raw", "xfs", "gfs2", "lustre"),
    "capacity": lambda v: nonzero_capacity(v),
    "name": lambda v: NAME.fullmatch(v) is not None,
    "profile": lambda v: NAME.fullmatch(v) is not None,
    "requires": lambda v: (
        all(w in ("copy-offload", "user-container-auth") for w in v.split(","))
        and len(v.split(",")) == len(set(v.split(",")))
    ),
}
REQUIRED = ("type", "capacity", "name")

separator = st.lists(st.sampled_from(GO_SPACES), min_size=1, max_size=3).map("".join)
word = st.text(
    alphabet=st.characters(blacklist_characters="".join(GO_SPACES) + "\u1680\u2000\u2001\u2002\u2028\u2029"),
    min_size=0,
    max_size=12,
).filter(lambda w: not any(c.isspace() and c not in "\x1c\x1d\x1e\x1f" for c in w))
value = st.one_of(
    word,
    st.sampled_from(["xfs", "raw", "lustre", "ext4", "10GiB", "1TB", "10", "data", "a-b", "copy-offload"]),
    st.from_regex(CAPACITY, fullmatch=True),
    st.from_regex(NAME, fullmatch=True),
)
key = st.one_of(
    st.sampled_from([*JOBDW_RULES, "pool", "color", "Type", ""]), word.filter(lambda w: "=" not in w)
)
token = st.one_of(
    st.tuples(key, st.none()).map(lambda kv: kv[0]),
    st.tuples(key, value).map(lambda kv: f"{kv[0]}={kv[1]}"),
)


def only_engine_errors(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (DirectiveError, ValidationFailed):
        return None


@FAST
@given(st.text(max_size=300))
def test_parse_directive_raises_only_directive_error_on_any_text(text: str) -> None:
    only_engine_errors(parse_directive, text)


@FAST
@given(st.lists(st.text(max_size=120), max_size=6), st.sampled_from([None, "slurm", "flux"]))
def test_validate_job_raises_only_validation_failed_on_any_texts(texts: list[str], wlm: str | None) -> None:
    only_engine_errors(validate_job, texts, wlm=wlm)


@FAST
@given(st.lists(st.one_of(st.none(), st.integers(), st.binary(max_size=8), st.text(max_size=20)), max_size=4))
def test_check_job_reports_rather_than_raises_on_any_entries(entries: list[Any]) -> None:
    _, errors = check_job(entries)
    assert all(isinstance(e, DirectiveError) for e in errors)


@FAST
@given(
    st.sampled_from(["jobdw", "persistentdw", "copy_in", "copy_out", "container", "create_persistent", "x"]),
    st.lists(token, max_size=7),
    separator,
)
def test_arbitrary_token_sequences_raise_only_engine_errors(
    command: str, tokens: list[str], sep: str
) -> None:
    only_engine_errors(validate_job, [sep.join(["#DW", command, *tokens])], wlm="slurm")


def oracle_accepts_jobdw(tokens: list[str]) -> bool:
    args: dict[str, str | None] = {}
    for tok in filter(None, tokens):  # an empty token vanishes when the line is split on whitespace
        k, eq, v = tok.partition("=")
        if k in args:
            return False
        args[k] = v if eq else None
    args.pop("pool", None)  # Slurm's key, removed before DWS validation
    for k, maybe in args.items():
        if k not in JOBDW_RULES or not maybe or not JOBDW_RULES[k](maybe):
            return False
    return all(r in args for r in REQUIRED)


# Mostly-valid jobdw lines, so that acceptance is exercised as well as refusal.
near_valid_jobdw = st.tuples(
    st.sampled_from(["xfs", "raw", "gfs2", "lustre", "ext4", "XFS", "", "xfs2"]).map(lambda v: f"type={v}"),
    st.one_of(st.from_regex(CAPACITY, fullmatch=True), value).map(lambda v: f"capacity={v}"),
    st.one_of(st.from_regex(NAME, fullmatch=True), value).map(lambda v: f"name={v}"),
    st.lists(token, max_size=2),
).flatmap(lambda t: st.permutations([t[0], t[1], t[2], *t[3]]))


@FAST
@given(st.one_of(st.lists(token, max_size=7), near_valid_jobdw))
def test_jobdw_is_accepted_exactly_when_every_rule_holds(tokens: list[str]) -> None:
    _, errors = check_job(["#DW jobdw " + " ".join(tokens)])
    assert (not errors) == oracle_accepts_jobdw(tokens)


@FAST
@given(st.one_of(word, st.from_regex(r"[0-9]{1,4}(KiB|KB|MiB|MB|GiB|GB|TiB|TB|kb|B|)", fullmatch=True)))
def test_capacity_is_accepted_exactly_when_it_matches_the_rule(capacity: str) -> None:
    _, errors = check_job([f"#DW jobdw type=xfs capacity={capacity} name=data"])
    assert (not errors) == nonzero_capacity(capacity)


@FAST
@given(st.lists(st.sampled_from(list(JOBDW_RULES)), min_size=1, max_size=4, unique=True), st.data())
def test_a_repeated_key_is_always_rejected(keys: list[str], data: st.DataObject) -> None:
    repeated = data.draw(st.sampled_from(keys))
    tokens = [f"{k}={data.draw(value)}" for k in [*keys, repeated]]
    tokens = data.draw(st.permutations(tokens))
    _, errors = check_job(["#DW jobdw " + " ".join(tokens)])
    assert any(e.reason.startswith(f"repeated argument '{repeated}'") for e in errors)


@FAST
@given(
    st.sampled_from(["jobdw", "copy_in", "w"]),
    st.dictionaries(key.filter(lambda k: "=" not in k), st.none() | word),
)
def test_formatting_then_parsing_gives_the_same_directive(command: str, args: dict[str, str | None]) -> None:
    args = {k: v for k, v in args.items() if k}
    parsed = parse_directive(format_directive(command, args))
    assert (parsed.command, parsed.args) == (command, args)


@FAST
@given(st.text(max_size=400))
def test_extraction_finds_only_prefixed_lines_in_order(text: str) -> None:
    found = extract_from_script(text)
    lines = [n for n, _ in found]
    assert lines == sorted(set(lines))
    assert all(d.startswith("#DW") for _, d in found)
    assert all(1 <= n <= text.count("\n") + 1 for n in lines)


@FAST
@given(st.one_of(st.text(max_size=80), st.lists(st.text(max_size=40), max_size=4)))
def test_flux_pieces_always_start_with_the_prefix(dw: str | list[str]) -> None:
    assert all(piece.startswith("#DW") and piece.strip() == piece for piece in split_flux(dw))


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=12,
)
rule_def = st.fixed_dictionaries(
    {
        "key": st.text(max_size=8),
        "type": st.sampled_from(["string", "integer", "bool", "list-of-string", "x"]),
    },
    optional={
        "pattern": st.text(max_size=8),
        "patterns": st.lists(st.text(max_size=6), max_size=2),
        "min": json_like,
        "isRequired": json_like,
    },
)


@FAST
@given(
    st.lists(
        st.one_of(json_like, st.builds(lambda d: {"spec": [{"command": "c", "ruleDefs": [d]}]}, rule_def))
    )
)
def test_any_ruleset_document_loads_or_raises_config_error(documents: list[Any]) -> None:
    with contextlib.suppress(ConfigError):
        RuleSet.from_documents(documents)
