"""DWS's validating webhook for Workflows, played with the product's own rules.

The rules themselves live once, in `dwsbridge.workflow` (check_create / check_update) and
`dwsbridge.directives` (the #DW rule check); this module only wires them to the API server and words
refusals the way the real webhook's are worded.
"""

from __future__ import annotations

from typing import Any

from dwsbridge.directives import RuleSet, check_job
from dwsbridge.errors import AdmissionError, DirectiveError
from dwsbridge.workflow import check_create, check_update

from .store import ApiError, Obj, Store

WEBHOOK = "vworkflow.kb.io"


def denied(message: str) -> ApiError:
    return ApiError(403, "Forbidden", f'admission webhook "{WEBHOOK}" denied the request: {message}')


class WorkflowWebhook:
    def __init__(self, store: Store) -> None:
        self.store = store

    def ruleset(self) -> RuleSet:
        """The DWDirectiveRules currently stored (all namespaces), as DWS reads them."""
        rules, _rv = self.store.list("dwdirectiverules", None)
        if not rules:
            raise denied("no DWDirectiveRules are installed")
        return RuleSet.from_documents(
            [dict(r, kind="DWDirectiveRule") for r in rules], source="dwdirectiverules"
        )

    def _validate_directives(self, texts: list[str]) -> None:
        try:
            errors = check_job(texts, ruleset=self.ruleset())[1]
        except DirectiveError as exc:
            errors = [exc]
        if errors:
            raise AdmissionError("; ".join(e.render() for e in errors))

    def on_create(self, obj: Obj) -> None:
        try:
            check_create(obj, self._validate_directives)
        except AdmissionError as exc:
            raise denied(str(exc)) from exc

    def on_update(self, old: Obj, new: Obj) -> None:
        try:
            check_update(old, new)
        except AdmissionError as exc:
            raise denied(str(exc)) from exc


def driver_rules(ruleset: RuleSet, command: str) -> list[tuple[str, tuple[str, ...]]]:
    """(driverID, watchStates) of every rule for a #DW command."""
    out: list[tuple[str, tuple[str, ...]]] = []
    for rule in ruleset.rules_for(command):
        states: Any = rule.watch_states
        out.append((rule.driver_id or "nnf", tuple(states)))
    return out
