"""``nnf-dm-client``: data movement from inside a job, through the node's nnf-dm daemon."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nnfdm.client import ClientError, DataMovementClient, Status

EPILOG = """\
The workflow is $DW_WORKFLOW_NAME in $DW_WORKFLOW_NAMESPACE (set in every #DW job); paths may start
with $DW_JOB_<name> (quote it so the daemon resolves it, as copy_in/copy_out do), the socket is
$NNF_DM_SOCKET or /var/run/nnf-dm.sock.

examples:
  uid=$(nnf-dm-client create '$DW_JOB_scratch/out' /lus/me/out)   # start; print the request's uid
  nnf-dm-client status "$uid" --wait 60 --json                     # wait up to 60 s
  nnf-dm-client create "$DW_JOB_scratch/out" /lus/me/out --wait    # copy with a progress display
  nnf-dm-client list ; nnf-dm-client cancel "$uid" ; nnf-dm-client delete "$uid"

exit codes: 0 success, 1 the request failed or was refused, 2 usage, 3 request not found
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnf-dm-client",
        description="Ask the node's nnf-dm daemon to move data for your workflow.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--socket", help="the daemon's socket (default $NNF_DM_SOCKET or /var/run/nnf-dm.sock)")
    p.add_argument("--workflow", help="workflow name (default $DW_WORKFLOW_NAME)")
    p.add_argument("--namespace", help="workflow namespace (default $DW_WORKFLOW_NAMESPACE or default)")
    p.add_argument("--json", action="store_true", help="machine-readable output (also after COMMAND)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("version", parents=[common], help="the daemon's version and API versions")
    c = sub.add_parser(
        "create", aliases=["copy"], parents=[common], help="start copying SOURCE to DESTINATION"
    )
    c.add_argument("source")
    c.add_argument("destination")
    c.add_argument("--dryrun", action="store_true", help="check the request; copy nothing")
    c.add_argument("--profile", default="", help="a data-movement profile of the site")
    c.add_argument("--slots", type=int, default=-1, help="parallel workers (-1: profile's default)")
    c.add_argument("--max-slots", type=int, default=-1, help="cap on workers (-1: profile's)")
    c.add_argument("--store-stdout", action="store_true", help="keep the copy's output in the status")
    c.add_argument("--wait", action="store_true", help="wait for the copy, showing its progress")
    s = sub.add_parser("status", parents=[common], help="a request's status")
    s.add_argument("uid")
    s.add_argument("--wait", type=int, default=0, metavar="SECS", help="wait up to SECS (-1: until done)")
    for name, text in (("cancel", "stop a request"), ("delete", "forget a finished request")):
        sub.add_parser(name, parents=[common], help=text).add_argument("uid")
    sub.add_parser("list", parents=[common], help="the workflow's requests")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with DataMovementClient(args.socket, workflow=args.workflow, namespace=args.namespace) as dm:
            return _run(dm, args)
    except ClientError as exc:
        _print_error(args, exc)
        return 3 if exc.status == "NOT_FOUND" else 1


def _run(dm: DataMovementClient, args: argparse.Namespace) -> int:
    if args.command == "version":
        version, apis = dm.version()
        _out(args, {"version": version, "apiVersions": apis}, f"{version} (api versions: {', '.join(apis)})")
        return 0
    if args.command in ("create", "copy"):
        uid = dm.create(
            args.source,
            args.destination,
            dryrun=args.dryrun,
            profile=args.profile,
            slots=args.slots,
            max_slots=args.max_slots,
            store_stdout=args.store_stdout,
        )
        if not args.wait:
            _out(args, {"uid": uid}, uid)
            return 0
        show = None if args.json else _progress_line
        status = dm.wait(uid, on_progress=show)
        if show is not None:
            print(file=sys.stderr)
        return _report(args, status, uid)
    if args.command == "status":
        return _report(args, dm.status(args.uid, args.wait), args.uid, final=False)
    if args.command == "cancel":
        dm.cancel(args.uid)
        _out(args, {"uid": args.uid, "cancelled": True}, f"{args.uid} cancelled")
        return 0
    if args.command == "delete":
        dm.delete(args.uid)
        _out(args, {"uid": args.uid, "deleted": True}, f"{args.uid} deleted")
        return 0
    uids = dm.list()
    _out(args, {"uids": uids}, "\n".join(uids))
    return 0


def _report(args: argparse.Namespace, status: Status, uid: str, *, final: bool = True) -> int:
    text = f"{uid} {status.state} {status.status}"
    if status.progress and not status.finished:
        text += f" {status.progress}%"
    if status.message:
        text += f": {status.message}"
    _out(args, {"uid": uid, **status.as_dict()}, text)
    if status.finished:
        return 0 if status.status == "SUCCESS" else 1
    return 1 if final else 0


def _progress_line(status: Status) -> None:
    width = 30
    percent = 100 if status.finished and status.status == "SUCCESS" else status.progress
    filled = width * max(0, min(100, percent)) // 100
    bar = "#" * filled + "-" * (width - filled)
    print(f"\r[{bar}] {percent:3d}% {status.state.lower():<10}", end="", file=sys.stderr, flush=True)


def _out(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(data, sort_keys=True))
    elif text:
        print(text)


def _print_error(args: argparse.Namespace, exc: ClientError) -> None:
    if args.json:
        print(json.dumps({"error": str(exc), "status": exc.status}, sort_keys=True))
    else:
        print(f"nnf-dm-client: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
