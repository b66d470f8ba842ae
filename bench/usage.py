"""How benchmarks are started, so that each one's --help shows a command that works: they import
`bench.*`, so they run as modules from the repository root, never as `python bench/<file>.py`."""

from __future__ import annotations


def prog(module: str) -> str:
    return f".venv/bin/python -m {module}"
