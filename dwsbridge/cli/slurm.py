"""`dwsbridge slurm install`: put burst_buffer.lua (a loader), the hooks it loads (source and compiled),
burst_buffer.conf and the TaskProlog beside slurm.conf."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import stat
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dwsbridge.errors import ConfigError

if TYPE_CHECKING:
    from dwsbridge.config import Config

SLURM_CONF_LINE = "BurstBufferType=burst_buffer/lua"
TASK_PROLOG = "dwsbridge-task-prolog"
TASK_PROLOG_KEY = "TaskProlog"
ENV_DIR_PLACEHOLDER = "@DWSBRIDGE_ENV_DIR@"
PYTHON_PLACEHOLDER = "@DWSBRIDGE_PYTHON@"
CONFIG_PLACEHOLDER = "@DWSBRIDGE_CONFIG@"
AGENT_SOCKET_PLACEHOLDER = "@DWSBRIDGE_AGENT_SOCKET@"
LAUNCHER_PLACEHOLDER = "@DWSBRIDGE_LAUNCHER@"
SOCKET_CORE_PLACEHOLDER = "@DWSBRIDGE_SOCKET_CORE@"
SOCKET_UNIX_PLACEHOLDER = "@DWSBRIDGE_SOCKET_UNIX@"
TIMEOUT_PLACEHOLDERS = {
    "connect": "@DWSBRIDGE_AGENT_CONNECT_TIMEOUT@",
    "answer": "@DWSBRIDGE_AGENT_TIMEOUT@",
    "silence": "@DWSBRIDGE_AGENT_SILENCE_TIMEOUT@",
}
DEFAULT_TIMEOUTS = {"connect": 1.0, "answer": 3.0, "silence": 30.0}
# Where Slurm's Lua 5.1 finds C modules (liblua5.1's default package.cpath on Debian), and the module
# burst_buffer.lua needs to talk to the agent without starting a process (Debian package lua-socket).
LUA_CPATH = (
    "/usr/local/lib/lua/5.1/?.so",
    "/usr/lib/x86_64-linux-gnu/lua/5.1/?.so",
    "/usr/lib/aarch64-linux-gnu/lua/5.1/?.so",
    "/usr/lib/lua/5.1/?.so",
)
LUA_SOCKET_MODULE = "socket/unix"
LUA_SOCKET_CORE = "socket/core"  # socket.unix needs it loaded too
AGENT_UNIT = "dwsbridge-agent.service"
# What Slurm loads is a small loader; the hooks are beside it, as source and compiled by Lua 5.1's
# compiler (Slurm compiles burst_buffer.lua afresh for every hook call: ~0.3 ms for the hooks' source,
# ~0.05 ms to load them compiled).
HOOKS_LUA = "dwsbridge-hooks.lua"
HOOKS_LUAC = "dwsbridge-hooks.luac"
HOOKS_PLACEHOLDER = "@DWSBRIDGE_HOOKS@"
HOOKS_COMPILED_PLACEHOLDER = "@DWSBRIDGE_HOOKS_COMPILED@"
HOOKS_SIZE_PLACEHOLDER = "@DWSBRIDGE_HOOKS_SIZE@"
HOOKS_COMPILED_SIZE_PLACEHOLDER = "@DWSBRIDGE_HOOKS_COMPILED_SIZE@"
LUA_COMPILER = "luac5.1"  # Debian package lua5.1: the Lua Slurm 22.05 links (liblua5.1)

INSTALL_EPILOG = f"""\
examples:
  dwsbridge slurm install --etc /etc/slurm
      use this interpreter (sys.executable) and the default configuration
  dwsbridge slurm install --etc /etc/slurm --python /opt/dwsbridge/bin/python \\
      --config /etc/dwsbridge/config.yaml

Then add these lines to slurm.conf and restart slurmctld and slurmd:
  {SLURM_CONF_LINE}
  {TASK_PROLOG_KEY}=DIR/{TASK_PROLOG}

