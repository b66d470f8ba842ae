"""Submit-time checking of a Flux job's `dw` attributes: the logic behind flux/jobtap_plugin.py's
`Validator`. Bad `#DW` lines are refused with the text the Slurm path gives for the same lines;
flux-coral2 only finds them after the job is queued."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dwsbridge.errors import DirectiveError, ValidationFailed
from dwsbridge.flux import protocol
from dwsbridge.flux.service import flux_directives

if TYPE_CHECKING:
    from dwsbridge.directives import Limits, RuleSet


def check_jobspec(
    jobspec: Any,
    *,
    presets: Mapping[str, str] | None = None,
    ruleset: RuleSet | None = None,
    backend: str | None = None,
    limits: Limits | None = None,
) -> str | None:
    """None when the job's `dw` and `dw_failure_tolerance` are acceptable, else what the user sees."""
    system = protocol.system_attributes(jobspec)
    problems: list[str] = []
    if protocol.TOLERANCE_ATTRIBUTE in system:
        try:
            protocol.parse_failure_tolerance(system[protocol.TOLERANCE_ATTRIBUTE])
        except ValueError as exc:
            problems.append(str(exc))
    if protocol.DW_ATTRIBUTE in system:
        try:
            flux_directives(system[protocol.DW_ATTRIBUTE], presets, ruleset, limits, backend)
        except (DirectiveError, ValidationFailed) as exc:
            problems.append(str(exc))
    return "; ".join(problems) or None
