"""`dwsbridge flux install`: the Flux instance's config snippets, the shell plugin and the service's unit."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from dwsbridge.errors import ConfigError

SERVICE_UNIT = "dwsbridge-flux.service"
SYSTEM_URI = "local:///run/flux/local"
EPILOG = f"""\
examples:
  dwsbridge flux install --conf-dir /etc/flux/system/conf.d --shell-dir /etc/flux/shell/lua.d
      a system instance: validator.toml, perilog.toml, access.toml, dws-env.lua,
      and {SERVICE_UNIT} in /etc/systemd/system
  dwsbridge flux install --conf-dir ./conf --shell-dir ./shell/lua.d --unit-dir . --flux /opt/flux/bin/flux \\
      --config /etc/dwsbridge/config.yaml --prolog-timeout 7200

Then restart the instance (or `flux config reload`), and start the service as root:
  systemctl daemon-reload && systemctl enable --now dwsbridge-flux
The entry file and the shell plugin are taken from the flux/ directory of this checkout (--source).
"""


def register(subparsers: Any) -> None:
    flux = subparsers.add_parser(
        "flux",
        help="Flux integration (validator, perilog, service, shell plugin)",
        description="Flux integration: install the instance configuration, shell plugin and service unit.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = flux.add_subparsers(dest="flux_command", metavar="ACTION")
    install = actions.add_parser(
        "install",
        help="write validator.toml, perilog.toml, access.toml, dws-env.lua and the service unit",
        description="Write the Flux config snippets (validator, perilog prolog/epilog with timeouts, "
        "[access] allow-root-owner for the root-run service) into --conf-dir, the shell plugin into "
        f"--shell-dir and {SERVICE_UNIT} into --unit-dir. Existing files are replaced.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    install.add_argument("--conf-dir", required=True, metavar="DIR", help="the instance's config directory")
    install.add_argument(
        "--shell-dir",
        default="/etc/flux/shell/lua.d",
        metavar="DIR",
        help="the job shell's Lua plugin directory (<sysconfdir>/flux/shell/lua.d; default %(default)s)",
    )
    install.add_argument(
        "--unit-dir", default="/etc/systemd/system", metavar="DIR", help="where the unit goes (%(default)s)"
    )
    install.add_argument(
        "--flux",
        metavar="PATH",
        help="the flux command the snippets and the unit run (default: flux on PATH)",
    )
    install.add_argument(
        "--source",
        default=str(Path(__file__).resolve().parents[2] / "flux"),
        metavar="DIR",
        help="directory with jobtap_plugin.py and dws-env.lua (default: this checkout's, %(default)s)",
    )
    install.add_argument(
        "--config", dest="bridge_config", metavar="FILE", help="dwsbridge configuration (DWSBRIDGE_CONFIG)"
    )
    install.add_argument("--root", metavar="DIR", help="DWSBRIDGE_ROOT for the service (local backend)")
    install.add_argument("--uri", default=SYSTEM_URI, help="FLUX_URI of the instance (default %(default)s)")
    for name in ("prolog", "epilog"):
        install.add_argument(
            f"--{name}-timeout",
            type=float,
            default=3600.0,
            metavar="SECONDS",
            help=f"how long the {name} waits for the service (default %(default)g)",
        )
    install.set_defaults(handler=cmd_install)
    flux.set_defaults(handler=lambda args: _usage(flux))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _toml(value: Any) -> str:
    """A TOML value: JSON strings and arrays of strings are valid TOML."""
    return json.dumps(value)


def render_validator(entry: str, config: str | None) -> str:
    lines = [
        "# Refuse bad #DW directives at submit time (the user sees `[Errno 22] <message>`).",
        '# Keep "jobspec" in the list, or Flux\'s default validator is dropped.',
        "[ingest.validator]",
        f"plugins = {_toml(['jobspec', entry])}",
    ]
    if config:
        lines.append(f"args = {_toml([f'--dwsbridge-config={config}'])}")
    return "\n".join(lines) + "\n"


def render_perilog(flux: str, entry: str, prolog_timeout: float, epilog_timeout: float) -> str:
    """perilog commands with perilog's own timeout above ours (its default, 30 minutes, would kill a
    longer wait first and lose our dws-epilog-timeout handling)."""

    def section(name: str, seconds: float, what: str) -> str:
        command = [flux, "python", entry, name, f"--timeout={seconds:g}"]
        return (
            f'[job-manager.{name}]\n# {what}\ncommand = {_toml(command)}\ntimeout = "{int(seconds) + 300}s"\n'
        )

    return (
        "# Hold each dw job while its storage is prepared (prolog) and staged out and torn down (epilog).\n"
        "# The commands return at once for jobs without attributes.system.dw.\n"
        '[job-manager]\nplugins = [ { load = "perilog.so" } ]\n\n'
        + section("prolog", prolog_timeout, "Waits for dws_environment (Setup, DataIn, PreRun done).")
        + "\n"
        + section(
            "epilog",
            epilog_timeout,
            "Waits for dws_epilog_done; on timeout raises dws-epilog-timeout (hurried teardown).",
        )
    )


ACCESS = (
    "# The dwsbridge service runs as root (the local backend makes storage owned by each job's user);\n"
    "# an instance owned by another user (flux) must let root connect.\n"
    "[access]\nallow-root-owner = true\n"
)


def render_unit(flux: str, entry: str, uri: str, config: str | None, root: str | None) -> str:
    command = f"{flux} python {entry} service" + (f" --config {config}" if config else "")
    env = [f"Environment=FLUX_URI={uri}"]
    env.append(f"Environment=DWSBRIDGE_CONFIG={config}" if config else "#Environment=DWSBRIDGE_CONFIG=FILE")
    env.append(
        f"Environment=DWSBRIDGE_ROOT={root}" if root else "#Environment=DWSBRIDGE_ROOT=/var/lib/dwsbridge"
    )
    lines = "\n".join(env)
    return f"""\
