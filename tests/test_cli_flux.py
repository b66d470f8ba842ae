"""`dwsbridge flux install`: the files an admin needs for a Flux instance, valid and consistent."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from dwsbridge.cli import main

REPO = Path(__file__).resolve().parent.parent
ENTRY = str(REPO / "flux" / "jobtap_plugin.py")


def dirs(tmp_path: Path) -> list[str]:
    for name in ("conf", "lua.d", "units"):
        (tmp_path / name).mkdir()
    return [f"--conf-dir={tmp_path}/conf", f"--shell-dir={tmp_path}/lua.d", f"--unit-dir={tmp_path}/units"]


def test_install_writes_config_snippets_shell_plugin_and_unit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["flux", "install", *dirs(tmp_path), "--flux=/bin/true", "--config=/etc/dw.yaml", "--root=/srv/dw"]
    assert main([*args, "--prolog-timeout=7200", "--epilog-timeout=600"]) == 0
    validator = tomllib.loads((tmp_path / "conf" / "validator.toml").read_text())
    assert validator["ingest"]["validator"] == {
        "plugins": ["jobspec", ENTRY],
        "args": ["--dwsbridge-config=/etc/dw.yaml"],
    }
    perilog = tomllib.loads((tmp_path / "conf" / "perilog.toml").read_text())
    manager = perilog["job-manager"]
    assert manager["plugins"] == [{"load": "perilog.so"}]
    assert manager["prolog"]["command"] == ["/bin/true", "python", ENTRY, "prolog", "--timeout=7200"]
    assert manager["prolog"]["timeout"] == "7500s"  # above our own wait, so ours reports first
    assert manager["epilog"]["command"][-2:] == ["epilog", "--timeout=600"]
    access = tomllib.loads((tmp_path / "conf" / "access.toml").read_text())
    assert access == {"access": {"allow-root-owner": True}}
    assert (tmp_path / "lua.d" / "dws-env.lua").read_text() == (REPO / "flux" / "dws-env.lua").read_text()
    unit = (tmp_path / "units" / "dwsbridge-flux.service").read_text()
    assert f"ExecStart=/bin/true python {ENTRY} service --config /etc/dw.yaml\n" in unit
    assert (
        "Environment=DWSBRIDGE_CONFIG=/etc/dw.yaml\n" in unit
        and "Environment=DWSBRIDGE_ROOT=/srv/dw\n" in unit
    )
    assert "User=root\n" in unit and "KillMode=process\n" in unit
    assert "wrote " in capsys.readouterr().out


def test_install_refuses_missing_directories_and_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["flux", "install", f"--conf-dir={tmp_path}/absent", "--flux=/bin/true"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["flux", "install", *dirs(tmp_path), "--flux=/bin/true", f"--source={tmp_path}"]) == 2
    assert "jobtap_plugin.py is missing: pass --source DIR" in capsys.readouterr().err
    assert not list((tmp_path / "conf").iterdir())
