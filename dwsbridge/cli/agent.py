"""`dwsbridge agent`: the long-running daemon Slurm's burst-buffer hooks delegate to (dwsbridge.agent)."""

from __future__ import annotations

import argparse
from typing import Any

AGENT_EPILOG = """\
examples:
  dwsbridge agent                                      serve /run/dwsbridge/agent.sock
  dwsbridge agent --socket /run/dwsbridge/agent.sock --config /etc/dwsbridge/config.yaml

Run it as root beside slurmctld (`dwsbridge slurm install` writes a systemd unit,
dwsbridge-agent.service). burst_buffer.lua's hooks hand their work to it over the socket and run
the bridge in-process when it is not running. It reloads the configuration file when it changes;
SIGTERM stops it after the requests in flight are done.
"""


def register(subparsers: Any) -> None:
    from dwsbridge.hookclient import DEFAULT_SOCKET

    agent = subparsers.add_parser(
        "agent",
        help="run the bridge agent the Slurm hooks delegate to (root)",
        description="Serve Slurm's burst_buffer.lua hooks from one long-running process, so that no hook "
        "pays for starting Python and importing the bridge (and the Kubernetes client).",
        epilog=AGENT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    agent.add_argument(
        "--socket", default=DEFAULT_SOCKET, metavar="PATH", help="Unix socket to serve (default %(default)s)"
    )
    agent.add_argument(
        "--config",
        dest="agent_config",
        metavar="FILE",
        help="dwsbridge configuration file (default $DWSBRIDGE_CONFIG, else /etc/dwsbridge/config.yaml); "
        "must be the one burst_buffer.lua's hooks use",
    )
    agent.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long to let requests in flight finish (default %(default)s)",
    )
    agent.set_defaults(handler=cmd_agent)


def cmd_agent(args: argparse.Namespace) -> int:
    from dwsbridge.agent import main

    config = args.agent_config or getattr(args, "config", None)
    return main(args.socket, config, drain_timeout=args.drain_timeout)