# {SERVICE_UNIT}: the dwsbridge service for a Flux instance (follows the job-manager journal).
# Install: systemctl daemon-reload && systemctl enable --now dwsbridge-flux
# While it is down, dw jobs wait: the prolog holds new jobs (up to its timeout), the epilog holds
# finished ones; on restart it picks up each active job where it was and tears down the workflows of
# jobs that ended meanwhile.
[Unit]
Description=dwsbridge service for Flux (DWS workflows of dw jobs)
After=flux.service
Wants=flux.service

[Service]
Type=simple
User=root
ExecStart={command}
{lines}
Restart=on-failure
RestartSec=2
# Only the service: the copy-offload servers of running jobs stay up across a restart.
KillMode=process

[Install]
WantedBy=multi-user.target
"""


def cmd_install(args: argparse.Namespace) -> int:
    source = Path(args.source)
    entry, lua = source / "jobtap_plugin.py", source / "dws-env.lua"
    for needed in (entry, lua):
        if not needed.is_file():
            raise ConfigError(f"{needed} is missing: pass --source DIR (the flux/ directory of a checkout)")
    flux = os.path.abspath(args.flux or shutil.which("flux") or "/usr/bin/flux")
    if not os.access(flux, os.X_OK):
        raise ConfigError(f"{flux} is not executable: pass --flux PATH")
    config_arg = args.bridge_config or getattr(args, "config", None)
    config = os.path.abspath(config_arg) if config_arg else None
    entry_path = str(entry.resolve())
    conf_dir, shell_dir, unit_dir = Path(args.conf_dir), Path(args.shell_dir), Path(args.unit_dir)
    for directory in (conf_dir, shell_dir, unit_dir):
        if not directory.is_dir():
            raise ConfigError(f"{directory} is not a directory")
    files = (
        (conf_dir / "validator.toml", render_validator(entry_path, config)),
        (
            conf_dir / "perilog.toml",
            render_perilog(flux, entry_path, args.prolog_timeout, args.epilog_timeout),
        ),
        (conf_dir / "access.toml", ACCESS),
        (shell_dir / "dws-env.lua", lua.read_text(encoding="utf-8")),
        (unit_dir / SERVICE_UNIT, render_unit(flux, entry_path, args.uri, config, args.root)),
    )
    for path, text in files:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)
        tmp.replace(path)
        print(f"wrote {path}")
    print("restart the instance (or `flux config reload`) to load the config, then start the service:")
    print(f"  systemctl daemon-reload && systemctl enable --now {SERVICE_UNIT.removesuffix('.service')}")
    if config is None:
        print(
            "dwsbridge configuration: /etc/dwsbridge/config.yaml (pass --config to use another)",
            file=sys.stderr,
        )
    return 0
