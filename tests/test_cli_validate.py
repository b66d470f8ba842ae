"""`dwsbridge validate` and `dwsbridge manifest` as a user meets them."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dwsbridge.cli import main

REPO = Path(__file__).resolve().parent.parent
GOOD = REPO / "examples" / "slurm-job.sh"
BAD = REPO / "examples" / "invalid-job.sh"

VALID_SCRIPT = """\
#!/bin/bash
#SBATCH --nodes=1
#DW jobdw type=xfs capacity=10GiB name=scratch pool=dws
#DW copy_out source=$DW_JOB_scratch/out destination=/lus/out
echo run
"""
INVALID_SCRIPT = """\
#!/bin/bash
#DW jobdw type=xfs capacity=10 name=scratch
#DW copy_in source=relative destination=$DW_JOB_scratch
"""


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test reads its own (empty) config file, never the machine's /etc/dwsbridge/config.yaml."""
    config = tmp_path / "config.yaml"
    config.write_text("")
    monkeypatch.setenv("DWSBRIDGE_CONFIG", str(config))
    monkeypatch.delenv("DWSBRIDGE_ROOT", raising=False)
    return config


def write(tmp_path: Path, text: str, name: str = "job.sh") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def stdin_with(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))


# --- validate --------------------------------------------------------------------------------------------


def test_valid_script_exits_zero_with_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, VALID_SCRIPT)
    assert main(["validate", path]) == 0
    out = capsys.readouterr().out
    assert out == f"{path}: OK, 2 #DW directives valid (copy_out, jobdw)\n"


def test_script_without_directives_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", write(tmp_path, "#!/bin/sh\necho hi\n")]) == 0
    assert "OK, no #DW directives" in capsys.readouterr().out


def test_invalid_script_exits_one_with_one_error_line_per_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", write(tmp_path, INVALID_SCRIPT)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "error: line 2: #DW jobdw type=xfs capacity=10 name=scratch: argument 'capacity' value '10' does not "
        r"match ^\d+(KiB|KB|MiB|MB|GiB|GB|TiB|TB)$",
        "error: line 3: #DW copy_in source=relative destination=$DW_JOB_scratch: argument 'source' value "
        "'relative' must be $DW_JOB_<name>[/path], $DW_PERSISTENT_<name>[/path] or an absolute path",
    ]


def test_json_output_for_a_valid_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--json", write(tmp_path, VALID_SCRIPT)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["valid"] is True and result["errors"] == []
    assert result["directives"][0] == {
        "line": 3,
        "text": "#DW jobdw type=xfs capacity=10GiB name=scratch",
        "command": "jobdw",
        "args": {"type": "xfs", "capacity": "10GiB", "name": "scratch"},
    }


def test_json_output_for_an_invalid_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--json", write(tmp_path, INVALID_SCRIPT)]) == 1
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["valid"] is False
    assert [(e["line"], e["argument"]) for e in result["errors"]] == [(2, "capacity"), (3, "source")]
    assert result["errors"][0]["directive"] == "#DW jobdw type=xfs capacity=10 name=scratch"
    assert "does not match" in result["errors"][0]["message"]
    assert captured.err == ""


def test_bare_keys_appear_as_null_in_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["validate", "--json", write(tmp_path, "#DW persistentdw name=ab flag\n")])
    assert json.loads(capsys.readouterr().out)["directives"][0]["args"] == {"name": "ab", "flag": None}


def test_missing_script_exits_two_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(tmp_path / "absent.sh")]) == 2
    assert "cannot read job script" in capsys.readouterr().err


def test_dash_reads_the_script_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stdin_with(monkeypatch, VALID_SCRIPT)
    assert main(["validate", "-"]) == 0
    assert capsys.readouterr().out.startswith("<stdin>: OK")


def test_ruleset_option_replaces_the_bundled_rules(tmp_path: Path) -> None:
    rules = write(tmp_path, "kind: DWDirectiveRule\nspec:\n- command: widget\n  ruleDefs: []\n", "rules.yaml")
    script = write(tmp_path, "#DW widget\n")
    assert main(["validate", "--ruleset", rules, script]) == 0
    assert main(["validate", script]) == 1


def test_unreadable_ruleset_exits_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--ruleset", str(tmp_path / "none.yaml"), write(tmp_path, VALID_SCRIPT)]) == 2
    assert "cannot read ruleset" in capsys.readouterr().err


def test_config_ruleset_is_the_default(tmp_path: Path, isolated_config: Path) -> None:
    rules = write(tmp_path, "kind: DWDirectiveRule\nspec:\n- command: widget\n  ruleDefs: []\n", "rules.yaml")
    isolated_config.write_text(f"ruleset: {rules}\n")
    assert main(["validate", write(tmp_path, "#DW widget\n")]) == 0


