"""Bounded line reading from a child's pipe, for root processes reading what a user's process writes.

A job's mover runs as the job's user, who can ptrace it and write anything into its stdout. A plain
``for line in stream`` keeps a line without a newline in memory however long it grows; this reader
never holds more than ``max_line`` bytes of one line plus one read's worth, and reports an over-long
line as :data:`OVERLONG` (once per line, the rest of it discarded) so the caller can treat the child as
misbehaving.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Final

# A progress event is well under 1 KiB; 64 KiB leaves room for long paths in error messages.
MAX_LINE: Final = 64 * 1024
_READ_SIZE: Final = 64 * 1024


class _Overlong:
    def __repr__(self) -> str:
        return "OVERLONG"


OVERLONG: Final = _Overlong()


def bounded_lines(stream: IO[bytes], max_line: int = MAX_LINE) -> Iterator[bytes | _Overlong]:
    """Yield each line (with its newline; the last one may lack it) or OVERLONG for one too long."""
    pending = bytearray()
    discarding = False
    read = getattr(stream, "read1", stream.read)
    while chunk := read(_READ_SIZE):
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            if discarding:
                discarding = False
            elif len(pending) + end + 1 - start > max_line:
                pending.clear()
                yield OVERLONG
            else:
                pending += chunk[start : end + 1]
                yield bytes(pending)
                pending.clear()
            start = end + 1
        if discarding:
            continue
        pending += chunk[start:]
        if len(pending) > max_line:
            pending.clear()
            discarding = True
            yield OVERLONG
    if pending and not discarding:
        yield bytes(pending)
