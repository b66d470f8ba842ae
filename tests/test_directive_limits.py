"""Issue 11.2: one sbatch must not stall slurmctld. Validation is linear and bounded: caps on the
directive count, the directives' bytes and the error text, each refused with a message that says
which setting to change; job_process of the 1 MB flood script answers with a bounded error and
bounded memory (measured in a subprocess, as the hook process or the agent would run it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dwsbridge.cli import main
from dwsbridge.config import load_config
from dwsbridge.directives import DEFAULT_LIMITS, Limits, check_job, validate_job
from dwsbridge.errors import ConfigError, MoreErrors, ValidationFailed
from testenv.hostile_jobs import flood_directives, flood_script, normal_script

REPO = Path(__file__).resolve().parent.parent
ROOMY = Limits(max_directives=20_000, max_directive_bytes=4 * 1024 * 1024, max_errors=20)
MESSAGE_CAP = 16 * 1024  # what a bounded refusal may cost slurmctld, with room to spare

# Runs job_process on a script after a warm-up on a normal one, and reports its own peak RSS growth:
# the growth is what validating the script costs the process doing it (agent or hook process).
DRIVER = """
import json, resource, sys
from dwsbridge.cli import main
from dwsbridge.config import load_config
from dwsbridge.slurm import SlurmHooks, run_hook
hooks = SlurmHooks(load_config(sys.argv[1]))
warm = run_hook(hooks, "job_process", [sys.argv[2]])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = run_hook(hooks, "job_process", [sys.argv[3]])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"warm_ok": warm.ok, "ok": result.ok, "message": result.payload, "rss_kib": after - before}))
"""


def job_process(tmp_path: Path, script: str, settings: str = "") -> dict[str, object]:
    config = tmp_path / "config.yaml"
    config.write_text(f"root: {tmp_path / 'root'}\n{settings}")
    normal, hostile = tmp_path / "normal.sh", tmp_path / "hostile.sh"
    normal.write_text(normal_script() + "\0")
    hostile.write_text(script + "\0")
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(config), str(normal), str(hostile)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=REPO,
        # a bound, not a timing: the quadratic checks this replaces needed 10-24 s of CPU
        preexec_fn=lambda: __import__("resource").setrlimit(__import__("resource").RLIMIT_CPU, (60, 60)),
    )
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["warm_ok"], result
    return result


# --- job_process of the 1 MB flood -------------------------------------------------------------------


def test_flood_script_is_refused_at_the_directive_cap_with_one_short_message(tmp_path: Path) -> None:
    script = flood_script()
    assert len(script) > 900_000
    result = job_process(tmp_path, script)
    assert result["ok"] is False
    message = str(result["message"])
    assert "the job has 16000 #DW directives" in message and "max_directives" in message
    assert len(message) < 1024
    assert int(str(result["rss_kib"])) < 32 * 1024


def test_flood_within_raised_limits_gets_a_bounded_error_and_bounded_memory(tmp_path: Path) -> None:
    settings = "max_directives: 20000\nmax_directive_bytes: 4MiB\n"
    result = job_process(tmp_path, flood_script(), settings)
    assert result["ok"] is False
    message = str(result["message"])
    assert len(message) < MESSAGE_CAP, len(message)
    assert message.count("names jobdw storage 'missing") == DEFAULT_LIMITS.max_errors
    assert message.endswith("... and 1980 more problems (fix those shown, then validate again)")
    # before: a 128 MB message and +270 MB in the process doing it
    assert int(str(result["rss_kib"])) < 64 * 1024, result["rss_kib"]


def test_a_normal_script_still_passes_job_process(tmp_path: Path) -> None:
    result = job_process(tmp_path, normal_script())
    assert result["ok"] is True, result["message"]


# --- the caps ----------------------------------------------------------------------------------------


def test_more_directives_than_the_cap_is_one_error_at_the_first_extra_line() -> None:
    entries = list(enumerate(["#DW persistentdw name=ab"] * 4, start=10))
    _, errors = check_job(entries, limits=Limits(max_directives=3))
    assert len(errors) == 1
    assert errors[0].line == 13
    assert "the job has 4 #DW directives; this site allows at most 3 per job (setting max_directives)" in str(
        errors[0]
    )


def test_directives_larger_than_the_byte_cap_are_refused_at_the_line_that_crosses_it() -> None:
    entries = [(2, "#DW jobdw type=xfs capacity=1GiB name=ab"), (3, "#DW copy_in source=/" + "a" * 200)]
    _, errors = check_job(entries, limits=Limits(max_directive_bytes=100))
    assert [(e.line, "exceed 100 bytes" in e.reason, "max_directive_bytes" in e.reason) for e in errors] == [
        (3, True, True)
    ]


def test_the_byte_cap_counts_utf8_bytes() -> None:
    text = "#DW copy_in source=/" + "é" * 40 + " destination=/x"  # 40 characters, 80 bytes
    assert check_job([text], limits=Limits(max_directive_bytes=len(text) + 5))[1][0].reason.startswith(
        "the job's #DW directives exceed"
    )


def test_problems_beyond_max_errors_are_counted_not_listed() -> None:
    entries = [(n, f"#DW nope{n}") for n in range(1, 31)]
    _, errors = check_job(entries, limits=Limits(max_errors=5))
    assert [e.line for e in errors[:5]] == [1, 2, 3, 4, 5]
    assert isinstance(errors[5], MoreErrors) and errors[5].count == 25
    with pytest.raises(ValidationFailed) as info:
        validate_job(entries, limits=Limits(max_errors=5))
    assert str(info.value).endswith("; ... and 25 more problems (fix those shown, then validate again)")


def test_the_errors_kept_are_the_first_by_line_whatever_order_they_are_found_in() -> None:
    # Cross-directive errors are found after every rule error; the report still starts at line 1.
    entries = [(1, "#DW copy_in source=/a destination=$DW_JOB_gone/x")]
    entries += [(n, f"#DW nope{n}") for n in range(2, 12)]
    _, errors = check_job(entries, limits=Limits(max_errors=3))
    assert [e.line for e in errors[:3]] == [1, 2, 3]
    assert "names jobdw storage 'gone'" in errors[0].reason


def test_one_directive_with_a_hundred_thousand_bad_keys_keeps_a_bounded_report() -> None:
    text = "#DW jobdw " + " ".join(f"k{i}" for i in range(100_000))
    _, errors = check_job([text], limits=Limits(max_directive_bytes=1024 * 1024))
    assert len(errors) == DEFAULT_LIMITS.max_errors + 1
    assert isinstance(errors[-1], MoreErrors) and errors[-1].count > 99_000


def test_a_huge_value_is_clipped_in_the_message() -> None:
    _, errors = check_job(["#DW jobdw type=" + "x" * 100_000 + " capacity=1GiB name=ab"])
    assert len(errors) == 1 and len(str(errors[0])) < 400
    assert "value 'xxxx" in errors[0].reason and "...' does not match" in errors[0].reason


HUGE = "x" * 100_000


@pytest.mark.parametrize(
    "text",
    [
        f"#DW{HUGE} a=b",
        f"#DW jobdw {HUGE}=1 {HUGE}=2",
        f"#DW {HUGE}",
        f"#DW jobdw type=xfs capacity=1GiB name=ab {HUGE}=1",
        f"#DW jobdw type=xfs capacity=1GiB name=ab pool={HUGE}",
        f"#DW copy_in source=/a destination=$DW_JOB_{HUGE}/x",
        f"#DW copy_in source={HUGE} destination=/x",
        f"#DW container name=ab profile=cd DW_JOB_data={HUGE}",
        f"#DW container name=ab profile=cd DW_GLOBAL_data={HUGE}",
        f"#DW persistentdw name=ab requires={HUGE}",
    ],
)
def test_no_message_quotes_more_than_a_little_of_a_users_text(text: str) -> None:
    _, errors = check_job([text], wlm="slurm", limits=Limits(max_directive_bytes=1024 * 1024))
    assert errors
    assert all(len(str(e)) < 600 for e in errors), [len(str(e)) for e in errors]


def test_a_missing_storage_message_lists_a_few_names_and_how_many() -> None:
    _, errors = check_job(flood_directives(jobdw=50, copy_in=1, bad=1))
    assert errors[0].reason.endswith(
        "(its jobdw names: s00000, s00001, s00002, s00003, s00004, ... (50 in all))"
    )


def test_an_integer_of_thousands_of_digits_is_not_an_integer_rather_than_a_crash() -> None:
    rules = "kind: DWDirectiveRule\nspec:\n- command: w\n  ruleDefs:\n  - {key: '^n$', type: integer}\n"
    from dwsbridge.directives import RuleSet

    ruleset = RuleSet.from_yaml(rules)
    _, errors = check_job(["#DW w n=" + "9" * 5000], ruleset=ruleset)
    assert len(errors) == 1 and "is not an integer" in errors[0].reason
    assert check_job(["#DW w n=" + "0" * 5000 + "7"], ruleset=ruleset)[1] == []  # Go's Atoi takes it


def test_the_default_limits_accept_a_large_real_job() -> None:
    lines = flood_directives(jobdw=100, copy_in=400, bad=0)
    assert len(validate_job(lines, wlm="slurm")) == 500


# --- settings ----------------------------------------------------------------------------------------


def test_limits_are_config_settings(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("max_directives: 50\nmax_directive_bytes: 1MiB\nmax_errors: 3\n")
    assert load_config(path).directive_limits == Limits(50, 1024 * 1024, 3)


@pytest.mark.parametrize("setting", ["max_directives: 0", "max_errors: -1", "max_directives: lots"])
def test_a_limit_must_be_a_positive_integer(tmp_path: Path, setting: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(setting + "\n")
    with pytest.raises(ConfigError, match="must be a positive integer"):
        load_config(path)


def test_validate_cli_reports_the_count_of_problems_not_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("max_errors: 4\n")
    monkeypatch.setenv("DWSBRIDGE_CONFIG", str(config))
    script = tmp_path / "job.sh"
    script.write_text(flood_script(jobdw=10, copy_in=40, bad=30))
    assert main(["validate", "--json", str(script)]) == 1
    result = json.loads(capsys.readouterr().out)
    assert len(result["errors"]) == 4 and result["more_errors"] == 26
    assert main(["validate", str(script)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert (
        len(lines) == 5
        and lines[-1] == "error: ... and 26 more problems (fix those shown, then validate again)"
    )
