"""``nnf-dm``: the compute-node data-movement daemon, with upstream's flags and commands."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from nnfdm import DEFAULT_SOCKET

EPILOG = """\
commands:
  (none)    run the daemon in the foreground (systemd runs it so)
  version   print the daemon's version and the API versions it serves
  install   write the systemd unit (nnf-dm.service) running this command with the given flags
  remove    stop, disable and remove the unit
  start | stop | status   systemctl start/stop/status nnf-dm

Applications on this node ask the daemon to move data for their workflow over gRPC on --socket
(package datamovement, service DataMover). Callers are identified by the kernel (SO_PEERCRED); a
request runs as its caller, only for the caller's own workflow, and only while it is in PreRun.

examples:
  nnf-dm --socket /var/run/nnf-dm.sock                  # serve (the dwsbridge config selects the backend)
  nnf-dm --simulated --socket /tmp/nnf-dm.sock          # answer as upstream's simulator; move no data
  nnf-dm install --root /tmp/pkgroot --socket /run/nnf-dm.sock   # <root>/etc/systemd/system/nnf-dm.service
  nnf-dm version

--kubernetes-service-host/-port and --nnf-data-movement-service-token-file/-cert-file (and their
environment variables) are accepted for compatibility with upstream's units and ignored: the backend
and its credentials come from the dwsbridge configuration ($DWSBRIDGE_CONFIG or --config).

exit codes: 0 ok, 1 failure, 2 usage or configuration error (status: systemctl's code)
"""

COMMANDS = ("version", "install", "remove", "start", "stop", "status")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("dwsbridge")
    except PackageNotFoundError:
        return "0.0.0"


def parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="nnf-dm",
        description="NNF data-movement daemon: gRPC data-movement requests over a Unix socket.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", nargs="?", choices=COMMANDS, metavar="COMMAND", help="see below")
    p.add_argument(
        "--socket", metavar="PATH", default=DEFAULT_SOCKET, help="listening socket (default %(default)s)"
    )
    p.add_argument("--simulated", action="store_true", help="answer as upstream's simulator; move no data")
    p.add_argument(
        "--node-name", metavar="NAME", default=env("NODE_NAME", ""), help="this host's name ($NODE_NAME)"
    )
    p.add_argument(
        "--nnf-node-name",
        metavar="NAME",
        default=env("NNF_NODE_NAME", ""),
        help="the Rabbit ($NNF_NODE_NAME)",
    )
    ignored = "accepted for upstream compatibility; ignored"
    p.add_argument(
        "--kubernetes-service-host", metavar="HOST", default=env("KUBERNETES_SERVICE_HOST", ""), help=ignored
    )
    p.add_argument(
        "--kubernetes-service-port", metavar="PORT", default=env("KUBERNETES_SERVICE_PORT", ""), help=ignored
    )
    p.add_argument(
        "--nnf-data-movement-service-token-file",
        metavar="PATH",
        default=env("NNF_DATA_MOVEMENT_SERVICE_TOKEN_FILE", ""),
        help=ignored,
    )
    p.add_argument(
        "--nnf-data-movement-service-cert-file",
        metavar="PATH",
        default=env("NNF_DATA_MOVEMENT_SERVICE_CERT_FILE", ""),
        help=ignored,
    )
    p.add_argument(
        "--config", metavar="FILE", help="dwsbridge configuration file (default $DWSBRIDGE_CONFIG)"
    )
    p.add_argument(
        "--copy-offload-cert",
        metavar="FILE",
        help="kubernetes backend: CA certificate of copy-offload servers",
    )
    p.add_argument(
        "--max-running", metavar="N", type=int, default=4, help="copies running at once per workflow"
    )
    p.add_argument(
        "--max-requests-per-user",
        metavar="N",
        type=int,
        default=256,
        help="requests a user may hold (create - delete)",
    )
    p.add_argument(
        "--max-waits-per-user",
        metavar="N",
        type=int,
        default=64,
        help="Status calls of one user waiting at once (more are answered at once)",
    )
    p.add_argument(
        "--sweep-interval",
        metavar="SECS",
        type=float,
        default=1.0,
        help="seconds between workflow-end checks",
    )
    p.add_argument(
        "--ready-file", metavar="FILE", help="write the daemon's pid here once it serves (for scripts)"
    )
    p.add_argument(
        "--log-level", metavar="LEVEL", default=env("NNF_DM_LOG_LEVEL", "INFO"), help="default %(default)s"
    )
    unit = p.add_argument_group("install/remove")
    unit.add_argument(
        "--root", metavar="DIR", default="/", help="install the unit under this directory (no systemctl)"
    )
    unit.add_argument(
        "--prefix", metavar="DIR", help="install: the directory holding bin/nnf-dm (default: this one)"
    )
    unit.add_argument("--force", action="store_true", help="install: replace an existing unit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "version":
        from nnfdm import API_VERSIONS

        print(f"nnf-dm {version()} (api versions: {', '.join(API_VERSIONS)})")
        return 0
    if args.command in ("install", "remove", "start", "stop", "status"):
        return _unit(args)
    return _serve(args)


def _unit(args: argparse.Namespace) -> int:
    from nnfdm import systemd

    try:
        if args.command == "install":
            path = systemd.install(_exec_start(args), root=args.root, force=args.force)
            print(f"installed {path}")
        elif args.command == "remove":
            print(f"removed {systemd.remove(root=args.root)}")
        else:
            return systemd.control(args.command, root=args.root)
    except systemd.UnitError as exc:
        print(f"nnf-dm: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"nnf-dm: {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


def _exec_start(args: argparse.Namespace) -> list[str]:
    """The daemon's command line for the unit: this program and the flags given to install."""
    binary = Path(args.prefix) / "bin" / "nnf-dm" if args.prefix else Path(sys.argv[0]).resolve()
    if binary.name != "nnf-dm":
        binary = Path(sys.executable).with_name("nnf-dm")
    command = [str(binary), "--socket", args.socket]
    for flag in ("node_name", "nnf_node_name", "config", "copy_offload_cert"):
        value = getattr(args, flag)
        if value:
            command += ["--" + flag.replace("_", "-"), str(value)]
    if args.simulated:
        command.append("--simulated")
    return command


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from dwsbridge.config import load_config
    from dwsbridge.errors import ConfigError
    from nnfdm.daemon import DaemonOptions, SocketInUse, serve

    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"nnf-dm: {exc}", file=sys.stderr)
        return 2
    options = DaemonOptions(
        socket=args.socket,
        simulated=args.simulated,
        node_name=args.node_name or config.compute_name,
        sweep_interval=max(0.05, args.sweep_interval),
        max_running=max(1, args.max_running),
        ready_file=args.ready_file,
        copy_offload_cert=args.copy_offload_cert,
        max_requests_per_user=max(1, args.max_requests_per_user),
        max_waits_per_user=max(0, args.max_waits_per_user),
    )
    try:
        asyncio.run(serve(config, options, version()))
    except SocketInUse as exc:
        print(f"nnf-dm: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"nnf-dm: cannot serve {args.socket}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
