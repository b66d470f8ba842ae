"""`python -m copyoffload.mover SRC DEST [--workers N] [--dry-run] [--json-progress]`.

Exit status: 0 copied, 1 copy error, 2 usage, 3 refused to run (privileges), 130 cancelled (SIGTERM/SIGINT).
With --json-progress, stdout carries the JSON-lines protocol `copy_as_user` reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, SimpleNamespace

from copyoffload.mover.model import CopyCancelled, CopyError, CopyOptions, Progress, S3Options
from copyoffload.mover.tree import copy_tree
from copyoffload.privileges import PrivilegeError, verify_dropped
from copyoffload.s3options import S3_OPTIONS_ENV

# Not typing.TYPE_CHECKING: importing typing would cost every copy's child process several ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

Emit = Callable[[dict[str, object]], None]

# Each option that takes a value, with the type argparse gives it. The argv `child_argv` writes (every
# copy_as_user) is read with this table, not argparse, which with the shutil, gettext and locale it loads
# costs each copy ~5 ms; tests/test_mover_startup.py holds the table to `_parser()`.
_VALUED: dict[str, Callable[[str], object]] = {
    "--workers": int,
    "--bwlimit": int,
    "--progress-interval": float,
    "--chunk-size": int,
    "--atomic-min-size": int,
    "--s3-options": str,
    "--expect-uid": int,
    "--expect-gid": int,
}
_SWITCHES = ("--dry-run", "--json-progress", "--no-preserve-owner")


def _defaults() -> dict[str, object]:
    options = CopyOptions()
    return {
        "workers": options.workers,
        "bwlimit": options.bwlimit,
        "progress_interval": options.progress_interval,
        "chunk_size": options.chunk_size,
        "atomic_min_size": options.atomic_min_size,
        "s3_options": None,
        "expect_uid": None,
        "expect_gid": None,
        "dry_run": False,
        "json_progress": False,
        "no_preserve_owner": False,
    }


def _parse_args(argv: list[str]) -> SimpleNamespace:
    return _parse_plain(argv) or SimpleNamespace(**vars(_parser().parse_args(argv)))


def _parse_plain(argv: list[str]) -> SimpleNamespace | None:
    """`SRC DEST` then whole `--name value` and `--switch` options, as argparse reads them; None for
    anything else (--help, a mistake, an abbreviation, a value like an option), which argparse judges."""
    if len(argv) < 2 or any(arg.startswith("-") for arg in argv[:2]):
        return None
    values = _defaults() | {"src": argv[0], "dest": argv[1]}
    rest = iter(argv[2:])
    for flag in rest:
        if flag in _SWITCHES:
            values[_dest(flag)] = True
            continue
        kind = _VALUED.get(flag)
        value = next(rest, None)
        if kind is None or value is None or value.startswith("-"):
            return None
        try:
            values[_dest(flag)] = kind(value)
        except ValueError:
            return None
    return SimpleNamespace(**values)


def _dest(flag: str) -> str:
    return flag[2:].replace("-", "_")  # argparse's attribute name for an option


def _parser() -> argparse.ArgumentParser:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m copyoffload.mover",
        description="Copy like cp -a, in parallel. SRC or DEST may be s3://BUCKET/KEY (a key ending in / "
        "is a prefix: a whole tree), with the credentials in your ~/.aws (AWS_PROFILE, AWS_ENDPOINT_URL "
        "apply).",
    )
    p.add_argument("src")
    p.add_argument("dest")
    p.add_argument("--workers", type=int)
    p.add_argument("--dry-run", action="store_true", help="walk and count; write nothing")
    p.add_argument("--bwlimit", type=int, metavar="BYTES", help="bytes per second (0: unlimited)")
    p.add_argument("--json-progress", action="store_true", help="JSON lines on stdout (progress, result)")
    p.add_argument("--progress-interval", type=float)
    p.add_argument("--chunk-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--atomic-min-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--no-preserve-owner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--s3-options", metavar="JSON", help="s3:// settings (endpoint_url, max_concurrency, ...)")
    p.add_argument("--expect-uid", type=int, help=argparse.SUPPRESS)
    p.add_argument("--expect-gid", type=int, help=argparse.SUPPRESS)
    p.set_defaults(**_defaults())
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    cancel = threading.Event()
    emit = _json_emitter(on_reader_gone=cancel.set) if args.json_progress else _text_emitter()
    if args.expect_uid is not None:
        try:
            verify_dropped(args.expect_uid, args.expect_gid if args.expect_gid is not None else -1)
        except PrivilegeError as exc:
            emit({"event": "error", "kind": "copy", "message": f"refusing to copy: {exc}"})
            return 3

    def on_signal(signum: int, frame: FrameType | None) -> None:
        cancel.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        options = CopyOptions(
            workers=args.workers,
            dry_run=args.dry_run,
            preserve_owner=not args.no_preserve_owner,
            progress_interval=args.progress_interval,
            chunk_size=args.chunk_size,
            atomic_min_size=args.atomic_min_size,
            bwlimit=args.bwlimit,
            s3=_s3_options(args.s3_options),
        )
    except ValueError as exc:
        emit({"event": "error", "kind": "copy", "message": str(exc)})
        return 2

    def on_progress(p: Progress) -> None:
        emit({"event": "progress", **p.to_dict()})

    try:
        result = copy_tree(args.src, args.dest, options=options, progress=on_progress, cancel=cancel)
    except CopyCancelled as exc:
        emit({"event": "error", "kind": "cancelled", "message": str(exc)})
        return 130
    except CopyError as exc:
        emit({"event": "error", "kind": "copy", "message": str(exc), "path": exc.path})
        return 1
    emit({"event": "result", **result.to_dict()})
    return 0


def _s3_options(text: str | None) -> S3Options:
    """$COPYOFFLOAD_S3_OPTIONS (a server's site settings), then --s3-options."""
    options = S3Options()
    for where, value in (("$" + S3_OPTIONS_ENV, os.environ.get(S3_OPTIONS_ENV)), ("--s3-options", text)):
        if not value:
            continue
        try:
            data = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{where} is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be a JSON object")
        options = S3Options.from_mapping(data, base=options)
    return options


def _json_emitter(on_reader_gone: Callable[[], None]) -> Emit:
    """JSON lines on stdout. When the reader is gone (the parent died: broken pipe) the copy is
    cancelled, so it removes its partial output and exits; nothing more is written."""
    lock = threading.Lock()
    gone = False

    def emit(event: dict[str, object]) -> None:
        nonlocal gone
        with lock:
            if gone:
                return
            try:
                sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
                sys.stdout.flush()
            except (BrokenPipeError, ValueError):
                gone = True
                _silence_stdio()
                on_reader_gone()

    return emit


def _silence_stdio() -> None:
    """Point stdout and stderr at /dev/null, so later writes and the flush at exit cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            os.dup2(devnull, stream.fileno())
    os.close(devnull)


def _text_emitter() -> Emit:
    def emit(event: dict[str, object]) -> None:
        kind = event.get("event")
        if kind == "progress":
            print(
                f"{event['percent']:5.1f}% {event['files_done']}/{event['files_total']} files "
                f"{event['bytes_done']}/{event['bytes_total']} bytes",
                file=sys.stderr,
            )
        elif kind == "result":
            print(f"copied {event['files']} files, {event['dirs']} directories, {event['bytes']} bytes")
            warnings = event.get("warnings")
            for warning in warnings if isinstance(warnings, list) else []:
                print(f"warning: {warning}", file=sys.stderr)
        else:
            print(f"error: {event.get('message')}", file=sys.stderr)

    return emit


def _exit(code: int) -> None:
    """Exit without interpreter teardown: it costs every copy a few ms, and abandoned S3 requests may still
    hold threads (a cancel must not wait for them). Nothing is left to clean up but the output buffers."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
