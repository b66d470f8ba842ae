"""Shared pieces of the Flux tests: the entry file loaded by path, and a bridge (lifecycle, service,
in-memory job manager, dws-jobtap) on one config."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from dwsbridge.config import Config
from dwsbridge.flux.jobtap import DwsJobtap
from dwsbridge.flux.service import DwsService
from dwsbridge.lifecycle import Lifecycle
from testenv.flux_jobmanager import InMemoryJobManager, MemoryJob

ENTRY_FILE = Path(__file__).resolve().parent.parent / "flux" / "jobtap_plugin.py"


def load_entry_file() -> ModuleType:
    """flux/jobtap_plugin.py as Flux loads a validator plugin: by path, not as a package."""
    spec = importlib.util.spec_from_file_location("dwsbridge_flux_jobtap_plugin", ENTRY_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RecordingLifecycle(Lifecycle):
    """The real lifecycle, noting each teardown and whether it was in a hurry."""

    def __init__(self, config: Config, teardowns: list[tuple[str, bool]] | None = None) -> None:
        super().__init__(config)
        self.teardowns: list[tuple[str, bool]] = [] if teardowns is None else teardowns

    def teardown(self, name: str, *, hurry: bool = False, quiet: bool = False) -> None:
        if self.exists(name):
            self.teardowns.append((name, hurry))
        super().teardown(name, hurry=hurry, quiet=quiet)


@dataclass
class FluxBridge:
    jm: InMemoryJobManager
    lifecycle: RecordingLifecycle
    service: DwsService | None
    plugins: list[DwsJobtap] = field(default_factory=list)

    def job(self, jobid: int) -> MemoryJob:
        return self.jm.job_record(jobid)

    def run_job(self, **submit: Any) -> MemoryJob:
        """Submit one job (arguments as InMemoryJobManager.submit) and run the job manager until idle."""
        jobid = self.jm.submit(**submit)
        self.jm.run()
        return self.job(jobid)

    def topics(self) -> list[str]:
        return [topic for topic, _ in self.jm.rpcs]

    def requests(self, topic: str) -> list[dict[str, Any]]:
        return [payload for name, payload in self.jm.rpcs if name == topic]


def make_bridge(config: Config, *, with_service: bool = True, epilog_timeout: float = 0.0) -> FluxBridge:
    lifecycle = RecordingLifecycle(config)
    plugins: list[DwsJobtap] = []

    def plugin(jm: InMemoryJobManager) -> DwsJobtap:
        plugins.append(DwsJobtap(jm, epilog_timeout=epilog_timeout))
        return plugins[-1]

    jm = InMemoryJobManager(plugin)
    service = DwsService(lifecycle, defer=jm.defer) if with_service else None
    jm.service = service
    return FluxBridge(jm, lifecycle, service, plugins)
