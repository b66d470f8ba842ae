"""Issue 12.6: command-line conventions. Global options go before or after the command (as with
kubectl), and every benchmark's --help shows commands that work as written."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from dwsbridge.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = [*sorted(p.stem for p in (REPO / "bench").glob("bench_*.py")), "run"]
POOLED = "#!/bin/bash\n#DW jobdw type=xfs capacity=1GiB name=scratch pool=dws\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["--backend", "kubernetes", "--kubeconfig", "/k", "status"],
        ["status", "--backend", "kubernetes", "--kubeconfig", "/k"],
        ["--backend", "kubernetes", "status", "--kubeconfig", "/k"],
        ["--kubeconfig", "/k", "teardown", "bb1", "--backend", "kubernetes"],
    ],
)
def test_backend_and_kubeconfig_go_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.backend, args.kubeconfig) == ("kubernetes", "/k")


def test_an_option_after_the_command_wins_over_the_same_option_before_it() -> None:
    args = build_parser().parse_args(["--backend", "kubernetes", "env", "bb1", "--backend", "local"])
    assert args.backend == "local"


@pytest.mark.parametrize("argv", [["--config", "/c.yaml", "status"], ["status", "--config", "/c.yaml"]])
def test_config_goes_before_or_after_the_command(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).config == "/c.yaml"


def test_no_global_option_given_leaves_the_configuration_alone() -> None:
    args = build_parser().parse_args(["status"])
    assert (args.config, args.backend, args.kubeconfig) == (None, None, None)


def test_a_backend_given_before_the_command_is_the_one_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.kubeconfig"
    (tmp_path / "c.yaml").write_text(f"root: {tmp_path / 'root'}\n")
    options = ["--config", str(tmp_path / "c.yaml"), "--backend", "kubernetes", "--kubeconfig", str(missing)]
    code = main([*options, "status"])
    err = capsys.readouterr().err
    assert code != 0 and str(missing) in err  # the kubernetes backend tried that kubeconfig


@pytest.mark.parametrize("before", [True, False])
def test_validate_reads_the_config_given_before_or_after_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], before: bool
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("pool_name: rabbits\n")
    script = tmp_path / "job.sh"
    script.write_text(POOLED)
    options = ["--config", str(config)]
    command = ["validate", "--wlm", "slurm", str(script)]
    argv = [*options, *command] if before else [command[0], *options, *command[1:]]
    assert main(argv) == 1
    assert "write pool=rabbits" in capsys.readouterr().err


def test_the_top_level_help_shows_global_options_before_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "dwsbridge --backend kubernetes status" in capsys.readouterr().out


# --- benchmarks -----------------------------------------------------------------------------------------


def help_text(module: str) -> str:
    proc = subprocess.run(
        [".venv/bin/python", "-m", f"bench.{module}", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stdout


@pytest.mark.parametrize("module", BENCHMARKS)
def test_every_command_a_benchmarks_help_shows_runs(module: str) -> None:
    text = help_text(module)
    commands = set(re.findall(r"`(\.venv/bin/python [^`]*bench[^`]*)`", text))
    usage = re.match(r"usage: (\S+ -m \S+)", text)
    assert usage is not None, text[:200]
    commands.add(usage.group(1))
    for command in commands:
        words = shlex.split(command)
        launch = words[:3] if words[1:2] == ["-m"] else words[:2]  # the interpreter and what it runs
        proc = subprocess.run(
            [*launch, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode == 0, (command, proc.stderr[-300:])
