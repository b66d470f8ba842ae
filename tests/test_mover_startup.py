"""The mover child starts light: every stage-in waits for its start-up, so a single-file copy must not load
the process pool (multiprocessing), the parent side (subprocess), argparse, typing or site-packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import copyoffload.mover
from copyoffload.mover import CopyOptions, S3Options
from copyoffload.mover.__main__ import _SWITCHES, _VALUED, _parse_plain, _parser
from copyoffload.mover.child import child_argv

REPO = Path(__file__).resolve().parent.parent
HEAVY = (
    "site",
    "typing",
    "argparse",
    "subprocess",
    "multiprocessing",
    "multiprocessing.connection",
    "copyoffload.mover.child",
    "copyoffload.mover.pool",
    "boto3",
)


def child_imports(src: Path, dest: Path) -> set[str]:
    """Every module the child `copy_as_user` would start imports, by `-X importtime`; the copy must work."""
    argv = child_argv(str(src), str(dest), CopyOptions(workers=2))
    done = subprocess.run(
        [argv[0], "-X", "importtime", *argv[1:]],
        capture_output=True,
        text=True,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    assert '"event":"result"' in done.stdout
    lines = done.stderr.splitlines()
    return {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}


def test_a_single_file_copy_imports_nothing_it_does_not_need(tmp_path: Path) -> None:
    src = tmp_path / "small"
    src.write_bytes(b"0123456789abcdef")
    imported = child_imports(src, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == b"0123456789abcdef"
    assert "copyoffload.mover.tree" in imported
    assert sorted(imported.intersection(HEAVY)) == []


def test_a_directory_copy_still_starts_the_process_pool(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a").write_bytes(b"a")
    imported = child_imports(tmp_path / "src", tmp_path / "copy")
    assert (tmp_path / "copy" / "a").read_bytes() == b"a"
    assert "copyoffload.mover.pool" in imported


def test_the_child_runs_without_site_packages_unless_a_side_is_s3() -> None:
    assert child_argv("/a", "/b", CopyOptions())[1:3] == ["-S", "-m"]
    assert child_argv("s3://bucket/key", "/b", CopyOptions())[1] == "-m"
    assert child_argv("/a", "S3://bucket/key", CopyOptions())[1] == "-m"


def test_copy_as_user_is_still_importable_from_the_package() -> None:
    from copyoffload.mover import copy_as_user
    from copyoffload.mover.child import copy_as_user as defined

    assert copy_as_user is defined
    with pytest.raises(AttributeError):
        _ = copyoffload.mover.no_such_name


@pytest.mark.parametrize(
    "options",
    [
        CopyOptions(),
        CopyOptions(workers=3, dry_run=True, preserve_owner=False, progress_interval=0.25),
        CopyOptions(bwlimit=1 << 20, chunk_size=8192, atomic_min_size=0),
        CopyOptions(s3=S3Options(endpoint_url="http://localhost:9000", max_concurrency=4)),
    ],
)
def test_the_childs_own_argv_is_read_as_argparse_reads_it(options: CopyOptions) -> None:
    child = child_argv("/src dir", "/dest", options)
    argv = [*child[child.index("copyoffload.mover") + 1 :], "--expect-uid", "1000", "--expect-gid", "100"]
    assert vars(_parse_plain(argv)) == vars(_parser().parse_args(argv))


def test_the_direct_reading_knows_every_option_by_its_argparse_type() -> None:
    options = [a for a in _parser()._actions if a.option_strings and a.dest != "help"]
    assert {a.option_strings[0]: a.type or str for a in options if a.nargs != 0} == _VALUED
    assert sorted(a.option_strings[0] for a in options if a.nargs == 0) == sorted(_SWITCHES)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["/a"],
        ["-a", "/b"],
        ["/a", "/b", "--workers"],
        ["/a", "/b", "--workers", "many"],
        ["/a", "/b", "--workers=2"],
        ["/a", "/b", "--work", "2"],
        ["/a", "/b", "--bwlimit", "-1"],
        ["/a", "/b", "extra"],
    ],
)
def test_anything_but_the_plain_form_is_left_to_argparse(argv: list[str]) -> None:
    assert _parse_plain(argv) is None


def test_help_and_usage_errors_still_come_from_argparse() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-S", "-m", "copyoffload.mover", *args],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        )

    shown = run("--help")
    assert shown.returncode == 0 and "usage: python -m copyoffload.mover" in shown.stdout
    wrong = run("/a", "/b", "--workers", "many")
    assert wrong.returncode == 2 and "argument --workers: invalid int value: 'many'" in wrong.stderr