The interpreter must be an absolute path that can `import dwsbridge` when run with -I (a virtualenv's
bin/python is fine; avoid pyenv shims, they cost ~80 ms per hook). Hooks run as root inside slurmctld.
The TaskProlog exports the job's environment file (<slurm_env_dir>/<jobid>.env, written by pre_run
when the backend knows the environment only at PreRun, as Kubernetes/DWS does) into every task; it
must exist at the same path on every compute node, and so must slurm_env_dir (a shared filesystem).
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
        help="write burst_buffer.lua, burst_buffer.conf and the TaskProlog into Slurm's configuration "
        "directory",
        description=f"Write the hooks, {HOOKS_LUA} (with the interpreter and configuration paths filled "
        f"in) and, when luac5.1 is installed, {HOOKS_LUAC} (compiled: faster to load); burst_buffer.lua, "
        f"which Slurm loads and which loads the hooks; burst_buffer.conf and {TASK_PROLOG} (Slurm's "
        "TaskProlog: exports the job's environment files) into DIR, the directory that holds slurm.conf.",
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
        "--no-check",
        action="store_true",
        help="do not check that the interpreter can import dwsbridge",
    )
    from dwsbridge.hookclient import DEFAULT_SOCKET

    install.add_argument(
        "--agent-socket",
        metavar="PATH",
        default=DEFAULT_SOCKET,
        help="socket of the bridge agent (`dwsbridge agent`) the hooks hand their work to; they run the "
        "bridge in-process when no agent serves it (default %(default)s)",
    )
    install.add_argument(
        "--no-agent", action="store_true", help="never use the bridge agent: every hook runs in-process"
    )
    timeouts = install.add_argument_group(
        "agent timeouts (seconds; with lua-socket, burst_buffer.lua's own, see docs/slurm.md)"
    )
    timeouts.add_argument(
        "--agent-connect-timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUTS["connect"],
        metavar="S",
        help="to connect to the agent and send the request (default %(default)g)",
    )
    timeouts.add_argument(
        "--agent-timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUTS["answer"],
        metavar="S",
        help="for the whole answer to job_process, pools and paths, which block slurmctld (default "
        "%(default)g); then job_process is refused (never validated twice), pools and paths run "
        "in a process",
    )
    timeouts.add_argument(
        "--agent-silence-timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUTS["silence"],
        metavar="S",
        help="the other hooks wait as long as the agent works (it sends a heartbeat each second); after "
        "this long without one they run in a process (default %(default)g)",
    )
    install.add_argument(
        "--no-launcher",
        action="store_true",
        help="start hooks as `python -I -m dwsbridge.slurm` (default: a launcher that starts Python "
        "without `site` and puts the bridge's package directory on sys.path itself, ~10 ms faster)",
    )
    install.set_defaults(handler=cmd_install)
    slurm.set_defaults(handler=lambda args: _usage(slurm))


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {value!r}") from None
    if not 0.01 <= seconds <= 86400:
        raise argparse.ArgumentTypeError(f"expected 0.01 to 86400 seconds, not {value}")
    return seconds


def lua_module_path(module: str, cpath: str | None = None) -> str | None:
    """The C module (`socket/unix`) Slurm's Lua 5.1 would load (`$LUA_CPATH_5_1`/`$LUA_CPATH` first,
    as Lua does), or None when it is not installed."""
    if cpath is None:
        cpath = os.environ.get("LUA_CPATH_5_1") or os.environ.get("LUA_CPATH") or ""
    templates = [t for t in cpath.split(";") if t and t != ";;"] + list(LUA_CPATH)
    for pattern in templates:
        candidate = pattern.replace("?", module)
        if os.path.isfile(candidate):
            return candidate
    return None


def lua_socket_modules(cpath: str | None = None) -> tuple[str, str] | None:
    """(core, unix): the paths of lua-socket's two C modules burst_buffer.lua loads, or None."""
    core, unix = lua_module_path(LUA_SOCKET_CORE, cpath), lua_module_path(LUA_SOCKET_MODULE, cpath)
    return (core, unix) if core and unix else None


