"""`python -m dws_standin serve|start|stop|env` (testenv/dws-standin wraps it).

start runs `serve` in the background, waits until it answers, and prints the kubeconfig path; the
state directory (default $DWS_STANDIN_DIR, else /tmp/dws-standin-<uid>) holds the certificates, the
kubeconfig, the pid, the port and the log.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def default_dir() -> Path:
    return Path(os.environ.get("DWS_STANDIN_DIR") or f"/tmp/dws-standin-{os.getuid()}")


def default_crd_dir() -> Path:
    """$DWS_CRD_DIR, else ../shared/dws beside the checkout (DESIGN: shared/ sits next to main/)."""
    if os.environ.get("DWS_CRD_DIR"):
        return Path(os.environ["DWS_CRD_DIR"])
    return (REPO.parent / "shared" / "dws").resolve()


def _rulesets(crd_dir: Path) -> list[Path]:
    found = [p for p in (crd_dir / "nnf-ruleset.yaml", crd_dir / "test-driver-ruleset.yaml") if p.exists()]
    if not any(p.name == "nnf-ruleset.yaml" for p in found):
        found.insert(0, REPO / "dwsbridge" / "data" / "nnf-ruleset.yaml")
    return found


def serve(args: argparse.Namespace) -> int:
    import socket

    from .server import StandIn
    from .tls import make_certificates, write_kubeconfig

    logging.basicConfig(
        level=os.environ.get("DWS_STANDIN_LOG", "INFO"), format="%(asctime)s %(name)s %(message)s"
    )
    state = Path(args.dir)
    state.mkdir(parents=True, exist_ok=True)
    ca, cert, key = make_certificates(state)
    token_file = state / "token"
    if not token_file.exists():
        token_file.write_text(secrets.token_hex(16))
    token = token_file.read_text().strip()
    crd_dir = Path(args.crd_dir)
    computes = [c for c in (args.computes or "").split(",") if c] or [
        socket.gethostname(),
        "localhost",
        "compute-1",
        "compute-2",
    ]
    standin = StandIn(
        crd_dir,
        token,
        port=args.port,
        tls=(cert, key),
        rulesets=_rulesets(crd_dir),
        controller_delay=args.controller_delay,
        computes=computes,
    )
    (state / "port").write_text(str(standin.port))
    (state / "pid").write_text(str(os.getpid()))
    write_kubeconfig(state / "kubeconfig", f"https://127.0.0.1:{standin.port}", ca, token)
    logging.getLogger("dws_standin").info(
        "listening on https://127.0.0.1:%d (state in %s)", standin.port, state
    )

    def stop(_signum: int, _frame: object) -> None:
        threading.Thread(target=standin.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        standin.serve_forever()
    finally:
        for name in ("pid", "port"):
            (state / name).unlink(missing_ok=True)
    return 0


def _alive(pid: int) -> bool:
    """Running and not a zombie (PID 1 here may not reap, so kill -0 is not enough)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except OSError:
        return False
    return False


def start(args: argparse.Namespace) -> int:
    state = Path(args.dir)
    pid_file = state / "pid"
    if pid_file.exists() and _alive(int(pid_file.read_text() or 0)):
        print(state / "kubeconfig")
        return 0
    state.mkdir(parents=True, exist_ok=True)
    for name in ("pid", "port", "kubeconfig"):
        (state / name).unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "dws_standin",
        "serve",
        "--dir",
        str(state),
        "--port",
        str(args.port),
        "--crd-dir",
        str(args.crd_dir),
        "--controller-delay",
        str(args.controller_delay),
    ]
    if args.computes:
        command += ["--computes", args.computes]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE.parent), str(REPO), env.get("PYTHONPATH", "")) if p
    )
    with open(state / "standin.log", "ab") as logf:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True, env=env
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if (state / "kubeconfig").exists() and (state / "pid").exists():
            print(state / "kubeconfig")
            return 0
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    sys.stderr.write(f"dws-standin: failed to start; see {state / 'standin.log'}\n")
    sys.stderr.write((state / "standin.log").read_text()[-2000:])
    return 1


def stop(args: argparse.Namespace) -> int:
    state = Path(args.dir)
    pid_file = state / "pid"
    if not pid_file.exists():
        return 0
    pid = int(pid_file.read_text() or 0)
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return 0


def env(args: argparse.Namespace) -> int:
    print(f"export KUBECONFIG={Path(args.dir) / 'kubeconfig'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dws-standin", description="A local Kubernetes-API stand-in for DWS."
    )
    parser.add_argument("command", choices=("start", "stop", "env", "serve"))
    parser.add_argument("--dir", default=str(default_dir()), help="state directory (default %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="loopback port (default: a free one)")
    parser.add_argument(
        "--crd-dir", default=str(default_crd_dir()), help="DWS CRD YAML (default %(default)s)"
    )
    parser.add_argument(
        "--controller-delay", type=float, default=0.0, help="seconds the controller waits per event"
    )
    parser.add_argument(
        "--computes", default="", help="compute names for the SystemConfiguration, comma-separated"
    )
    args = parser.parse_args(argv)
    return {"start": start, "stop": stop, "env": env, "serve": serve}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
