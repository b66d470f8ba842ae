"""Admin commands over the configured backend, like kubectl for DWS: create, advance, status, env,
teardown."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dwsbridge.errors import DwsBridgeError

ADMIN_EPILOG = """\
examples:
  dwsbridge create --wlm slurm --job-id 42 --uid 1000 --gid 1000 job.sh     prints bb42
  dwsbridge advance bb42 Setup --wait 120
  dwsbridge status                 dwsbridge status bb42 --json
  dwsbridge env bb42               KEY=VALUE lines for the job
  dwsbridge teardown bb42 --hurry
"""


def _lifecycle(args: argparse.Namespace) -> Any:
    from dwsbridge.config import load_config
    from dwsbridge.lifecycle import Lifecycle

    overrides: dict[str, Any] = {}
    if getattr(args, "backend", None):
        overrides["backend"] = args.backend
    if getattr(args, "kubeconfig", None):
        overrides["kubeconfig"] = args.kubeconfig
    return Lifecycle(load_config(args.config, **overrides))


def _common(parser: argparse.ArgumentParser) -> None:
    from dwsbridge.cli import add_global_options

    add_global_options(parser, backend=True)


def register(subparsers: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "create",
        help="create a workflow from a job script's #DW lines",
        description="Create the job's Workflow and complete Proposal; prints the workflow name.",
        epilog=ADMIN_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument("--wlm", choices=("slurm", "flux"), required=True)
    p.add_argument("--job-id", required=True)
    p.add_argument("--uid", type=int, required=True)
    p.add_argument("--gid", type=int, required=True)
    p.add_argument("script", help="job script, or - for standard input")
    _common(p)
    p.set_defaults(handler=cmd_create)

    p = subparsers.add_parser(
        "advance",
        help="move a workflow to its next state and wait",
        description="Set desiredState and wait for the state to complete. Exit 1 with DWS's message when "
        "the transition is refused or the state ends in Error.",
        epilog=ADMIN_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument("name")
    p.add_argument("state", help="Proposal, Setup, DataIn, PreRun, PostRun, DataOut or Teardown")
    p.add_argument("--wait", type=float, metavar="SECONDS", help="how long to wait (default: config)")
    _common(p)
    p.set_defaults(handler=cmd_advance)

    p = subparsers.add_parser(
        "status",
        help="list workflows or show one",
        description="A table of workflows: name, job, user, desired/current state, ready, status, age. "
        "With NAME: every field of that workflow, including the driver's message.",
        epilog=ADMIN_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument("name", nargs="?")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _common(p)
    p.set_defaults(handler=cmd_status)

    p = subparsers.add_parser(
        "env",
        help="print a workflow's job environment",
        description="KEY=VALUE lines: status.env plus DW_WORKFLOW_TOKEN when present.",
        epilog=ADMIN_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    _common(p)
    p.set_defaults(handler=cmd_env)

    p = subparsers.add_parser(
        "teardown",
        help="tear a workflow down and delete it",
        description="Walk to Teardown (with --hurry: skip data out, kill copies) and delete. Idempotent.",
        epilog=ADMIN_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument("name")
    p.add_argument("--hurry", action="store_true")
    _common(p)
    p.set_defaults(handler=cmd_teardown)


def cmd_create(args: argparse.Namespace) -> int:
    from dwsbridge.directives import RuleSet, script_directives, validate_job

    text = sys.stdin.read() if args.script == "-" else _read(args.script)
    lc = _lifecycle(args)
    ruleset = RuleSet.load(lc.config.ruleset)  # the site's rules, as the hooks and the backend judge
    directives = validate_job(
        script_directives(text),
        ruleset=ruleset,
        wlm=args.wlm,
        pool=lc.config.pool_name,
        limits=lc.config.directive_limits,
        backend=lc.config.backend,
    )
    name = lc.create(
        wlm=args.wlm, job_id=args.job_id, uid=args.uid, gid=args.gid, directives=[d.text for d in directives]
    )
    print(name)
    return 0


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError as exc:
        raise DwsBridgeError(f"cannot read {path}: {exc.strerror}") from exc


def cmd_advance(args: argparse.Namespace) -> int:
    from dwsbridge.workflow import STATES

    if args.state not in STATES:
        print(f"dwsbridge: error: unknown state {args.state!r}; one of {', '.join(STATES)}", file=sys.stderr)
        return 2
    lc = _lifecycle(args)
    if args.state == "Teardown":
        lc.backend.update_desired_state(args.name, "Teardown")
    status = lc.advance_to(args.name, args.state, timeout=args.wait)["status"]
    print(f"{args.name}: {args.state} {status.get('status', '')}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    lc = _lifecycle(args)
    rows = [lc.status(args.name)] if args.name else lc.list()
    if args.json:
        print(json.dumps([r.as_dict() for r in rows] if not args.name else rows[0].as_dict(), indent=2))
        return 0
    from dwsbridge.display import format_detail, format_table

    print(format_detail(rows[0]) if args.name else format_table(rows), end="")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    env = _lifecycle(args).environment(args.name)
    if args.json:
        import json

        print(json.dumps(env, indent=2, sort_keys=True))
    else:
        for key in sorted(env):
            print(f"{key}={env[key]}")
    return 0


def cmd_teardown(args: argparse.Namespace) -> int:
    _lifecycle(args).teardown(args.name, hurry=args.hurry)
    print(f"{args.name}: torn down")
    return 0
