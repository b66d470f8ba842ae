"""Submit-time validation on Flux: flux/jobtap_plugin.py's Validator refuses every invalid case the Slurm
path refuses, with the same text (one shared table), and works without flux-python."""

from __future__ import annotations

import errno
import sys
from types import SimpleNamespace

import pytest

from dwsbridge.directives import validate_job
from dwsbridge.errors import ValidationFailed
from tests.directive_cases import INVALID_CASES, MALFORMED_PREFIX_CASES
from tests.flux_support import load_entry_file

entry = load_entry_file()


def slurm_text(directives: list[str]) -> str:
    with pytest.raises(ValidationFailed) as refused:
        validate_job(directives, wlm="slurm")
    return str(refused.value)


def flux_validate(system: dict[str, object]) -> tuple[int, str] | None:
    validator = entry.Validator()
    validator.configure(SimpleNamespace(dwsbridge_config=None))
    return validator.validate(SimpleNamespace(jobspec={"attributes": {"system": system}}))


@pytest.mark.parametrize(("directives", "expected"), INVALID_CASES, ids=[c[1] for c in INVALID_CASES])
def test_validator_gives_the_slurm_text_for_a_list(directives: list[str], expected: str) -> None:
    text = slurm_text(directives)
    assert expected in text
    assert flux_validate({"dw": directives}) == (errno.EINVAL, text)


@pytest.mark.parametrize(("directives", "expected"), INVALID_CASES, ids=[c[1] for c in INVALID_CASES])
def test_validator_gives_the_slurm_text_for_one_string(directives: list[str], expected: str) -> None:
    assert flux_validate({"dw": " ".join(directives)}) == (errno.EINVAL, slurm_text(directives))


@pytest.mark.parametrize(("directives", "expected"), MALFORMED_PREFIX_CASES)
def test_validator_refuses_lines_that_are_not_dw_commands(directives: list[str], expected: str) -> None:
    assert expected in slurm_text(directives)
    result = flux_validate({"dw": directives})
    assert result is not None and result[0] == errno.EINVAL


@pytest.mark.parametrize(("directives", "expected"), MALFORMED_PREFIX_CASES)
def test_validator_text_for_malformed_prefixes_matches_slurm(directives: list[str], expected: str) -> None:
    assert flux_validate({"dw": directives}) == (errno.EINVAL, slurm_text(directives))


def test_valid_directives_pass() -> None:
    dw = "#DW jobdw type=xfs capacity=1GiB name=data #DW copy_in source=/etc/hosts destination=$DW_JOB_data/"
    assert flux_validate({"dw": dw}) is None


def test_jobs_without_dw_pass() -> None:
    assert flux_validate({"duration": 60}) is None
    assert entry.Validator().validate({"jobspec": {"version": 1}}) is None


@pytest.mark.parametrize("tolerance", [-1, "x", True, 1.5])
def test_bad_failure_tolerance_is_refused(tolerance: object) -> None:
    assert flux_validate(
        {"dw": "#DW jobdw type=xfs capacity=1GiB name=data", "dw_failure_tolerance": tolerance}
    ) == (
        errno.EINVAL,
        f"dw_failure_tolerance must be a non-negative integer, not {tolerance!r}",
    )


def test_empty_dw_is_refused() -> None:
    result = flux_validate({"dw": "  "})
    assert result is not None and "holds no #DW directives" in result[1]


def test_presets_from_the_config_are_expanded(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    config = Path(str(tmp_path)) / "config.yaml"
    config.write_text(
        "flux_presets:\n  small: '#DW jobdw type=xfs capacity=1GiB name=data'\n  broken: '#DW jobdw'\n"
    )
    monkeypatch.setenv("DWSBRIDGE_CONFIG", str(config))
    assert flux_validate({"dw": "small"}) is None
    result = flux_validate({"dw": "broken"})
    assert result is not None and "missing required argument" in result[1]


def test_entry_file_does_not_shadow_flux_python() -> None:
    from pathlib import Path

    assert not (Path(str(entry.__file__)).parent / "__init__.py").exists()
    namespace = sys.modules.get("flux")
    assert namespace is None or getattr(namespace, "__file__", None) is not None  # never the checkout's flux/
