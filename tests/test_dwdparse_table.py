"""The #DW grammar and DWDirectiveRule validation as one table, written from DESIGN Part 2 ("#DW grammar
(dwdparse)"): each row is a job's directives, the ruleset that judges them, and either the arguments
that parse or the problems (a substring of each message, in order) that `check_job` reports.

Rows marked "project:" assert where dwsbridge deliberately differs from upstream dwdparse: a bare key
that is not a bool is "requires a value" (upstream reads it as "true"), an empty value fails
isValueRequired, and bool values are always checked against true/false.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from dwsbridge.directives import RuleSet, bundled_ruleset, check_job

# One small DWDirectiveRule per rule type, so that each row exercises exactly one behaviour.
SITE_RULE: dict[str, Any] = {
    "apiVersion": "dataworkflowservices.github.io/v1alpha7",
    "kind": "DWDirectiveRule",
    "metadata": {"name": "table"},
    "spec": [
        {  # key matching: unanchored search, first match wins
            "command": "k",
            "ruleDefs": [
                {"key": "size", "type": "string", "pattern": "^[0-9]+$"},
                {"key": "^sizer$", "type": "string", "pattern": "^never$"},  # shadowed by "size"
                {"key": "^x_", "type": "string"},
                {"key": "^a.c$", "type": "string"},
                {"key": "(?i)^ci$", "type": "string"},
                {"key": "^exact$", "type": "bool"},
                {"key": "^free$", "type": "string"},
            ],
        },
        {  # bool
            "command": "b",
            "ruleDefs": [
                {"key": "^flag$", "type": "bool"},
                {"key": "^strict$", "type": "bool", "isValueRequired": True},
            ],
        },
        {  # integer: bounds are enforced only when non-zero
            "command": "i",
            "ruleDefs": [
                {"key": "^n$", "type": "integer", "min": 2, "max": 10},
                {"key": "^any$", "type": "integer"},
                {"key": "^lo$", "type": "integer", "min": 5},
                {"key": "^hi$", "type": "integer", "max": 5},
                {"key": "^neg$", "type": "integer", "min": -10, "max": -2},
            ],
        },
        {  # string
            "command": "s",
            "ruleDefs": [
                {"key": "^p$", "type": "string", "pattern": "ab"},
                {"key": "^anch$", "type": "string", "pattern": "^x[0-9]+$"},
                {"key": "^eq$", "type": "string", "pattern": "^b=c$"},
                {"key": "^free$", "type": "string"},
                {"key": "^must$", "type": "string", "isValueRequired": True},
            ],
        },
        {  # list-of-string
            "command": "l",
            "ruleDefs": [
                {"key": "^colors$", "type": "list-of-string", "patterns": ["^red$", "^blue$", "gr"]},
            ],
        },
        {  # uniqueWithin: scope "ids" is shared by commands u and w
            "command": "u",
            "ruleDefs": [
                {"key": "^id$", "type": "string", "uniqueWithin": "ids"},
                {"key": "^tag$", "type": "string", "uniqueWithin": "tags"},
            ],
        },
        {
            "command": "w",
            "ruleDefs": [{"key": "^id$", "type": "string", "uniqueWithin": "ids"}],
        },
        {  # isRequired
            "command": "r",
            "ruleDefs": [
                {"key": "^must$", "type": "string", "isRequired": True},
                {"key": "^need$", "type": "integer", "isRequired": True, "isValueRequired": True},
                {"key": "^opt$", "type": "string"},
            ],
        },
    ],
}

RULESETS = {
    "site": RuleSet.from_documents([SITE_RULE], source="table.yaml"),
    "nnf": bundled_ruleset(),
}


@dataclass(frozen=True)
class Ok:
    """Valid: the parsed `args` of each directive, in order (None is a bare key)."""

    args: tuple[dict[str, str | None], ...]


@dataclass(frozen=True)
class Bad:
    """Invalid: exactly these problems, each message containing its substring, in report order."""

    substrings: tuple[str, ...]


def ok(*args: dict[str, str | None]) -> Ok:
    return Ok(args)


def bad(*substrings: str) -> Bad:
    return Bad(substrings)


Job = str | Sequence[str | tuple[int, str]]


def case(name: str, job: Job, expect: Ok | Bad, rules: str = "site", marks: Any = ()) -> Any:
    """One row (a pytest.param); `marks` is where an xfail for a known discrepancy would go."""
    return pytest.param(job, rules, expect, id=name, marks=marks)


UNSUPPORTED = "unsupported argument"
NOT_BOOL = "is not a boolean"
NOT_INT = "is not an integer"

CASES = [
    # --- tokens: runs of whitespace, no quoting ---------------------------------------------------------
    case("single-spaces", "#DW k size=1 free=x", ok({"size": "1", "free": "x"})),
    case("runs-of-spaces", "#DW    k     size=1      free=x", ok({"size": "1", "free": "x"})),
    case("tabs", "#DW\tk\tsize=1\t\tfree=x", ok({"size": "1", "free": "x"})),
    case("mixed-tabs-spaces", "#DW \t k\t \tsize=1", ok({"size": "1"})),
    case("leading-trailing-space", "  \t#DW k size=1 \t\r\n", ok({"size": "1"})),
    case("vertical-tab-form-feed", "#DW\vk\fsize=1", ok({"size": "1"})),
    case("no-quoting", '#DW k free="a b"', bad(UNSUPPORTED + " 'b\"'")),
    case("no-escapes", r"#DW k free=a\ b", bad(UNSUPPORTED + " 'b'")),
    case("command-only", "#DW k", ok({})),
    # --- token 0 is exactly #DW -------------------------------------------------------------------------
    case("only-hash-dw", "#DW", bad("no command after '#DW'")),
    case("only-hash-dw-and-spaces", "#DW  \t ", bad("no command after '#DW'")),
    case("prefix-lower-case", "#dw k size=1", bad("starts with '#DW'")),
    case("prefix-doubled-hash", "##DW k size=1", bad("starts with '#DW'")),
    case("prefix-glued-to-command", "#DWk size=1", bad("put a space between '#DW' and the command")),
    case("prefix-with-punctuation", "#DW: k size=1", bad("is not '#DW'")),
    case("empty-line", "   ", bad("empty directive")),
    # --- command: token 1, case-sensitive ---------------------------------------------------------------
    case("command-upper-case", "#DW K size=1", bad("unknown command 'K'")),
    case("command-case-hint", "#DW B flag", bad("commands are case-sensitive: did you mean 'b'?")),
    case("unknown-command", "#DW nosuch size=1", bad("unknown command 'nosuch'")),
    case("unknown-command-lists-known", "#DW zz", bad("this site's rules accept: k, b, i, s, l, u, w, r")),
    case("command-that-looks-like-an-arg", "#DW size=1", bad("unknown command 'size=1'")),
    # --- key, key=value, a=b=c, key= --------------------------------------------------------------------
    case("split-at-first-equals", "#DW k free=b=c", ok({"free": "b=c"})),
    case("value-is-only-equals", "#DW k free==", ok({"free": "="})),
    case("split-value-checked-by-pattern", "#DW s eq=b=c", ok({"eq": "b=c"})),
    case("empty-value-is-a-value", "#DW k free=", ok({"free": ""})),
    case("bare-bool-key", "#DW k exact", ok({"exact": None})),
    # project: upstream reads a bare key as "true"; a bare string key is "requires a value" here.
    case("bare-string-key", "#DW k free", bad("argument 'free' requires a value: write free=<value>")),
    case("empty-key", "#DW k =v", bad(UNSUPPORTED + " ''")),
    # --- repeated keys ----------------------------------------------------------------------------------
    case("repeated-key", "#DW k size=1 size=2", bad("repeated argument 'size'")),
    case("repeated-key-same-value", "#DW k size=1 size=1", bad("repeated argument 'size'")),
    case("repeated-bare-key", "#DW k exact exact", bad("repeated argument 'exact'")),
    case("repeated-bare-then-valued", "#DW k exact exact=true", bad("repeated argument 'exact'")),
    case("repeated-empty-value", "#DW k free= free=", bad("repeated argument 'free'")),
    case("distinct-keys-same-rule", "#DW k size=1 mysize=2", ok({"size": "1", "mysize": "2"})),
    # --- rule matching: unanchored search, first match wins ---------------------------------------------
    case("unanchored-key-suffix", "#DW k mysize=3", ok({"mysize": "3"})),
    case("unanchored-key-infix", "#DW k my_size_x=3", ok({"my_size_x": "3"})),
    case("first-match-wins", "#DW k sizer=12", ok({"sizer": "12"})),
    case(
        "first-match-wins-its-pattern",
        "#DW k sizer=never",
        bad("argument 'sizer' value 'never' does not match ^[0-9]+$"),
    ),
    case("anchored-prefix-key", "#DW k x_anything=1", ok({"x_anything": "1"})),
    case("anchored-prefix-key-misses", "#DW k ax_foo=1", bad(UNSUPPORTED + " 'ax_foo' (k accepts: ")),
    case("key-regex-dot", "#DW k abc=1 a.c=2", ok({"abc": "1", "a.c": "2"})),
    case("key-regex-case-flag", "#DW k CI=1 ci=2", ok({"CI": "1", "ci": "2"})),
    case("key-case-sensitive", "#DW k EXACT=true", bad(UNSUPPORTED + " 'EXACT'")),
    case("anchored-key-longer", "#DW k exactly=true", bad(UNSUPPORTED + " 'exactly'")),
    case("unsupported-each-reported", "#DW k zz=1 yy", bad(UNSUPPORTED + " 'zz'", UNSUPPORTED + " 'yy'")),
    # --- bool -------------------------------------------------------------------------------------------
    case("bool-bare-means-true", "#DW b flag", ok({"flag": None})),
    case("bool-true", "#DW b flag=true", ok({"flag": "true"})),
    case("bool-false", "#DW b flag=false", ok({"flag": "false"})),
    case("bool-upper", "#DW b flag=TRUE strict=FALSE", ok({"flag": "TRUE", "strict": "FALSE"})),
    case("bool-mixed-case", "#DW b flag=tRuE strict=False", ok({"flag": "tRuE", "strict": "False"})),
    case("bool-value-required-bare", "#DW b strict", bad("argument 'strict' requires a value")),
    # project: an empty value fails isValueRequired.
    case("bool-value-required-empty", "#DW b strict=", bad("argument 'strict' requires a value")),
    case("bool-value-required-given", "#DW b strict=true", ok({"strict": "true"})),
    # project: bool values are always checked (true/false only; Go's ParseBool words are refused).
    case(
        "bool-yes", "#DW b flag=yes", bad("argument 'flag' value 'yes' is not a boolean: use true or false")
    ),
    case("bool-one", "#DW b flag=1", bad(NOT_BOOL)),
    case("bool-prefix-only", "#DW b flag=truex", bad(NOT_BOOL)),
    case("bool-empty", "#DW b flag=", bad("argument 'flag' value '' is not a boolean")),
    # --- integer ----------------------------------------------------------------------------------------
    case("int-at-min", "#DW i n=2", ok({"n": "2"})),
    case("int-at-max", "#DW i n=10", ok({"n": "10"})),
    case("int-below-min", "#DW i n=1", bad("argument 'n' value 1 is less than the minimum 2")),
    case("int-above-max", "#DW i n=11", bad("argument 'n' value 11 is greater than the maximum 10")),
    case("int-zero-below-min", "#DW i n=0", bad("less than the minimum 2")),
    case("int-negative-below-min", "#DW i n=-5", bad("value -5 is less than the minimum 2")),
    case("int-leading-zeros", "#DW i n=007", ok({"n": "007"})),
    case("int-plus-sign", "#DW i n=+3", ok({"n": "+3"})),
    case("int-decimal", "#DW i n=3.0", bad("argument 'n' value '3.0' is not an integer")),
    case("int-empty", "#DW i n=", bad("argument 'n' value '' is not an integer")),
    # project: upstream reads a bare key as "true" (then not an integer); here it needs a value.
    case("int-bare", "#DW i n", bad("argument 'n' requires a value")),
    case("int-no-bounds-negative", "#DW i any=-99999", ok({"any": "-99999"})),
    case("int-int64-max", "#DW i any=9223372036854775807", ok({"any": "9223372036854775807"})),
    case("int-overflow", "#DW i any=9223372036854775808", bad(NOT_INT)),
    case("int-min-only-no-max", "#DW i lo=1000000000", ok({"lo": "1000000000"})),
    case("int-min-only-below", "#DW i lo=4", bad("value 4 is less than the minimum 5")),
    case("int-max-only-no-min", "#DW i hi=-1000", ok({"hi": "-1000"})),
    case("int-max-only-above", "#DW i hi=6", bad("value 6 is greater than the maximum 5")),
    case("int-negative-bounds-in", "#DW i neg=-2 any=1", ok({"neg": "-2", "any": "1"})),
    case("int-negative-bounds-low", "#DW i neg=-10", ok({"neg": "-10"})),
    case("int-negative-max-enforced", "#DW i neg=-1", bad("value -1 is greater than the maximum -2")),
    case("int-negative-max-zero", "#DW i neg=0", bad("value 0 is greater than the maximum -2")),
    case("int-negative-min-enforced", "#DW i neg=-11", bad("value -11 is less than the minimum -10")),
    # --- string -----------------------------------------------------------------------------------------
    case("string-pattern-search-middle", "#DW s p=xaby", ok({"p": "xaby"})),
    case("string-pattern-miss", "#DW s p=ba", bad("argument 'p' value 'ba' does not match ab")),
    case("string-pattern-case-sensitive", "#DW s p=AB", bad("does not match ab")),
    case("string-anchored-pattern", "#DW s anch=x12", ok({"anch": "x12"})),
    case("string-anchored-trailing", "#DW s anch=x12y", bad("value 'x12y' does not match ^x[0-9]+$")),
    case("string-anchored-leading", "#DW s anch=yx12", bad("does not match ^x[0-9]+$")),
    case("string-pattern-empty-value", "#DW s p=", bad("value '' does not match ab")),
    case("string-no-pattern-anything", "#DW s free=/any/$DW_JOB_x,@:", ok({"free": "/any/$DW_JOB_x,@:"})),
    case("string-value-required-empty", "#DW s must=", bad("argument 'must' requires a value")),
    case("string-value-required-given", "#DW s must=x", ok({"must": "x"})),
    # --- list-of-string ---------------------------------------------------------------------------------
    case("list-one", "#DW l colors=red", ok({"colors": "red"})),
    case("list-two", "#DW l colors=red,blue", ok({"colors": "red,blue"})),
    case("list-unanchored-pattern", "#DW l colors=green,agray", ok({"colors": "green,agray"})),
    case(
        "list-word-matches-none",
        "#DW l colors=red,pink",
        bad("argument 'colors' item 'pink' does not match any of ^red$, ^blue$, gr"),
    ),
    case("list-case-sensitive", "#DW l colors=RED", bad("item 'RED' does not match any of")),
    case("list-repeat", "#DW l colors=red,red", bad("argument 'colors' lists 'red' more than once")),
    case("list-repeat-later", "#DW l colors=red,blue,green,blue", bad("lists 'blue' more than once")),
    case("list-trailing-comma", "#DW l colors=red,", bad("item '' does not match any of")),
    case("list-empty", "#DW l colors=", bad("item '' does not match any of")),
    # project: upstream reads a bare key as "true"; here it needs a value.
    case("list-bare", "#DW l colors", bad("argument 'colors' requires a value")),
    # --- uniqueWithin across the directives of a job ----------------------------------------------------
    case("unique-distinct", ["#DW u id=a", "#DW u id=b"], ok({"id": "a"}, {"id": "b"})),
    case(
        "unique-repeat",
        [(3, "#DW u id=a"), (7, "#DW u id=a")],
        bad("argument 'id' value 'a' is already used by the directive on line 3; values of 'ids'"),
    ),
    case(
        "unique-repeat-without-lines",
        ["#DW u id=a", "#DW u id=a"],
        bad("already used by the directive on '#DW u id=a'"),
    ),
    case("unique-scope-spans-commands", ["#DW u id=a", "#DW w id=a"], bad("value 'a' is already used")),
    case("unique-scopes-are-separate", ["#DW u id=a tag=a"], ok({"id": "a", "tag": "a"})),
    case("unique-scopes-across-lines", ["#DW u id=a", "#DW u tag=a"], ok({"id": "a"}, {"tag": "a"})),
    case("unique-case-sensitive", ["#DW u id=a", "#DW u id=A"], ok({"id": "a"}, {"id": "A"})),
    case(
        "unique-each-repeat-reported",
        [(1, "#DW u id=a"), (2, "#DW u id=a"), (3, "#DW u id=a")],
        bad("on line 1", "on line 1"),
    ),
    # --- isRequired -------------------------------------------------------------------------------------
    case("required-present", "#DW r must=x need=1", ok({"must": "x", "need": "1"})),
    case("required-missing", "#DW r need=1", bad("missing required argument 'must'")),
    case(
        "required-all-missing",
        "#DW r opt=x",
        bad("missing required argument 'must'", "missing required argument 'need'"),
    ),
    case("required-empty-is-present", "#DW r must= need=1", ok({"must": "", "need": "1"})),
    # project: an empty value fails isValueRequired; the key still counts as present.
    case("required-value-required-empty", "#DW r must=x need=", bad("argument 'need' requires a value")),
    # project: a bare string key needs a value; the key still counts as present.
    case("required-bare", "#DW r must need=1", bad("argument 'must' requires a value")),
    # --- the bundled NNF ruleset ------------------------------------------------------------------------
    case(
        "nnf-jobdw-full",
        "#DW jobdw type=lustre capacity=1TiB name=my-data profile=fast"
        " requires=copy-offload,user-container-auth",
        ok(
            {
                "type": "lustre",
                "capacity": "1TiB",
                "name": "my-data",
                "profile": "fast",
                "requires": "copy-offload,user-container-auth",
            }
        ),
        "nnf",
    ),
    case(
        "nnf-jobdw-tabs",
        "#DW\tjobdw  type=gfs2\tcapacity=5GB name=ab",
        ok({"type": "gfs2", "capacity": "5GB", "name": "ab"}),
        "nnf",
    ),
    case(
        "nnf-type-case-sensitive",
        "#DW jobdw type=XFS capacity=1GiB name=ab",
        bad("argument 'type' value 'XFS' does not match ^(raw|xfs|gfs2|lustre)$"),
        "nnf",
    ),
    case(
        "nnf-capacity-unit-case",
        "#DW jobdw type=xfs capacity=10gib name=ab",
        bad("argument 'capacity' value '10gib' does not match"),
        "nnf",
    ),
    case(
        "nnf-name-upper-case",
        "#DW jobdw type=xfs capacity=1GiB name=Ab",
        bad("argument 'name' value 'Ab' does not match ^[a-z][a-z0-9-]+$"),
        "nnf",
    ),
    case(
        "nnf-name-one-char",
        "#DW jobdw type=xfs capacity=1GiB name=a",
        bad("value 'a' does not match ^[a-z][a-z0-9-]+$"),
        "nnf",
    ),
    case(
        "nnf-jobdw-nothing",
        "#DW jobdw",
        bad(
            "missing required argument 'type'",
            "missing required argument 'capacity'",
            "missing required argument 'name'",
        ),
        "nnf",
    ),
    case(
        "nnf-profile-bare",
        "#DW jobdw type=xfs capacity=1GiB name=ab profile",
        bad("argument 'profile' requires a value"),
        "nnf",
    ),
    case(
        "nnf-requires-unknown",
        "#DW persistentdw name=ab requires=copy-offload,magic",
        bad("argument 'requires' item 'magic' does not match any of ^copy-offload$, ^user-container-auth$"),
        "nnf",
    ),
    case(
        "nnf-persistentdw-requires",
        "#DW persistentdw name=ab requires=user-container-auth",
        ok({"name": "ab", "requires": "user-container-auth"}),
        "nnf",
    ),
    case(
        "nnf-create-persistent-no-capacity",
        "#DW create_persistent type=xfs name=keep",
        ok({"type": "xfs", "name": "keep"}),
        "nnf",
    ),
    case(
        "nnf-copy-in-missing-destination",
        ["#DW jobdw type=xfs capacity=1GiB name=ab", "#DW copy_in source=/lus/in"],
        bad("missing required argument 'destination'"),
        "nnf",
    ),
    case(
        "nnf-container-storage-key",
        ["#DW jobdw type=lustre capacity=1GiB name=ab", "#DW container name=c1 profile=p1 DW_JOB_my_fs=ab"],
        ok(
            {"type": "lustre", "capacity": "1GiB", "name": "ab"},
            {"name": "c1", "profile": "p1", "DW_JOB_my_fs": "ab"},
        ),
        "nnf",
    ),
    case(
        "nnf-container-storage-key-case",
        ["#DW jobdw type=lustre capacity=1GiB name=ab", "#DW container name=c1 profile=p1 DW_JOB_Fs=ab"],
        bad(UNSUPPORTED + " 'DW_JOB_Fs'"),
        "nnf",
    ),
    case(
        "nnf-command-case-hint",
        "#DW JobDW type=xfs capacity=1GiB name=ab",
        bad("commands are case-sensitive: did you mean 'jobdw'?"),
        "nnf",
    ),
    case(
        "nnf-jobdw-name-unique",
        [(1, "#DW jobdw type=xfs capacity=1GiB name=ab"), (2, "#DW jobdw type=raw capacity=1GiB name=ab")],
        bad("value 'ab' is already used by the directive on line 1; values of 'jobdw_name'"),
        "nnf",
    ),
    case(
        "nnf-unsupported-argument",
        "#DW persistentdw name=ab type=xfs",
        bad("unsupported argument 'type' (persistentdw accepts: name, requires)"),
        "nnf",
    ),
]


@pytest.mark.parametrize(("job", "rules", "expect"), CASES)
def test_dwdparse_table(job: Job, rules: str, expect: Ok | Bad) -> None:
    texts = [job] if isinstance(job, str) else list(job)
    directives, errors = check_job(texts, ruleset=RULESETS[rules])
    reasons = [e.reason for e in errors]
    if isinstance(expect, Ok):
        assert reasons == []
        assert [d.args for d in directives] == list(expect.args)
    else:
        assert len(reasons) == len(expect.substrings), reasons
        for reason, wanted in zip(reasons, expect.substrings, strict=True):
            assert wanted in reason, reasons
