"""`dwsbridge slurm install`: put burst_buffer.lua and burst_buffer.conf beside slurm.conf."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from dwsbridge.errors import ConfigError

SLURM_CONF_LINE = "BurstBufferType=burst_buffer/lua"
PYTHON_PLACEHOLDER = "@DWSBRIDGE_PYTHON@"
CONFIG_PLACEHOLDER = "@DWSBRIDGE_CONFIG@"
CACHE_PLACEHOLDER = "@DWSBRIDGE_CACHE@"
CACHE_FILE = "slurm/job_process.cache"  # under the configured root

INSTALL_EPILOG = f"""\
examples:
  dwsbridge slurm install --etc /etc/slurm
      use this interpreter (sys.executable) and the default configuration
  dwsbridge slurm install --etc /etc/slurm --python /opt/dwsbridge/bin/python \\
      --config /etc/dwsbridge/config.yaml

Then add this line to slurm.conf and restart slurmctld:
  {SLURM_CONF_LINE}

The interpreter must be an absolute path that can `import dwsbridge` when run with -I (a virtualenv's
bin/python is fine; avoid pyenv shims, they cost ~80 ms per hook). Hooks run as root inside slurmctld.
"""


def register(subparsers: Any) -> None:
    slurm = subparsers.add_parser(
        "slurm",
        help="Slurm integration (burst_buffer/lua)",
        description="Slurm integration: install the burst_buffer/lua plugin files.",
        epilog=INSTALL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = slurm.add_subparsers(dest="slurm_command", metavar="ACTION")
    install = actions.add_parser(
        "install",
        help="write burst_buffer.lua and burst_buffer.conf into Slurm's configuration directory",
        description="Write burst_buffer.lua (with the interpreter and configuration paths filled in) and "
        "burst_buffer.conf into DIR, the directory that holds slurm.conf.",
        epilog=INSTALL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    install.add_argument("--etc", required=True, metavar="DIR", help="Slurm's configuration directory")
    install.add_argument(
        "--python",
        metavar="PATH",
        default=sys.executable,
        help="absolute path of the interpreter the hooks run (default: this one, %(default)s)",
    )
    install.add_argument(
        "--config",
        dest="bridge_config",
        metavar="FILE",
        help="dwsbridge configuration file the hooks use (default: the hooks' own default, "
        "/etc/dwsbridge/config.yaml)",
    )
    install.add_argument(
        "--no-cache",
        action="store_true",
        help="always run the bridge for job_process (default: accept a script header the bridge "
        "accepted before without starting Python; cache file <root>/slurm/job_process.cache)",
    )
    install.add_argument(
        "--no-check",
        action="store_true",
        help="do not check that the interpreter can import dwsbridge",
    )
    install.set_defaults(handler=cmd_install)
    slurm.set_defaults(handler=lambda args: _usage(slurm))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def template(name: str) -> str:
    return (resources.files("dwsbridge") / "data" / name).read_text(encoding="utf-8")


def lua_string_body(value: str) -> str:
    """`value` escaped for use inside a double-quoted Lua string."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")


def render_lua(python: str, config: str | None, cache: str | None = None) -> str:
    text = template("burst_buffer.lua")
    text = text.replace(PYTHON_PLACEHOLDER, lua_string_body(python))
    text = text.replace(CACHE_PLACEHOLDER, lua_string_body(cache or ""))
    return text.replace(CONFIG_PLACEHOLDER, lua_string_body(config or ""))


def default_cache(config: str | None) -> str:
    """`<root>/slurm/job_process.cache`, root from the configuration the hooks will use."""
    from dwsbridge.config import DEFAULT_ROOT, load_config

    try:
        root = load_config(config).root if config and os.path.isfile(config) else DEFAULT_ROOT
    except ConfigError:
        root = DEFAULT_ROOT
    return os.path.join(os.path.abspath(root), CACHE_FILE)


def check_interpreter(python: str) -> None:
    try:
        proc = subprocess.run(
            [python, "-I", "-c", "import dwsbridge.slurm"], capture_output=True, text=True, timeout=60
        )
    except OSError as exc:
        raise ConfigError(f"cannot run {python}: {exc.strerror}") from exc
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ConfigError(f"{python} -I cannot import dwsbridge ({last}); pass --python PATH")


def cmd_install(args: argparse.Namespace) -> int:
    etc = Path(args.etc)
    python = os.path.abspath(args.python)  # not resolved: a venv's python is a symlink that matters
    config_arg = args.bridge_config or getattr(args, "config", None)
    config = os.path.abspath(config_arg) if config_arg else None
    if not etc.is_dir():
        raise ConfigError(f"{etc} is not a directory (pass the directory that holds slurm.conf)")
    if not os.access(python, os.X_OK):
        raise ConfigError(f"{python} is not an executable interpreter")
    if config and not os.path.isfile(config):
        print(f"dwsbridge: warning: {config} does not exist yet", file=sys.stderr)
    if not args.no_check:
        check_interpreter(python)

    written = []
    for name, text in (
        ("burst_buffer.lua", render_lua(python, config, None if args.no_cache else default_cache(config))),
        ("burst_buffer.conf", template("burst_buffer.conf")),
    ):
        path = etc / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)
        tmp.replace(path)
        written.append(path)

    for path in written:
        print(f"wrote {path}")
    print(f"hooks run: {python} -I -m dwsbridge.slurm" + (f" (DWSBRIDGE_CONFIG={config})" if config else ""))
    slurm_conf = etc / "slurm.conf"
    if slurm_conf.is_file() and _has_line(slurm_conf, SLURM_CONF_LINE):
        print(f"{slurm_conf} already has {SLURM_CONF_LINE}; restart slurmctld to load the plugin")
    else:
        print(f"add this line to {slurm_conf} and restart slurmctld:")
        print(f"  {SLURM_CONF_LINE}")
    return 0


def _has_line(path: Path, line: str) -> bool:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(row.strip().replace(" ", "") == line for row in text.splitlines())
