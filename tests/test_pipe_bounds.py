"""Root readers of a user's child pipe stay bounded when the child writes a line without a newline (11.5).

The fake child runs as an ordinary user (as a ptraced mover would) and writes 512 MiB with no newline.
The reader runs in its own root process so its peak RSS can be read back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers_users import ensure_user

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs the fake child as an ordinary user)"),
]

ROOT = Path(__file__).resolve().parents[1]
LINE_BYTES = 512 * 1024 * 1024
RSS_CAP_KIB = 160 * 1024

# The hostile child: a progress pipe fed with one endless-looking line, then a clean exit.
WRITER = (
    "import sys\n"
    "w = sys.stdout.buffer\n"
    "block = b'x' * (1 << 20)\n"
    f"for _ in range({LINE_BYTES >> 20}):\n"
    "    w.write(block)\n"
)

MOVER_READER = """
import json, subprocess, sys
from copyoffload.mover import CopyError
from copyoffload.mover.child import _ChildCopy
uid, gid, writer = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        user=uid, group=gid, extra_groups=[], process_group=0, cwd="/")
try:
    _ChildCopy(proc, "/src", None, None).wait(None)
    outcome = "copied"
except CopyError as exc:
    outcome = str(exc)
print(json.dumps({"outcome": outcome, "maxrss_kib": peak_kib()}))
"""

COMMAND_READER = """
import json, sys, threading
from copyoffload.jobs import CopyFailed, CopyRequest, Profile, command_copier
uid, gid, writer = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
profile = Profile("hostile", command=(sys.executable, "-c", writer))
try:
    command_copier(CopyRequest(source_path="/a", destination_path="/b"), profile=profile, workers=1, uid=uid,
                   gid=gid, progress=lambda p: None, cancel=threading.Event(), on_child=lambda pid: None)
    outcome = "copied"
except CopyFailed as exc:
    outcome = str(exc)
print(json.dumps({"outcome": outcome, "maxrss_kib": peak_kib()}))
"""


# VmHWM (this process's own peak; ru_maxrss would include the parent's at fork, kept across exec).
PEAK = """
def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
"""


def run_reader(script: str) -> dict[str, object]:
    uid, gid = ensure_user("dwsbt-pipe1")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", PEAK + script, str(uid), str(gid), WRITER],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_mover_progress_reader_stays_bounded_on_an_endless_line() -> None:
    result = run_reader(MOVER_READER)
    assert int(str(result["maxrss_kib"])) < RSS_CAP_KIB, result
    assert "wrote a progress line longer than the limit" in str(result["outcome"])


def test_external_command_reader_stays_bounded_on_an_endless_line() -> None:
    result = run_reader(COMMAND_READER)
    assert int(str(result["maxrss_kib"])) < RSS_CAP_KIB, result
    assert "wrote an output line longer than the limit" in str(result["outcome"])
