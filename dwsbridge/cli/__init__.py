"""`dwsbridge` command line: one module per command group, each exposing `register(subparsers)`.

Command modules must stay light to import (heavy libraries are imported inside their handlers), so that
`dwsbridge validate` starts fast. The global options (--config, --backend, --kubeconfig) may come before
or after the command, as with kubectl: `add_global_options` gives a command the same options with
defaults that do not hide a value given before it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from dwsbridge.errors import DwsBridgeError

COMMAND_MODULES = (
    "dwsbridge.cli.validate",
    "dwsbridge.cli.admin",
    "dwsbridge.cli.slurm",
    "dwsbridge.cli.flux",
    "dwsbridge.cli.agent",
    "dwsbridge.cli.storage",
)

EPILOG = """\
examples:
  dwsbridge validate job.sh                 check every #DW line of a job script
  dwsbridge manifest --wlm slurm --job-id 12 --uid 1000 --gid 1000 job.sh
  dwsbridge status                          list workflows on this cluster
  dwsbridge --backend kubernetes status     global options go before or after the command

Configuration: $DWSBRIDGE_CONFIG (default /etc/dwsbridge/config.yaml); $DWSBRIDGE_ROOT overrides the
local backend's root. Exit codes: 0 success, 1 failure, 2 usage or configuration error, 3 not found.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dwsbridge",
        description="Connect Slurm and Flux jobs to DataWorkflowServices (DWS) burst-buffer storage.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_global_options(parser, backend=True, top=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def add_global_options(parser: argparse.ArgumentParser, *, backend: bool, top: bool = False) -> None:
    """--config (and, for commands that reach a backend, --backend and --kubeconfig). On a command's
    parser they default to "not given" (SUPPRESS), so `dwsbridge --backend X status` keeps X."""
    default = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--config", metavar="FILE", default=default, help="configuration file (default $DWSBRIDGE_CONFIG)"
    )
    if backend:
        parser.add_argument(
            "--backend",
            choices=("local", "kubernetes"),
            default=default,
            help="override the configured backend",
        )
        parser.add_argument(
            "--kubeconfig", metavar="FILE", default=default, help="kubeconfig for the kubernetes backend"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args))
    except DwsBridgeError as exc:
        print(f"dwsbridge: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