def only_root_can_replace(path: str) -> bool:
    """True when `path` (and, through its symlinks, the file it names) and every directory above them
    are root's and writable by root alone: code slurmctld loads from a path written into the hooks
    must not be replaceable by anyone else. (A symlink's own mode means nothing; its owner does.)
    A relative path (`./?.so` in LUA_CPATH) is never such a path: slurmctld resolves it elsewhere."""
    if not os.path.isabs(path):
        return False
    for start in {path, os.path.realpath(path)}:
        current = start
        while True:
            try:
                st = os.lstat(current)
            except OSError:
                return False
            if st.st_uid != 0 or (st.st_mode & 0o022 and not stat.S_ISLNK(st.st_mode)):
                return False
            if current == "/":
                break
            current = os.path.dirname(current)
    return True


def check_socket_directory(socket_path: str) -> None:
    """Refuse an agent socket another user could put their own socket in place of: burst_buffer.lua
    cannot ask who serves a socket, so no one but root may be able to create one there. Every
    directory above it must be root's and writable by root alone, except a sticky one (like /tmp)
    whose entry below it is root's; a directory still to be made needs a root-only parent."""
    path = os.path.dirname(os.path.abspath(socket_path))
    child_is_roots = False  # of the entry below: anyone who may write the socket's directory may squat it
    while True:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            child_is_roots = False  # whoever may write the parent may make it
        else:
            mode = stat.S_IMODE(st.st_mode)
            sticky_ok = bool(mode & stat.S_ISVTX) and child_is_roots
            if st.st_uid != 0 or (mode & 0o022 and not sticky_ok) or stat.S_ISLNK(st.st_mode):
                raise ConfigError(
                    f"the agent socket {socket_path} is unsafe: {path} is uid {st.st_uid}, mode {mode:04o}"
                    f"{' (a symlink)' if stat.S_ISLNK(st.st_mode) else ''}, so another user could serve it"
                    " in the agent's place; choose a directory only root can write (default "
                    "/run/dwsbridge)"
                )
            child_is_roots = True
        if path == "/":
            return
        path = os.path.dirname(path)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def template(name: str) -> str:
    return (resources.files("dwsbridge") / "data" / name).read_text(encoding="utf-8")


