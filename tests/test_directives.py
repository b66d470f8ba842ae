"""The #DW engine as a specification: dwdparse grammar, DWDirectiveRule semantics, nnf-sos's
cross-directive rules, Slurm script extraction, Flux splitting and Slurm's pool= key."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from dwsbridge.directives import (
    BUNDLED_RULESET,
    Directive,
    RuleSet,
    check_job,
    extract_from_script,
    format_directive,
    job_directives,
    job_env_name,
    parse_directive,
    script_directives,
    split_flux,
    split_staging_path,
    strip_slurm_keys,
    validate_job,
)
from dwsbridge.errors import ConfigError, DirectiveError, ValidationFailed

JOBDW = "#DW jobdw type=xfs capacity=10GiB name=data"

# A site ruleset exercising every rule type and flag.
SITE_RULES = """\
apiVersion: dataworkflowservices.github.io/v1alpha7
kind: DWDirectiveRule
metadata:
  name: site
spec:
  - command: "widget"
    watchStates: Proposal,Setup
    ruleDefs:
      - key: "^count$"
        type: "integer"
        min: 2
        max: 10
        isRequired: true
        isValueRequired: true
      - key: "^anycount$"
        type: "integer"
      - key: "^fast$"
        type: "bool"
      - key: "^strict$"
        type: "bool"
        isValueRequired: true
      - key: "^label$"
        type: "string"
        uniqueWithin: "widget_label"
      - key: "^free$"
        type: "string"
      - key: "^tags$"
        type: "list-of-string"
        patterns: ["^red$", "^blue$"]
      - key: "opt"
        type: "string"
        pattern: "^o"
      - key: "^option$"
        type: "string"
        pattern: "^never-reached$"
