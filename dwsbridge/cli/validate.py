"""`dwsbridge validate` and `dwsbridge manifest`: check a job's #DW directives, show the Workflow they make.

Kept light to import: the directive engine, YAML and JSON are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from dwsbridge.errors import DwsBridgeError

if TYPE_CHECKING:
    from dwsbridge.directives import Directive, Limits, RuleSet
    from dwsbridge.errors import DirectiveError

VALIDATE_DESCRIPTION = """\
Check every #DW directive of a job the way the job's submission will: the #DW grammar, the site's
DWDirectiveRule ruleset (the bundled NNF rules unless the config or --ruleset names another), and the
rules NNF applies at Proposal (copy_in/copy_out paths, container storage arguments, non-zero capacity,
one container, create_persistent alone). Every problem is reported, not just the first, up to the
config's max_errors (20), then '... and N more'; a job over max_directives (1000) or
max_directive_bytes (256 KiB) gets one error. Ruleset patterns are Go regular expressions (RE2).

Which lines count (Slurm, and the default): only the script's leading comment block is read, as Slurm
does. Empty lines are skipped; the first line that does not start with '#' ends the block. Every line
there that starts with '#DW' is a directive (so '#DWjobdw' is one, and is reported as malformed);
a directive ending in '\\' continues on the next '#DW' line.

With --wlm flux the input is the value of the job's `dw` attribute (what you pass to
`flux submit -S dw=...`): one or more directives, split on '#DW '.

With --wlm slurm, Slurm's own rule is checked too: a line with capacity= must name the burst-buffer
pool with pool=<pool> (the bridge removes pool= before DWS sees the directive).
"""

VALIDATE_EPILOG = """\
examples:
  dwsbridge validate job.sh                      check a batch script's #DW lines
  dwsbridge validate --wlm slurm job.sh          ... and Slurm's pool= rule (pool from the config, or --pool)
  dwsbridge validate --json job.sh               machine-readable result on stdout
  dwsbridge validate --ruleset site-rules.yaml job.sh
  echo '#DW jobdw type=xfs capacity=10GiB name=scratch' | dwsbridge validate --wlm flux -

A valid script, e.g.:
  #!/bin/bash
  #SBATCH --nodes=1
  #DW jobdw type=xfs capacity=10GiB name=scratch pool=dws
  #DW copy_in source=/lus/project/input destination=$DW_JOB_scratch/input
  #DW copy_out source=$DW_JOB_scratch/output destination=/lus/project/output
  srun ./app $DW_JOB_scratch

exit status: 0 all directives valid, 1 some are invalid (one 'error:' line each, on stderr),
             2 the script or the ruleset cannot be read
