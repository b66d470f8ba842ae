"""BENCHMARKS.md is shared: each benchmark replaces only its own ``## `` section and leaves the others."""

from __future__ import annotations

import re
from pathlib import Path


def write_section(path: Path, section: str) -> None:
    """Replace the section headed by ``section``'s first line (up to the next ``## ``), or append it."""
    heading = section.split("\n", 1)[0]
    body = section.strip("\n") + "\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: body + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text.rstrip("\n") + "\n")