"""


@pytest.fixture(scope="module")
def site() -> RuleSet:
    return RuleSet.from_yaml(SITE_RULES, source="site.yaml")


Entries = Sequence[str | tuple[int, str]]


def reasons(texts: Entries, **kwargs: Any) -> list[str]:
    _, errors = check_job(texts, **kwargs)
    return [e.reason for e in errors]


def one_reason(texts: Entries, **kwargs: Any) -> str:
    found = reasons(texts, **kwargs)
    assert len(found) == 1, found
    return found[0]


# --- grammar (dwdparse BuildArgsMap) ----------------------------------------------------------------


def test_tokens_are_split_on_runs_of_whitespace() -> None:
    d = parse_directive("#DW   jobdw\ttype=xfs \t capacity=1GiB  name=a1")
    assert d.command == "jobdw"
    assert d.args == {"type": "xfs", "capacity": "1GiB", "name": "a1"}


def test_leading_and_trailing_whitespace_is_ignored() -> None:
    d = parse_directive("  #DW jobdw name=ab  \r")
    assert d.command == "jobdw" and d.text == "#DW jobdw name=ab"


def test_ascii_unit_separator_is_not_whitespace_as_in_go() -> None:
    d = parse_directive("#DW jobdw name=a\x1fb")
    assert d.args == {"name": "a\x1fb"}


def test_no_break_space_separates_tokens_as_in_go() -> None:
    assert parse_directive("#DW jobdw\xa0name=ab").args == {"name": "ab"}


def test_first_token_must_be_exactly_hash_dw() -> None:
    with pytest.raises(DirectiveError, match="starts with '#DW'"):
        parse_directive("#BB jobdw name=a")


def test_prefix_is_case_sensitive() -> None:
    with pytest.raises(DirectiveError):
        parse_directive("#dw jobdw name=a")


def test_prefix_glued_to_command_is_rejected_with_a_hint() -> None:
    with pytest.raises(DirectiveError, match="put a space between '#DW' and the command"):
        parse_directive("#DWjobdw type=xfs")


def test_line_that_is_only_hash_dw_is_a_clean_error() -> None:
    with pytest.raises(DirectiveError, match="no command after '#DW'"):
        parse_directive("#DW")


def test_empty_text_is_a_clean_error() -> None:
    with pytest.raises(DirectiveError, match="empty directive"):
        parse_directive("   ")


def test_second_token_is_the_command_case_sensitive() -> None:
    assert parse_directive("#DW JobDW name=a").command == "JobDW"


def test_bare_key_has_no_value() -> None:
    d = parse_directive("#DW jobdw fast")
    assert d.args == {"fast": None}
    assert d.has("fast") and d.get("fast") is None


def test_key_with_equals_and_nothing_after_is_the_empty_string() -> None:
    d = parse_directive("#DW jobdw profile=")
    assert d.args["profile"] == ""


def test_value_is_split_at_the_first_equals_sign() -> None:
    assert parse_directive("#DW jobdw a=b=c").args == {"a": "b=c"}


def test_repeated_key_is_an_error_naming_the_key() -> None:
    with pytest.raises(DirectiveError) as info:
        parse_directive("#DW jobdw name=a type=xfs name=b", line=4)
    assert info.value.argument == "name" and info.value.line == 4
    assert "repeated argument 'name'" in str(info.value)


def test_repeated_bare_and_valued_key_is_an_error() -> None:
    with pytest.raises(DirectiveError, match="repeated argument 'fast'"):
        parse_directive("#DW jobdw fast fast=true")


def test_parse_error_names_line_and_directive() -> None:
    with pytest.raises(DirectiveError) as info:
        parse_directive("#DWx", line=7)
    assert str(info.value).startswith("line 7: #DWx: ")


def test_non_string_directive_is_a_directive_error() -> None:
    with pytest.raises(DirectiveError, match="must be a string"):
        parse_directive(42)  # type: ignore[arg-type]


def test_directive_keeps_line_and_text() -> None:
    d = parse_directive(JOBDW, line=3)
    assert (d.line, d.text, d.name) == (3, JOBDW, "data")


def test_format_directive_writes_bare_keys_and_values() -> None:
    assert format_directive("jobdw", {"name": "a", "fast": None, "p": ""}) == "#DW jobdw name=a fast p="


# --- ruleset loading -------------------------------------------------------------------------------


def test_bundled_ruleset_is_the_default() -> None:
    rules = RuleSet.load()
    assert rules.source == BUNDLED_RULESET
    assert set(rules.commands) == {
        "jobdw",
        "create_persistent",
        "destroy_persistent",
        "persistentdw",
        "copy_in",
        "copy_out",
        "container",
    }


def test_bundled_ruleset_is_parsed_once() -> None:
    assert RuleSet.load() is RuleSet.load()


def test_ruleset_file_may_hold_several_documents(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(SITE_RULES + "---\n" + SITE_RULES.replace('"widget"', '"gadget"'))
    assert RuleSet.load(path).commands == ["widget", "gadget"]


def test_driver_id_defaults_to_the_rule_name(site: RuleSet) -> None:
    rule = site.rules_for("widget")[0]
    assert rule.driver_id == "site" and rule.watch_states == ("Proposal", "Setup")


def test_missing_ruleset_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read ruleset"):
        RuleSet.load(tmp_path / "absent.yaml")


def test_ruleset_that_is_not_yaml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        RuleSet.from_yaml("spec: [unclosed", source="bad.yaml")


def test_ruleset_with_invalid_regex_is_a_config_error_at_load() -> None:
    bad = SITE_RULES.replace('pattern: "^o"', 'pattern: "(unclosed"')
    with pytest.raises(ConfigError, match="invalid regular expression"):
        RuleSet.from_yaml(bad)


def test_ruleset_with_invalid_key_regex_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid regular expression"):
        RuleSet.from_yaml(SITE_RULES.replace('key: "^count$"', 'key: "[count"'))


def test_ruleset_with_unknown_rule_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unsupported rule type 'float'"):
        RuleSet.from_yaml(SITE_RULES.replace('type: "integer"\n        min', 'type: "float"\n        min'))


def test_ruleset_of_another_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="expected DWDirectiveRule"):
        RuleSet.from_yaml(SITE_RULES.replace("kind: DWDirectiveRule", "kind: Workflow"))


def test_ruleset_without_spec_list_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'spec' must be a list"):
        RuleSet.from_yaml("kind: DWDirectiveRule\nspec: 3\n")


def test_ruleset_with_no_commands_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="defines no commands"):
        RuleSet.from_yaml("")


def test_ruleset_flag_of_wrong_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'isRequired' must be a bool"):
        RuleSet.from_yaml(SITE_RULES.replace("isRequired: true", 'isRequired: "yes"'))


# --- rule validation (dwdparse ValidateArgs) ---------------------------------------------------------


def test_directive_without_a_rule_for_its_command_is_invalid() -> None:
    assert one_reason(["#DW stage_in source=/a"]).startswith("unknown command 'stage_in'")


def test_unknown_command_differing_only_in_case_gets_a_hint() -> None:
    assert "did you mean 'jobdw'?" in one_reason(["#DW JOBDW type=xfs capacity=1GiB name=ab"])


def test_argument_matching_no_rule_is_unsupported() -> None:
    reason = one_reason([JOBDW + " color=blue"])
    assert reason.startswith("unsupported argument 'color'")
    assert "type, capacity, name, profile, requires" in reason


def test_rule_keys_are_unanchored_searches(site: RuleSet) -> None:
    assert reasons(["#DW widget count=3 myopt=o1"], ruleset=site) == []


def test_first_matching_rule_wins(site: RuleSet) -> None:
    # "option" matches the unanchored "opt" rule (pattern ^o) before "^option$" (never-reached).
    assert reasons(["#DW widget count=3 option=ok"], ruleset=site) == []


def test_required_argument_must_be_present() -> None:
    assert one_reason(["#DW jobdw type=xfs name=ab"]) == "missing required argument 'capacity'"


def test_missing_required_error_names_the_argument() -> None:
    _, errors = check_job(["#DW jobdw type=xfs name=ab"])
    assert errors[0].argument == "capacity"


def test_bare_bool_key_means_true(site: RuleSet) -> None:
    assert reasons(["#DW widget count=3 fast"], ruleset=site) == []


def test_bare_bool_key_with_value_required_is_an_error(site: RuleSet) -> None:
    assert one_reason(["#DW widget count=3 strict"], ruleset=site).startswith(
        "argument 'strict' requires a value"
    )


def test_bare_string_key_requires_a_value(site: RuleSet) -> None:
    assert one_reason(["#DW widget count=3 free"], ruleset=site).startswith(
        "argument 'free' requires a value"
    )


def test_empty_value_fails_is_value_required() -> None:
    assert one_reason([JOBDW + " profile="]).startswith("argument 'profile' requires a value")


def test_empty_value_is_a_value_when_not_required(site: RuleSet) -> None:
    assert reasons(["#DW widget count=3 free="], ruleset=site) == []


def test_integer_value_must_be_an_integer(site: RuleSet) -> None:
    assert (
        one_reason(["#DW widget count=three"], ruleset=site)
        == "argument 'count' value 'three' is not an integer"
    )


def test_integer_accepts_a_sign_like_go_atoi(site: RuleSet) -> None:
    assert reasons(["#DW widget count=+4 anycount=-7"], ruleset=site) == []


def test_integer_rejects_underscores_that_python_int_would_take(site: RuleSet) -> None:
    assert "not an integer" in one_reason(["#DW widget count=1_0"], ruleset=site)


def test_integer_outside_int64_is_not_an_integer(site: RuleSet) -> None:
    assert "not an integer" in one_reason([f"#DW widget count=3 anycount={2**63}"], ruleset=site)


def test_integer_above_max_is_an_error(site: RuleSet) -> None:
    assert one_reason(["#DW widget count=11"], ruleset=site) == (
        "argument 'count' value 11 is greater than the maximum 10"
    )


def test_integer_below_min_is_an_error(site: RuleSet) -> None:
    assert one_reason(["#DW widget count=1"], ruleset=site) == (
        "argument 'count' value 1 is less than the minimum 2"
    )


def test_zero_min_and_max_are_not_enforced(site: RuleSet) -> None:
    assert reasons(["#DW widget count=2 anycount=-99999999"], ruleset=site) == []


def test_bool_accepts_true_and_false_in_any_case(site: RuleSet) -> None:
    assert reasons(["#DW widget count=3 fast=TRUE strict=False"], ruleset=site) == []


def test_bool_rejects_other_words(site: RuleSet) -> None:
    assert one_reason(["#DW widget count=3 fast=yes"], ruleset=site).startswith(
        "argument 'fast' value 'yes' is not a boolean"
    )


def test_string_pattern_must_match() -> None:
    reason = one_reason(["#DW jobdw type=ext4 capacity=1GiB name=ab"])
    assert reason == "argument 'type' value 'ext4' does not match ^(raw|xfs|gfs2|lustre)$"


def test_string_pattern_is_an_unanchored_search(site: RuleSet) -> None:
    assert reasons(["#DW widget count=3 opt=oops"], ruleset=site) == []
    assert "does not match ^o" in one_reason(["#DW widget count=3 opt=xo"], ruleset=site)


def test_capacity_error_reads_as_the_issue_example() -> None:
    _, errors = check_job([(3, "#DW jobdw type=xfs capacity=10 name=st")])
    assert [str(e) for e in errors] == [
        "line 3: #DW jobdw type=xfs capacity=10 name=st: argument 'capacity' value '10' does not match "
        r"^\d+(KiB|KB|MiB|MB|GiB|GB|TiB|TB)$"
    ]


def test_capacity_digits_are_ascii_only_as_in_go() -> None:
    assert "does not match" in one_reason(["#DW jobdw type=xfs capacity=\u0661\u0660GiB name=ab"])


def test_list_of_string_accepts_allowed_words() -> None:
    assert reasons([JOBDW + " requires=copy-offload,user-container-auth"]) == []


def test_list_of_string_rejects_a_word_matching_no_pattern() -> None:
    assert one_reason([JOBDW + " requires=copy-offload,telepathy"]).startswith(
        "argument 'requires' item 'telepathy' does not match any of"
    )


def test_list_of_string_rejects_repeated_words() -> None:
    assert one_reason([JOBDW + " requires=copy-offload,copy-offload"]) == (
        "argument 'requires' lists 'copy-offload' more than once"
    )


def test_unique_within_rejects_a_value_used_twice_in_a_job() -> None:
    reason = one_reason([(1, JOBDW), (2, "#DW jobdw type=gfs2 capacity=1GiB name=data")])
    assert "value 'data' is already used by the directive on line 1" in reason
    assert "'jobdw_name'" in reason


def test_unique_within_spans_directives_of_a_job_only(site: RuleSet) -> None:
    assert reasons(["#DW widget count=3 label=a"], ruleset=site) == []
    assert reasons(["#DW widget count=3 label=a"], ruleset=site) == []


def test_same_value_in_different_unique_scopes_is_fine() -> None:
    assert reasons(["#DW jobdw type=xfs capacity=1GiB name=ab", "#DW persistentdw name=ab"]) == []


def test_every_problem_of_a_job_is_reported() -> None:
    found = reasons(
        [(1, "#DW jobdw type=ext4 capacity=10 name=X"), (2, "#DW nope"), (3, "#DW persistentdw name=ab z")]
    )
    assert len(found) == 5


def test_errors_are_ordered_by_line() -> None:
    _, errors = check_job([(5, "#DW nope"), (2, "#DW persistentdw")])
    assert [e.line for e in errors] == [2, 5]


def test_validate_job_returns_directives_when_valid() -> None:
    directives = validate_job([(4, JOBDW)])
    assert directives == [Directive(JOBDW, 4, "jobdw", {"type": "xfs", "capacity": "10GiB", "name": "data"})]


def test_validate_job_raises_validation_failed_with_every_error() -> None:
    with pytest.raises(ValidationFailed) as info:
        validate_job(["#DW nope", "#DW persistentdw"])
    assert len(info.value.errors) == 2
    assert all(isinstance(e, DirectiveError) for e in info.value.errors)


def test_a_job_without_directives_is_valid() -> None:
    assert validate_job([]) == []


def test_non_string_entries_are_reported_not_raised() -> None:
    assert "must be a string" in one_reason([None])  # type: ignore[list-item]


# --- cross-directive rules (nnf-sos at Proposal) ----------------------------------------------------


def test_create_persistent_alone_is_valid() -> None:
    assert reasons(["#DW create_persistent type=xfs capacity=1GiB name=keep"]) == []


def test_create_persistent_must_be_the_only_directive() -> None:
    reason = one_reason(["#DW create_persistent type=xfs capacity=1GiB name=keep", JOBDW])
    assert reason.startswith("create_persistent must be the only directive of its job (this job has 2)")


def test_destroy_persistent_must_be_the_only_directive() -> None:
    assert "destroy_persistent must be the only directive" in one_reason(
        ["#DW destroy_persistent name=keep", "#DW persistentdw name=other"]
    )


def test_one_container_is_allowed() -> None:
    assert reasons([JOBDW, "#DW container name=ab profile=copy-offload-default"]) == []


def test_a_second_container_is_an_error_pointing_at_the_first() -> None:
    reason = one_reason(
        [(1, "#DW container name=ab profile=pa"), (2, "#DW container name=cd profile=pc")],
    )
    assert reason == "only one container directive is allowed per job; the first is on line 1"


def test_copy_in_to_a_named_jobdw_is_valid() -> None:
    assert reasons([JOBDW, "#DW copy_in source=/lus/in destination=$DW_JOB_data/in"]) == []


def test_copy_path_may_be_the_jobdw_root() -> None:
    assert reasons([JOBDW, "#DW copy_out source=$DW_JOB_data destination=/lus/out"]) == []


def test_dashes_in_a_jobdw_name_are_underscores_in_the_variable() -> None:
    jobdw = "#DW jobdw type=xfs capacity=1GiB name=my-data"
    assert reasons([jobdw, "#DW copy_in source=/lus/in destination=$DW_JOB_my_data/x"]) == []


def test_copy_to_an_unknown_jobdw_is_an_error() -> None:
    reason = one_reason([JOBDW, "#DW copy_in source=/lus/in destination=$DW_JOB_other/x"])
    assert "names jobdw storage 'other'" in reason and "its jobdw names: data" in reason


def test_copy_to_a_raw_jobdw_is_an_error() -> None:
    raw = "#DW jobdw type=raw capacity=1GiB name=blk"
    assert "data movement cannot use raw job storage 'blk'" in one_reason(
        [raw, "#DW copy_in source=/lus/in destination=$DW_JOB_blk"]
    )


def test_copy_from_a_persistentdw_is_valid() -> None:
    assert (
        reasons(
            ["#DW persistentdw name=shared", "#DW copy_out source=$DW_PERSISTENT_shared/r destination=/o"]
        )
        == []
    )


def test_copy_from_a_persistent_instance_without_persistentdw_is_an_error() -> None:
    assert "names persistentdw storage 'shared'" in one_reason(
        [JOBDW, "#DW copy_out source=$DW_PERSISTENT_shared/r destination=/o"]
    )


def test_copy_path_that_is_relative_is_an_error() -> None:
    reason = one_reason([JOBDW, "#DW copy_in source=in destination=$DW_JOB_data"])
    assert reason.startswith("argument 'source' value 'in' must be $DW_JOB_<name>[/path]")


def test_copy_path_with_braces_gets_a_hint() -> None:
    assert "without braces" in one_reason([JOBDW, "#DW copy_in source=/a destination=${DW_JOB_data}"])


def test_copy_error_names_the_argument() -> None:
    _, errors = check_job([JOBDW, "#DW copy_in source=/a destination=rel"])
    assert errors[0].argument == "destination"


def test_split_staging_path_reads_kind_name_and_path() -> None:
    assert split_staging_path("$DW_JOB_my_data/a/b") == ("job", "my-data", "/a/b")
    assert split_staging_path("$DW_PERSISTENT_p") == ("persistent", "p", "")
    assert split_staging_path("/lus/x") == ("global", "", "/lus/x")


def test_job_env_name_writes_dashes_as_underscores() -> None:
    assert job_env_name("my-data") == "DW_JOB_my_data"


# --- Slurm script extraction --------------------------------------------------------------------------


def script(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def test_extraction_reads_directives_after_the_shebang_with_line_numbers() -> None:
    found = extract_from_script(
        script("""
        #!/bin/bash
        #SBATCH -N 1
        #DW jobdw type=xfs capacity=1GiB name=ab
        """)
    )
    assert found == [(3, "#DW jobdw type=xfs capacity=1GiB name=ab")]


def test_extraction_stops_at_the_first_non_comment_line() -> None:
    found = script_directives("#!/bin/sh\n#DW persistentdw name=ab\necho hi\n#DW persistentdw name=cd\n")
    assert found == [(2, "#DW persistentdw name=ab")]


def test_extraction_skips_empty_lines_as_slurm_strtok_does() -> None:
    assert script_directives("#!/bin/sh\n\n\n#DW persistentdw name=ab\n") == [(4, "#DW persistentdw name=ab")]


def test_extraction_stops_at_a_line_of_spaces() -> None:
    assert script_directives("#!/bin/sh\n  \n#DW persistentdw name=ab\n") == []


def test_extraction_stops_at_an_indented_directive() -> None:
    assert script_directives("#!/bin/sh\n  #DW persistentdw name=ab\n") == []


def test_hash_dw_glued_to_the_command_is_extracted_and_fails_to_parse() -> None:
    found = script_directives("#!/bin/sh\n#DWjobdw type=xfs\n")
    assert found == [(2, "#DWjobdw type=xfs")]
    assert "put a space" in one_reason(found)


def test_trailing_nul_byte_is_ignored() -> None:
    assert script_directives("#DW persistentdw name=ab\x00") == [(1, "#DW persistentdw name=ab")]


def test_trailing_whitespace_of_a_directive_is_trimmed() -> None:
    assert script_directives("#DW persistentdw name=ab  \r\n") == [(1, "#DW persistentdw name=ab")]


def test_other_comment_lines_are_not_directives() -> None:
    assert script_directives("# DW jobdw\n#dw jobdw\n#SBATCH --bb x\n") == []


def test_backslash_continues_a_directive_on_the_next_directive_line() -> None:
    found = script_directives("#DW jobdw type=xfs \\\n#DW   capacity=1GiB name=ab\n")
    assert found == [(1, "#DW jobdw type=xfs capacity=1GiB name=ab")]


def test_continuation_without_space_keeps_the_next_lines_spacing() -> None:
    assert script_directives("#DW jobdw type=xfs\\\n#DW name=ab\n") == [(1, "#DW jobdw type=xfs name=ab")]


def test_continuation_ends_at_a_comment_that_is_not_a_directive() -> None:
    found = script_directives("#DW persistentdw name=ab \\\n# note\n#DW persistentdw name=cd\n")
    assert found == [(1, "#DW persistentdw name=ab"), (3, "#DW persistentdw name=cd")]


def test_extraction_honours_another_prefix() -> None:
    assert extract_from_script("#BB create\n#DW x\n", prefix="#BB") == [(1, "#BB create")]


def test_script_without_directives_gives_nothing() -> None:
    assert script_directives("#!/bin/bash\necho hello\n") == []


# --- Flux ---------------------------------------------------------------------------------------------


def test_flux_string_is_split_on_hash_dw_space() -> None:
    assert split_flux("#DW jobdw name=a #DW copy_in source=/x") == [
        "#DW jobdw name=a",
        "#DW copy_in source=/x",
    ]


def test_flux_list_items_may_hold_several_directives() -> None:
    assert split_flux(["#DW a x=1 #DW b", "#DW c"]) == ["#DW a x=1", "#DW b", "#DW c"]


def test_flux_blank_pieces_are_dropped() -> None:
    assert split_flux("  #DW a   #DW   ") == ["#DW a"]


def test_flux_text_without_prefix_is_prefixed_as_flux_coral2_does() -> None:
    assert split_flux("jobdw name=a") == ["#DW jobdw name=a"]


def test_flux_rejects_non_string_types() -> None:
    with pytest.raises(DirectiveError, match="expected a string or a list of strings, not int"):
        split_flux(5)


def test_flux_rejects_non_string_list_items() -> None:
    with pytest.raises(DirectiveError, match="item 1 is a dict"):
        split_flux(["#DW a", {"x": 1}])


def test_flux_preset_name_is_replaced_by_its_directives() -> None:
    assert split_flux(" small ", presets={"small": "#DW jobdw name=s1"}) == ["#DW jobdw name=s1"]


def test_job_directives_reads_flux_input_as_a_dw_attribute() -> None:
    assert job_directives("#DW a #DW b", "flux") == ["#DW a", "#DW b"]


def test_job_directives_reads_slurm_input_as_a_script() -> None:
    assert job_directives("#DW a\n#DW b\n", "slurm") == [(1, "#DW a"), (2, "#DW b")]


# --- Slurm's pool= --------------------------------------------------------------------------------------


POOLED = "#DW jobdw type=xfs capacity=10GiB name=data pool=dws"


def test_strip_slurm_keys_removes_pool_from_args_and_text() -> None:
    d = strip_slurm_keys(parse_directive("#DW jobdw  type=xfs pool=dws  name=ab"))
    assert d.args == {"type": "xfs", "name": "ab"}
    assert d.text == "#DW jobdw  type=xfs  name=ab"


def test_strip_slurm_keys_leaves_a_directive_without_pool_alone() -> None:
    d = parse_directive(JOBDW)
    assert strip_slurm_keys(d) is d


def test_pool_is_removed_before_dws_validation() -> None:
    assert validate_job([POOLED], wlm="slurm")[0].text == JOBDW


def test_pool_is_accepted_and_removed_without_a_wlm() -> None:
    assert validate_job([POOLED])[0].args == {"type": "xfs", "capacity": "10GiB", "name": "data"}


def test_pool_is_judged_by_the_rules_when_not_stripped_as_dws_would() -> None:
    assert one_reason([POOLED], strip_pool=False).startswith("unsupported argument 'pool'")


def test_slurm_requires_pool_beside_capacity() -> None:
    _, errors = check_job([(2, JOBDW)], wlm="slurm", pool="rabbits")
    assert [str(e) for e in errors] == [
        f"line 2: {JOBDW}: Slurm requires pool=<pool> on a line with capacity=; add pool=rabbits"
    ]


def test_missing_pool_is_fine_for_flux() -> None:
    assert reasons([JOBDW], wlm="flux") == []


def test_slurm_pool_must_name_the_clusters_pool() -> None:
    assert one_reason([POOLED.replace("pool=dws", "pool=other")], wlm="slurm").endswith("write pool=dws")


def test_slurm_pool_without_a_name_is_an_error() -> None:
    assert "needs the burst-buffer pool's name" in one_reason(
        [POOLED.replace("pool=dws", "pool=")], wlm="slurm"
    )


def test_pool_on_a_line_without_capacity_elsewhere_is_unsupported() -> None:
    assert one_reason(["#DW persistentdw name=ab pool=dws"]).startswith("unsupported argument 'pool'")


def test_pool_error_shows_the_users_text_with_pool() -> None:
    _, errors = check_job([(1, "#DW jobdw type=ext4 capacity=1GiB name=ab pool=dws")], wlm="slurm")
    assert errors[0].directive.endswith("pool=dws")


def test_a_site_ruleset_that_knows_pool_keeps_it() -> None:
    rules = RuleSet.from_yaml(
        "kind: DWDirectiveRule\nspec:\n- command: jobdw\n  ruleDefs:\n  - {key: '^pool$', type: string}\n"
    )
    assert validate_job(["#DW jobdw pool=x"], ruleset=rules)[0].args == {"pool": "x"}


def test_a_rule_remembers_what_each_key_found_within_a_bound() -> None:
    """find() answers from memory for keys it has seen, the same as searching; users' keys are
    unbounded, so at most FOUND_KEYS_KEPT are kept and later ones are searched every time."""
    from dwsbridge.directives import FOUND_KEY_CHARS, FOUND_KEYS_KEPT

    rule = RuleSet.from_yaml(
        "kind: DWDirectiveRule\nspec:\n- command: jobdw\n  ruleDefs:\n"
        "  - {key: '^name$', type: string}\n  - {key: 'cap', type: integer}\n"
    ).rules_for("jobdw")[0]
    name, cap = rule.rule_defs
    for _ in range(2):
        assert rule.find("name") is name and rule.find("capacity") is cap and rule.find("colour") is None
    long_key = "x" * FOUND_KEY_CHARS + "cap"  # a directive may be 256 KiB: long keys are not kept
    assert rule.find(long_key) is cap and long_key not in rule._found
    for i in range(FOUND_KEYS_KEPT + 50):
        assert rule.find(f"k{i}") is None
    assert len(rule._found) == FOUND_KEYS_KEPT
    assert rule.find("mycap") is cap  # not remembered, still found
    assert "mycap" not in rule._found
