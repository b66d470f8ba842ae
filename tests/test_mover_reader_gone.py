"""The mover child whose progress reader is gone (its parent, the service, was killed): the next progress
write hits a broken pipe, and the copy cancels cleanly and removes its partial output (issue 10 item 5)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from copyoffload.mover.child import child_argv
from copyoffload.mover.model import CopyOptions

REPO = Path(__file__).resolve().parent.parent


def test_a_mover_whose_reader_is_gone_cancels_and_removes_its_partial_file(tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(8 << 20))
    dest = tmp_path / "out"
    dest.mkdir()
    options = CopyOptions(workers=1, bwlimit=1 << 20, progress_interval=0.1)
    proc = subprocess.Popen(
        child_argv(str(src), str(dest), options),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert b'"event":"progress"' in proc.stdout.readline()
    assert list(dest.glob(".*.dwsb-part")), "the copy is under way, into a partial file"
    proc.stdout.close()  # the reader dies
    try:
        code = proc.wait(timeout=10)  # the copy alone would take 8 s more
    finally:
        proc.kill()
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    assert code == 130, stderr
    assert sorted(p.name for p in dest.iterdir()) == []
    assert "Traceback" not in stderr
