"""What a copy is asked to do, what it reports while running, and what it returns or raises."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from copyoffload.s3options import S3Options


def default_workers() -> int:
    """One worker per usable CPU (at least 2, at most 16): file creation is kernel CPU work."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 2
    return min(16, max(2, cpus))


@dataclass(frozen=True)
class CopyOptions:
    """How to copy. `preserve_owner` only has an effect when the copying process is root."""

    workers: int = field(default_factory=default_workers)
    dry_run: bool = False
    preserve_owner: bool = True
    progress_interval: float = 0.5
    chunk_size: int = 16 * 1024 * 1024
    # Files larger than this are written under a temporary name and renamed into place when complete.
    atomic_min_size: int = 1024 * 1024
    # Bytes per second across all workers; 0 = unlimited (a profile can cap a copy's bandwidth).
    bwlimit: int = 0
    # How s3:// sources and destinations are reached (ignored for file copies).
    s3: S3Options = field(default_factory=S3Options)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be a positive integer, not {self.workers}")
        if self.bwlimit < 0:
            raise ValueError(
                f"bwlimit must be 0 (unlimited) or a positive number of bytes/s, not {self.bwlimit}"
            )
        if self.chunk_size < 4096:
            raise ValueError(f"chunk_size must be at least 4096 bytes, not {self.chunk_size}")


DEFAULT_OPTIONS = CopyOptions()


@dataclass(frozen=True)
class Progress:
    """A snapshot of a running copy. Totals grow while `scan_complete` is False (the walk is streamed)."""

    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    scan_complete: bool
    finished: bool = False

    @property
    def percent(self) -> float:
        """100.0 only once the copy has finished; below 100 until then, even when all bytes are written."""
        if self.finished:
            return 100.0
        if self.bytes_total > 0:
            fraction = self.bytes_done / self.bytes_total
        elif self.files_total > 0:
            fraction = self.files_done / self.files_total
        else:
            fraction = 0.0
        return min(99.9, round(100.0 * fraction, 1))

    def to_dict(self) -> dict[str, object]:
        return {
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "files_done": self.files_done,
            "files_total": self.files_total,
            "scan_complete": self.scan_complete,
            "finished": self.finished,
            "percent": self.percent,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Progress:
        return cls(
            bytes_done=_int(data, "bytes_done"),
            bytes_total=_int(data, "bytes_total"),
            files_done=_int(data, "files_done"),
            files_total=_int(data, "files_total"),
            scan_complete=bool(data.get("scan_complete")),
            finished=bool(data.get("finished")),
        )


@dataclass(frozen=True)
class CopyResult:
    """What was copied. `files` counts every non-directory entry (regular files, symlinks, fifos, links)."""

    files: int
    dirs: int
    symlinks: int
    bytes: int
    dry_run: bool = False
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
            "bytes": self.bytes,
            "dry_run": self.dry_run,
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> CopyResult:
        warnings = data.get("warnings") or []
        return cls(
            files=_int(data, "files"),
            dirs=_int(data, "dirs"),
            symlinks=_int(data, "symlinks"),
            bytes=_int(data, "bytes"),
            dry_run=bool(data.get("dry_run")),
            warnings=tuple(str(w) for w in warnings) if isinstance(warnings, list) else (),
        )


class CopyError(Exception):
    """A copy failed; `str(err)` names the path and the OS reason: `cannot read /x: Permission denied`."""

    def __init__(self, message: str, *, path: str = "", errno: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.errno = errno


class CopyCancelled(Exception):
    """The copy was stopped before it finished: cancelled by the caller, or its process was killed."""


def os_failure(verb: str, path: str, exc: OSError) -> CopyError:
    """`cannot <verb> <path>: <strerror>`, the one shape of every OS-level copy error."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return CopyError(f"cannot {verb} {path}: {reason}", path=path, errno=exc.errno)


def _int(data: dict[str, object], key: str) -> int:
    value = data.get(key, 0)
    return int(value) if isinstance(value, int | float | str) else 0
