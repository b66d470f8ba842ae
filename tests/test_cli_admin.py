"""The admin CLI over the local backend: create, advance, status, env, teardown."""

from __future__ import annotations

import json
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from copyoffload.tokens import verify_token
from dwsbridge.backends.local.store import Store
from dwsbridge.cli import main
from tests.conftest import needs_root

pytestmark = needs_root

SCRIPT = """#!/bin/bash
#DW jobdw type=xfs capacity=1GiB name=scratch requires=copy-offload pool=dws
echo hi
"""


@pytest.fixture
def env_root(world_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = world_tmp / "root"
    monkeypatch.setenv("DWSBRIDGE_ROOT", str(root))
    monkeypatch.delenv("DWSBRIDGE_CONFIG", raising=False)
    return root


@pytest.fixture
def script(world_tmp: Path) -> Path:
    path = world_tmp / "job.sh"
    path.write_text(SCRIPT)
    return path


def create(script: Path, user: pwd.struct_passwd, job_id: str = "42") -> list[str]:
    return [
        "create",
        "--wlm",
        "slurm",
        "--job-id",
        job_id,
        "--uid",
        str(user.pw_uid),
        "--gid",
        str(user.pw_gid),
        str(script),
    ]


def test_create_prints_the_workflow_name(
    env_root: Path, script: Path, job_user: pwd.struct_passwd, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(create(script, job_user)) == 0
    assert capsys.readouterr().out.strip() == "bb42"
    assert main(["teardown", "bb42"]) == 0


def test_advance_walks_and_env_prints_the_job_environment(
    env_root: Path, script: Path, job_user: pwd.struct_passwd, capsys: pytest.CaptureFixture[str]
) -> None:
    main(create(script, job_user))
    for state in ("Setup", "DataIn", "PreRun"):
        assert main(["advance", "bb42", state, "--wait", "30"]) == 0
    capsys.readouterr()
    assert main(["env", "bb42"]) == 0
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["DW_WORKFLOW_NAME"] == "bb42"
    assert Path(lines["DW_JOB_scratch"]).is_dir()
    key = Store(env_root).get_secret("bb42-token-server")["token.key"]  # type: ignore[index]
    assert verify_token(lines["DW_WORKFLOW_TOKEN"], key, workflow="bb42")["sub"] == "user-container"
    assert main(["teardown", "bb42", "--hurry"]) == 0


def test_a_refused_transition_exits_1_with_the_dws_message(
    env_root: Path, script: Path, job_user: pwd.struct_passwd, capsys: pytest.CaptureFixture[str]
) -> None:
    main(create(script, job_user))
    assert main(["advance", "bb42", "PreRun"]) == 1
    assert "states cannot be skipped" in capsys.readouterr().err
    assert main(["advance", "bb42", "Bogus"]) == 2
    main(["teardown", "bb42"])


def test_status_table_and_json(
    env_root: Path, script: Path, job_user: pwd.struct_passwd, capsys: pytest.CaptureFixture[str]
) -> None:
    main(create(script, job_user, "7"))
    main(["advance", "bb7", "Setup"])
    capsys.readouterr()
    assert main(["status"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "JOB", "USER", "DESIRED", "CURRENT", "READY", "STATUS", "AGE"]
    assert row.split()[:7] == ["bb7", "7", job_user.pw_name, "Setup", "Setup", "true", "Completed"]
    assert main(["status", "bb7", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["name"], data["desired"], data["ready"]) == ("bb7", "Setup", True)
    main(["teardown", "bb7"])
    capsys.readouterr()
    main(["status", "--json"])
    assert json.loads(capsys.readouterr().out) == []


def test_status_of_one_workflow_shows_the_drivers_message(
    env_root: Path, world_tmp: Path, job_user: pwd.struct_passwd, capsys: pytest.CaptureFixture[str]
) -> None:
    script = world_tmp / "missing-source.sh"
    script.write_text(
        "#!/bin/sh\n#DW jobdw type=xfs capacity=1GiB name=sc pool=dws\n"
        f"#DW copy_in source={world_tmp}/nope destination=$DW_JOB_sc/\n"
    )
    main(create(script, job_user, "9"))
    main(["advance", "bb9", "Setup"])
    assert main(["advance", "bb9", "DataIn"]) == 1
    capsys.readouterr()
    assert main(["status", "bb9"]) == 0
    detail = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    assert detail["Status"].strip() == "Error"
    assert detail["Current state"].strip() == "DataIn"
    assert f"{world_tmp}/nope" in detail["Message"]
    main(["teardown", "bb9"])


def test_unknown_workflow_exits_3(env_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["env", "bb404"]) == 3
    assert "bb404 not found" in capsys.readouterr().err


def test_teardown_of_a_missing_workflow_succeeds(env_root: Path) -> None:
    assert main(["teardown", "bb405"]) == 0


def test_create_with_invalid_directives_names_the_problem(
    env_root: Path, world_tmp: Path, job_user: pwd.struct_passwd, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = world_tmp / "bad.sh"
    bad.write_text("#!/bin/sh\n#DW jobdw type=xfs capacity=10 name=s pool=dws\n")
    assert main(create(bad, job_user)) == 1
    assert "line 2" in capsys.readouterr().err


def test_every_command_has_help_with_examples() -> None:
    for command in ("create", "advance", "status", "env", "teardown", "validate", "manifest"):
        out = subprocess.run(
            [sys.executable, "-m", "dwsbridge", command, "--help"], capture_output=True, text=True, check=True
        ).stdout
        assert "examples:" in out, command


def test_create_judges_the_directives_by_the_configured_ruleset(
    env_root: Path,
    world_tmp: Path,
    job_user: pwd.struct_passwd,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rules = world_tmp / "rules.yaml"
    rules.write_text("kind: DWDirectiveRule\nspec:\n- command: widget\n  ruleDefs: []\n")
    config = world_tmp / "config.yaml"
    config.write_text(f"ruleset: {rules}\n")
    monkeypatch.setenv("DWSBRIDGE_CONFIG", str(config))
    script = world_tmp / "widget.sh"
    script.write_text("#!/bin/bash\n#DW widget\necho hi\n")
    assert main(create(script, job_user, job_id="43")) == 0
    assert capsys.readouterr().out.strip() == "bb43"
    assert main(["teardown", "bb43"]) == 0