def test_slurm_mode_tells_what_pool_to_add(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "#DW jobdw type=xfs capacity=1GiB name=ab\n")
    assert main(["validate", "--wlm", "slurm", path]) == 1
    assert capsys.readouterr().err.rstrip().endswith("add pool=dws")


def test_pool_option_names_the_pool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "#DW jobdw type=xfs capacity=1GiB name=ab\n")
    assert main(["validate", "--wlm", "slurm", "--pool", "rabbits", path]) == 1
    assert capsys.readouterr().err.rstrip().endswith("add pool=rabbits")


def test_config_pool_name_is_the_default_pool(
    tmp_path: Path, isolated_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    isolated_config.write_text("pool_name: nearflash\n")
    main(["validate", "--wlm", "slurm", write(tmp_path, "#DW jobdw type=xfs capacity=1GiB name=ab\n")])
    assert capsys.readouterr().err.rstrip().endswith("add pool=nearflash")


def test_flux_mode_reads_a_dw_attribute(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stdin_with(
        monkeypatch, "#DW jobdw type=xfs capacity=1GiB name=ab #DW copy_in source=/a destination=$DW_JOB_ab"
    )
    assert main(["validate", "--wlm", "flux", "-"]) == 0
    assert "2 #DW directives valid" in capsys.readouterr().out


def test_example_job_script_is_valid_for_slurm() -> None:
    assert main(["validate", "--wlm", "slurm", str(GOOD)]) == 0


def test_example_invalid_script_reports_each_problem(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--wlm", "slurm", str(BAD)]) == 1
    assert len(capsys.readouterr().err.splitlines()) >= 6


def test_validate_help_teaches_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["validate", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "leading comment block" in out and "#DW jobdw" in out


def test_installed_command_validates_a_script(tmp_path: Path) -> None:
    command = Path(sys.executable).parent / "dwsbridge"
    result = subprocess.run(
        [str(command), "validate", write(tmp_path, INVALID_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.count("error: ") == 2


# --- manifest --------------------------------------------------------------------------------------------


def manifest(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert main(["manifest", *args]) == 0
    loaded = yaml.safe_load(capsys.readouterr().out)
    assert isinstance(loaded, dict)
    return loaded


def test_manifest_prints_the_slurm_workflow_as_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = manifest(["--wlm", "slurm", "--job-id", "12", "--uid", "1000", "--gid", "100", str(GOOD)], capsys)
    assert wf["kind"] == "Workflow" and wf["metadata"]["name"] == "bb12"  # type: ignore[index]
    spec = wf["spec"]
    assert spec["desiredState"] == "Proposal" and spec["userID"] == 1000 and spec["groupID"] == 100  # type: ignore[index]
    assert spec["dwDirectives"][0] == (  # type: ignore[index]
        "#DW jobdw type=xfs capacity=10GiB name=scratch requires=copy-offload"
    )


def test_manifest_keeps_job_variables_unexpanded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wf = manifest(["--wlm", "slurm", "--job-id", "1", "--uid", "1", "--gid", "1", str(GOOD)], capsys)
    assert any("$DW_JOB_scratch" in d for d in wf["spec"]["dwDirectives"])  # type: ignore[index]


def test_manifest_as_json_for_flux(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stdin_with(monkeypatch, "#DW jobdw type=xfs capacity=1GiB name=ab")
    args = ["manifest", "--wlm", "flux", "--job-id", "7", "--uid", "5", "--gid", "6", "--json", "-"]
    assert main(args) == 0
    wf = json.loads(capsys.readouterr().out)
    assert wf["metadata"]["name"] == "fluxjob-7"
    assert wf["spec"]["dwDirectives"] == ["#DW jobdw type=xfs capacity=1GiB name=ab"]


def test_manifest_uses_the_namespace_option(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--wlm", "slurm", "--job-id", "3", "--uid", "1", "--gid", "1", "--namespace", "hpc", str(GOOD)]
    assert manifest(args, capsys)["metadata"]["namespace"] == "hpc"  # type: ignore[index]


def test_manifest_of_invalid_directives_exits_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "manifest",
        "--wlm",
        "slurm",
        "--job-id",
        "3",
        "--uid",
        "1",
        "--gid",
        "1",
        write(tmp_path, INVALID_SCRIPT),
    ]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: line 2:")


def test_manifest_refuses_a_job_id_that_is_not_digits(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["manifest", "--wlm", "slurm", "--job-id", "12a", "--uid", "1", "--gid", "1", str(GOOD)])
    assert info.value.code == 2
    assert "only digits" in capsys.readouterr().err


def test_manifest_help_teaches_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["manifest", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "bb<job-id>" in out
