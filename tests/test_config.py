"""The one configuration object: file, environment and explicit overrides, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from dwsbridge.config import DEFAULT_ROOT, load_config, parse_size
from dwsbridge.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DWSBRIDGE_CONFIG", raising=False)
    monkeypatch.delenv("DWSBRIDGE_ROOT", raising=False)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_file_settings_are_typed(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, "backend: kubernetes\nroot: /srv/dws\ncapacity_limit: 2GiB\nstate-timeout: 30\n")
    )
    assert cfg.backend == "kubernetes"
    assert cfg.root == Path("/srv/dws")
    assert cfg.capacity_limit == 2 * 1024**3
    assert cfg.state_timeout == 30.0


def test_dwsbridge_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DWSBRIDGE_CONFIG", str(write(tmp_path, "pool_name: flash\n")))
    assert load_config().pool_name == "flash"


def test_dwsbridge_root_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DWSBRIDGE_ROOT", "/tmp/elsewhere")
    assert load_config(write(tmp_path, "root: /srv/dws\n")).root == Path("/tmp/elsewhere")


def test_explicit_overrides_win(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "backend: kubernetes\n"), backend="local", kubeconfig=None)
    assert cfg.backend == "local"


def test_defaults_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dwsbridge.config.DEFAULT_CONFIG_PATH", Path("/nonexistent/config.yaml"))
    cfg = load_config()
    assert (cfg.backend, cfg.root, cfg.pool_name) == ("local", DEFAULT_ROOT, "dws")


def test_an_unknown_setting_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown setting.*pool_nmae"):
        load_config(write(tmp_path, "pool_nmae: x\n"))


def test_a_bad_backend_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="backend must be 'local' or 'kubernetes'"):
        load_config(write(tmp_path, "backend: slurmdb\n"))


def test_a_bad_size_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="capacity_limit: not a size"):
        load_config(write(tmp_path, "capacity_limit: lots\n"))


def test_invalid_yaml_and_a_missing_file_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [\n"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_data_movement_profiles_must_be_mappings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data_movement_profiles"):
        load_config(write(tmp_path, "data_movement_profiles: {slow: 3}\n"))
    cfg = load_config(write(tmp_path, "data_movement_profiles: {slow: {bwlimit: 1000}}\n"))
    assert cfg.data_movement_profiles == {"slow": {"bwlimit": 1000}}


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("10GiB", 10 * 1024**3),
        ("500MB", 500 * 1000**2),
        ("7", 7),
        (4096, 4096),
        ("1TiB", 1024**4),
        ("2 KiB", 2048),
    ],
)
def test_sizes_use_the_directive_units(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GiB", "10XB", "-5", True, "1.5GiB"])
def test_bad_sizes_are_refused(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)
