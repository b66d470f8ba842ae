"""The DWS stand-in (testenv/dws_standin) as tests drive it. Importing this module puts testenv/ on
sys.path, so only the test modules that use the stand-in import it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TESTENV = Path(__file__).resolve().parent.parent / "testenv"
if str(TESTENV) not in sys.path:
    sys.path.insert(0, str(TESTENV))

from dws_standin import testing  # noqa: E402
from dws_standin.testing import RunningStandIn, StandInError  # noqa: E402

__all__ = ["RunningStandIn", "StandInError", "running_standin"]


@contextmanager
def running_standin(directory: Path, *extra: str) -> Iterator[RunningStandIn]:
    """A stand-in process serving from `directory` on a free loopback port over TLS, always stopped."""
    running = testing.start(directory, *extra)
    try:
        yield running
    finally:
        testing.stop(directory)