def lua_string_body(value: str) -> str:
    """`value` escaped for use inside a double-quoted Lua string."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")


def render_lua(
    python: str,
    config: str | None,
    *,
    agent_socket: str | None = None,
    launcher: str | None = None,
    timeouts: dict[str, float] | None = None,
    socket_modules: tuple[str, str] | None = None,
) -> str:
    """The hooks' source with the settings filled in; `socket_modules` are lua-socket's (core, unix)
    C modules (None: the hooks find them with require)."""
    text = template("burst_buffer.lua")
    core, unix = socket_modules or ("", "")
    text = text.replace(SOCKET_CORE_PLACEHOLDER, lua_string_body(core))
    text = text.replace(SOCKET_UNIX_PLACEHOLDER, lua_string_body(unix))
    for key, seconds in {**DEFAULT_TIMEOUTS, **(timeouts or {})}.items():
        text = text.replace(TIMEOUT_PLACEHOLDERS[key], f"{seconds:g}")
    text = text.replace(PYTHON_PLACEHOLDER, lua_string_body(python))
    text = text.replace(AGENT_SOCKET_PLACEHOLDER, lua_string_body(agent_socket or ""))
    text = text.replace(LAUNCHER_PLACEHOLDER, lua_string_body(launcher or ""))
    return text.replace(CONFIG_PLACEHOLDER, lua_string_body(config or ""))


def render_loader(
    hooks: str, compiled: str | None, source_size: int | None, compiled_size: int | None = None
) -> str:
    """burst_buffer.lua: loads `compiled` (of `compiled_size` bytes) while `hooks` still has
    `source_size` bytes, else `hooks`."""
    text = template("burst_buffer_loader.lua")
    text = text.replace(HOOKS_PLACEHOLDER, lua_string_body(hooks))
    text = text.replace(HOOKS_COMPILED_PLACEHOLDER, lua_string_body(compiled or ""))
    text = text.replace(HOOKS_COMPILED_SIZE_PLACEHOLDER, "" if compiled_size is None else str(compiled_size))
    return text.replace(HOOKS_SIZE_PLACEHOLDER, "" if source_size is None else str(source_size))


def compile_lua(compiler: str, source: Path, output: Path) -> str | None:
    """Compile `source` into `output` (written whole, then renamed); why not, or None when done.
    Debug information is kept: a Lua error still names its line."""
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        proc = subprocess.run(
            [compiler, "-o", str(tmp), str(source)], capture_output=True, text=True, timeout=60
        )
    except OSError as exc:
        return f"cannot run {compiler}: {exc.strerror}"
    if proc.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"{compiler} failed: {last}"
    tmp.chmod(0o644)
    tmp.replace(output)
    return None


def launcher_code(package_dir: str) -> str:
    """What `python -I -S -c` runs for a hook: the agent relay, with the bridge importable without
    `site` (dwsbridge.hookclient adds site-packages itself if it has to run the hook in-process)."""
    return (
        f"import sys; sys.path.insert(0, {package_dir!r}); "
        "from dwsbridge.hookclient import main; sys.exit(main())"
    )


def package_dir(python: str) -> str:
    """The directory holding the `dwsbridge` package as `python -I` imports it."""
    code = "import dwsbridge, os.path as p; print(p.dirname(p.dirname(p.abspath(dwsbridge.__file__))))"
    proc = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise ConfigError(f"{python} -I cannot import dwsbridge; pass --python PATH")
    return proc.stdout.strip().splitlines()[-1]


def check_launcher(python: str, launcher: str) -> None:
    proc = subprocess.run(
        [python, "-I", "-S", "-c", launcher, "--help"], capture_output=True, text=True, timeout=60
    )
    if "@@DWSBRIDGE rc=" not in proc.stdout:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ConfigError(f"the hook launcher does not work with {python} ({last}); pass --no-launcher")


def render_task_prolog(env_dir: str) -> str:
    return template(TASK_PROLOG).replace(ENV_DIR_PLACEHOLDER, shlex.quote(env_dir))


def hooks_config(config: str | None) -> Config:
    """The configuration the hooks will load: `config`, else /etc/dwsbridge/config.yaml when present
    (defaults when the file does not exist yet)."""
    from dwsbridge.config import DEFAULT_CONFIG_PATH, Config, load_config

    path = config or (str(DEFAULT_CONFIG_PATH) if DEFAULT_CONFIG_PATH.is_file() else None)
    try:
        return load_config(path) if path and os.path.isfile(path) else Config()
    except ConfigError:
        return Config()


def default_env_dir(config: str | None) -> str:
    """`slurm_env_dir` (default `<root>/job-env`) of the configuration the hooks will use."""
    return os.path.abspath(hooks_config(config).job_env_dir)


def agent_unit(python: str, socket_path: str, config: str | None) -> str:
    from dwsbridge.agent import systemd_unit

    return systemd_unit(python, socket_path, config)


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

    agent_socket = None if args.no_agent else os.path.abspath(args.agent_socket)
    if agent_socket is not None:
        check_socket_directory(agent_socket)
    launcher = None
    if not args.no_launcher:
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        launcher = launcher_code(here if args.no_check else package_dir(python))
        if not args.no_check:
            check_launcher(python, launcher)

    found_modules = lua_socket_modules() if agent_socket is not None else None
    socket_modules = found_modules  # the paths written into the hooks
    if found_modules and not all(only_root_can_replace(module) for module in found_modules):
        print(
            f"dwsbridge: warning: {' or '.join(found_modules)} is relative or can be replaced by a "
            "user other than root: the hooks find lua-socket with require instead of by path",
            file=sys.stderr,
        )
        socket_modules = None
    written = []
    env_dir = default_env_dir(config)
    for name, text, mode in (
        (
            HOOKS_LUA,
            render_lua(
                python,
                config,
                agent_socket=agent_socket,
                launcher=launcher,
                timeouts={
                    "connect": args.agent_connect_timeout,
                    "answer": args.agent_timeout,
                    "silence": args.agent_silence_timeout,
                },
                socket_modules=socket_modules,
            ),
            0o644,
        ),
        ("burst_buffer.conf", template("burst_buffer.conf"), 0o644),
        (TASK_PROLOG, render_task_prolog(env_dir), 0o755),
        *(() if agent_socket is None else ((AGENT_UNIT, agent_unit(python, agent_socket, config), 0o644),)),
    ):
        written.append(_write(etc / name, text, mode))
    hooks = (etc / HOOKS_LUA).absolute()
    compiled = hooks.with_name(HOOKS_LUAC)
    compiler = shutil.which(LUA_COMPILER)  # bytecode is specific to a Lua version and build
    why_not = compile_lua(compiler, hooks, compiled) if compiler else f"no {LUA_COMPILER}"
    if why_not is None:
        written.append(compiled)
        loader = render_loader(str(hooks), str(compiled), hooks.stat().st_size, compiled.stat().st_size)
    else:
        compiled.unlink(missing_ok=True)  # never one compiled from an older source
        loader = render_loader(str(hooks), None, None)
    written.append(_write(etc / "burst_buffer.lua", loader, 0o644))

    for path in written:
        print(f"wrote {path}")
    if why_not is None:
        print(f"burst_buffer.lua loads the hooks compiled ({HOOKS_LUAC}, by {compiler})")
    else:
        print(
            f"burst_buffer.lua loads the hooks from source ({why_not}): each hook call compiles them "
            "(~0.3 ms); `apt-get install lua5.1` and install again to have them compiled"
        )
    start = f"{python} -I -S -c <launcher>" if launcher else f"{python} -I -m dwsbridge.slurm"
    print(
        f"hook processes (when the agent is not reached from Lua) run: {start}"
        + (f" (DWSBRIDGE_CONFIG={config})" if config else "")
    )
    if agent_socket is not None:
        command = f"{python} -I -m dwsbridge agent --socket {agent_socket}" + (
            f" --config {config}" if config else ""
        )
        print(f"hooks hand their work to the bridge agent at {agent_socket} when it runs; start it as root:")
        print(f"  {command}")
        unit = etc.absolute() / AGENT_UNIT
        print(f"  or: cp {unit} /etc/systemd/system/ && systemctl enable --now dwsbridge-agent")
        if found_modules:
            print(
                f"lua-socket: present ({found_modules[1]}): hooks talk to the agent from Lua, no "
                "process per hook "
                f"(timeouts: connect {args.agent_connect_timeout:g}s, job_process/pools/paths "
                f"{args.agent_timeout:g}s, silence {args.agent_silence_timeout:g}s)"
            )
        else:
            print(
                "lua-socket: not found: each hook starts a small relay process to reach the agent "
                "(~10 ms); `apt-get install lua-socket` removes it"
            )
    print(f"job environment files (TaskProlog): {env_dir}/<jobid>.env")
    slurm_conf = etc / "slurm.conf"
    prolog_line = f"{TASK_PROLOG_KEY}={etc.absolute() / TASK_PROLOG}"
    present = _conf_lines(slurm_conf)
    missing = [line for line in (SLURM_CONF_LINE, prolog_line) if line not in present]
    other_prolog = [
        line
        for line in present
        if line.lower().startswith(TASK_PROLOG_KEY.lower() + "=") and line != prolog_line
    ]
    if not missing:
        print(f"{slurm_conf} already has {SLURM_CONF_LINE} and {prolog_line}; restart slurmctld and slurmd")
    else:
        print(f"add to {slurm_conf} and restart slurmctld and slurmd:")
        for line in missing:
            print(f"  {line}")
    if other_prolog:
        print(
            f"{slurm_conf} already names another TaskProlog ({other_prolog[0]}): Slurm runs only one, so "
            f"either use ours or have yours print the output of {etc.absolute() / TASK_PROLOG}"
        )
    return 0


def _write(path: Path, text: str, mode: int) -> Path:
    """Write whole, then rename: Slurm may load the file at any moment."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    tmp.replace(path)
    return path


def _conf_lines(path: Path) -> list[str]:
    """slurm.conf's settings, comments and blanks dropped, spaces removed."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    rows = (row.split("#", 1)[0].strip().replace(" ", "") for row in text.splitlines())
    return [row for row in rows if row]