"""

MANIFEST_DESCRIPTION = """\
Validate a job's #DW directives (as `dwsbridge validate` does) and print the DWS Workflow resource the
bridge would create for it: apiVersion dataworkflowservices.github.io/v1alpha7, named bb<job-id> for
Slurm or fluxjob-<job-id> for Flux, in desiredState Proposal, with the directives as DWS receives them
(Slurm's pool= removed). Nothing is created; pipe the output to `kubectl apply -f -` to try it on a
cluster by hand.
"""

MANIFEST_EPILOG = """\
examples:
  dwsbridge manifest --wlm slurm --job-id 12 --uid 1000 --gid 1000 job.sh
  dwsbridge manifest --wlm slurm --job-id 12 --uid $(id -u) --gid $(id -g) --json job.sh
  echo '#DW jobdw type=xfs capacity=1GiB name=x' | \\
      dwsbridge manifest --wlm flux --job-id 7 --uid 1000 --gid 1000 -

exit status: 0 printed, 1 invalid directives (one 'error:' line each), 2 unreadable input or ruleset
"""


class UnreadableInput(DwsBridgeError):
    """The job script (or stdin) could not be read."""

    exit_code = 2


def register(subparsers: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    validate = subparsers.add_parser(
        "validate",
        help="check the #DW directives of a job script",
        description=VALIDATE_DESCRIPTION,
        epilog=VALIDATE_EPILOG,
        formatter_class=fmt,
    )
    _input_options(validate, wlm_required=False)
    validate.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    validate.set_defaults(handler=run_validate)

    manifest = subparsers.add_parser(
        "manifest",
        help="print the DWS Workflow a job would create",
        description=MANIFEST_DESCRIPTION,
        epilog=MANIFEST_EPILOG,
        formatter_class=fmt,
    )
    _input_options(manifest, wlm_required=True)
    manifest.add_argument(
        "--job-id", required=True, type=_job_id, metavar="N", help="the WLM's job id (digits)"
    )
    manifest.add_argument("--uid", required=True, type=int, metavar="U", help="the job owner's user id")
    manifest.add_argument("--gid", required=True, type=int, metavar="G", help="the job owner's group id")
    manifest.add_argument("--namespace", metavar="NS", help="Kubernetes namespace (default: from the config)")
    manifest.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    manifest.set_defaults(handler=run_manifest)


def _job_id(text: str) -> str:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"a job id contains only digits, not {text!r}")
    return text


def _input_options(parser: argparse.ArgumentParser, *, wlm_required: bool) -> None:
    from dwsbridge.cli import add_global_options

    add_global_options(parser, backend=False)
    parser.add_argument(
        "--ruleset",
        metavar="FILE",
        help="DWDirectiveRule YAML file (default: the config's ruleset, else the bundled NNF rules)",
    )
    parser.add_argument(
        "--wlm",
        choices=("slurm", "flux"),
        required=wlm_required,
        help="how the job reaches the bridge: a Slurm batch script, or a Flux dw attribute",
    )
    parser.add_argument(
        "--pool", metavar="NAME", help="Slurm burst-buffer pool that pool= must name (default: the config's)"
    )
    parser.add_argument(
        "--backend",
        choices=("local", "kubernetes"),
        help="judge s3:// staging paths for this backend (default: the config's); kubernetes refuses them",
    )
    parser.add_argument("script", metavar="SCRIPT", help="the job script, or - to read standard input")


def _read_input(path: str) -> tuple[str, str]:
    """(text, how to name it in messages) of a script path or '-'."""
    if path == "-":
        return sys.stdin.buffer.read().decode("utf-8", errors="replace"), "<stdin>"
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise UnreadableInput(f"cannot read job script {path}: {exc.strerror or exc}") from exc
    return data.decode("utf-8", errors="replace"), path


def _settings(args: argparse.Namespace) -> tuple[RuleSet, str, str, Limits]:
    """The ruleset, pool name, namespace and limits: options first, then the config file, then
    defaults."""
    from dwsbridge.config import load_config
    from dwsbridge.directives import RuleSet

    config = load_config(args.config)
    ruleset_path: str | None = args.ruleset
    if ruleset_path is None and config.ruleset is not None:
        ruleset_path = str(config.ruleset)
    pool = args.pool if args.pool is not None else config.pool_name
    namespace = getattr(args, "namespace", None) or config.namespace
    return RuleSet.load(ruleset_path), pool or "dws", namespace or "default", config.directive_limits


def _check(args: argparse.Namespace) -> tuple[str, list[Directive], list[DirectiveError], str]:
    from dwsbridge.directives import check_job, job_directives

    text, shown = _read_input(args.script)
    ruleset, pool, namespace, limits = _settings(args)
    directives, errors = check_job(
        job_directives(text, args.wlm),
        ruleset=ruleset,
        wlm=args.wlm,
        pool=pool,
        limits=limits,
        backend=_backend(args),
    )
    return shown, directives, errors, namespace


def _backend(args: argparse.Namespace) -> str:
    if args.backend:
        return str(args.backend)
    from dwsbridge.config import load_config

    return load_config(args.config).backend


def _print_errors(errors: list[DirectiveError]) -> None:
    for error in errors:
        print(f"error: {error}", file=sys.stderr)


def run_validate(args: argparse.Namespace) -> int:
    shown, directives, errors, _ = _check(args)
    if args.json:
        import json

        from dwsbridge.errors import MoreErrors

        result = {
            "valid": not errors,
            "directives": [
                {"line": d.line, "text": d.text, "command": d.command, "args": d.args} for d in directives
            ],
            "errors": [
                {"line": e.line, "directive": e.directive, "argument": e.argument, "message": str(e)}
                for e in errors
                if not isinstance(e, MoreErrors)
            ],
            "more_errors": sum(e.count for e in errors if isinstance(e, MoreErrors)),
        }
        print(json.dumps(result, indent=2))
        return 1 if errors else 0
    if errors:
        _print_errors(errors)
        return 1
    if not directives:
        print(f"{shown}: OK, no #DW directives")
    else:
        commands = ", ".join(sorted({d.command for d in directives}))
        noun = "directive" if len(directives) == 1 else "directives"
        print(f"{shown}: OK, {len(directives)} #DW {noun} valid ({commands})")
    return 0


def run_manifest(args: argparse.Namespace) -> int:
    from dwsbridge.workflow import build_workflow

    _, directives, errors, namespace = _check(args)
    if errors:
        _print_errors(errors)
        return 1
    workflow = build_workflow(
        wlm=args.wlm,
        job_id=args.job_id,
        uid=args.uid,
        gid=args.gid,
        directives=[d.text for d in directives],
        namespace=namespace,
    )
    if args.json:
        import json

        print(json.dumps(workflow, indent=2))
    else:
        import yaml

        sys.stdout.write(yaml.safe_dump(workflow, sort_keys=False, default_flow_style=False))
    return 0
