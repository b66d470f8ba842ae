"""`dwsbridge` command line: one module per command group, each exposing `register(subparsers)`.

Command modules must stay light to import (heavy libraries are imported inside their handlers), so that
`dwsbridge validate` starts fast.
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
    "dwsbridge.cli.agent",
    "dwsbridge.cli.storage",
)

EPILOG = """\
examples:
  dwsbridge validate job.sh                 check every #DW line of a job script
  dwsbridge manifest --wlm slurm --job-id 12 --uid 1000 --gid 1000 job.sh
  dwsbridge status                          list workflows on this cluster

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
    parser.add_argument("--config", metavar="FILE", help="configuration file (default $DWSBRIDGE_CONFIG)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


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
