"""``nnf-dm install | remove | start | stop | status``: the systemd unit, as upstream's commands manage it.

``--root DIR`` writes and removes the unit under DIR (``DIR/etc/systemd/system/nnf-dm.service``) and
never calls systemctl, so packaging and tests need no systemd. start/stop/status run
``systemctl <verb> nnf-dm`` (``$NNF_DM_SYSTEMCTL`` names another systemctl, e.g. in a container).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

UNIT_NAME = "nnf-dm.service"
UNIT_DIR = Path("etc/systemd/system")


class UnitError(Exception):
    """The unit cannot be managed here (no systemctl, unit missing); the message says what to do."""


def unit_path(root: str | os.PathLike[str] = "/") -> Path:
    return Path(root) / UNIT_DIR / UNIT_NAME


def unit_text(exec_start: list[str]) -> str:
    """The unit upstream installs (README of daemons/compute), with our ExecStart."""
    command = " \\\n   ".join(shlex.quote(part) for part in exec_start)
    return (
        "[Unit]\n"
        "Description=Near-Node Flash (NNF) Data Movement Service\n"
        "After=network.target\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={command}\n"
        "Restart=on-failure\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def install(exec_start: list[str], *, root: str = "/", force: bool = False) -> Path:
    path = unit_path(root)
    if path.exists() and not force:
        raise UnitError(f"{path} already exists: run 'nnf-dm remove' first, or install --force")
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{UNIT_NAME}.tmp")
    temp.write_text(unit_text(exec_start))
    os.chmod(temp, 0o644)
    os.replace(temp, path)
    if Path(root).resolve() == Path("/"):
        _systemctl("daemon-reload", required=False)
        _systemctl("enable", UNIT_NAME, required=False)
    return path


def remove(*, root: str = "/") -> Path:
    path = unit_path(root)
    if not path.exists():
        raise UnitError(f"{path} does not exist: nothing to remove")
    if Path(root).resolve() == Path("/"):
        _systemctl("disable", "--now", UNIT_NAME, required=False)
    path.unlink()
    if Path(root).resolve() == Path("/"):
        _systemctl("daemon-reload", required=False)
    return path


def control(verb: str, *, root: str = "/") -> int:
    """start / stop / status through systemctl; returns its exit code (status: 3 = not running)."""
    if Path(root).resolve() != Path("/"):
        raise UnitError(f"cannot {verb} a unit installed under {root}: systemd runs units from / only")
    if not unit_path(root).exists():
        raise UnitError(f"{unit_path(root)} is not installed: run 'nnf-dm install' first")
    return _systemctl(verb, UNIT_NAME, required=True)


def _systemctl(*args: str, required: bool) -> int:
    binary = os.environ.get("NNF_DM_SYSTEMCTL") or shutil.which("systemctl")
    if not binary:
        if required:
            raise UnitError(
                "systemctl not found: this machine does not run systemd; start the daemon directly"
                " ('nnf-dm --socket PATH')"
            )
        return 0
    return subprocess.run([binary, *args], check=False).returncode
