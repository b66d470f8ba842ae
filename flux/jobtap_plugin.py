"""dwsbridge's Flux entry file: it translates Flux's calling conventions; the logic is dwsbridge.flux.

Used three ways (see docs/flux.md):

- job-ingest validator: `[ingest.validator] plugins = ["jobspec", "/path/to/flux/jobtap_plugin.py"]`
  loads class `Validator`, which refuses bad `#DW` lines at submit (`[Errno 22] ...`).
- the service: `flux python /path/to/flux/jobtap_plugin.py service [--config FILE]`, run as root
  (`[access] allow-root-owner` lets it reach an instance it does not own), follows the job-manager
  journal and walks each `dw` job's Workflow.
- perilog commands: `... prolog` holds a `dw` job until its storage is ready (`dws_environment`),
  `... epilog` until it is staged out and torn down.

There is deliberately no `__init__.py` beside this file: `flux/` must not shadow flux-python.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Any


def _ensure_dwsbridge() -> None:
    """Run from a checkout: make the checkout's dwsbridge importable (an installed one wins)."""
    try:
        import dwsbridge  # noqa: F401
    except ImportError:
        sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_ensure_dwsbridge()

from dwsbridge.errors import DwsBridgeError  # noqa: E402
from dwsbridge.flux.validator import check_jobspec  # noqa: E402


def _flux_python() -> bool:
    """True when flux-python is installed (a checkout's flux/ directory is a namespace, not flux-python)."""
    import importlib.util

    spec = importlib.util.find_spec("flux")
    return spec is not None and spec.origin not in (None, "namespace")


if _flux_python():
    from flux.job.validator import ValidatorPlugin as _ValidatorBase
else:  # flux-python absent: the class still works on its own

    class _ValidatorBase:  # type: ignore[no-redef]
        def __init__(self, parser: Any = None) -> None:
            pass

        def configure(self, args: Any) -> None:
            pass


class Validator(_ValidatorBase):
    """Refuses a job whose `dw` or `dw_failure_tolerance` is invalid, with the Slurm path's text."""

    def __init__(self, parser: Any = None) -> None:
        super().__init__(parser)
        self._config_path: str | None = None
        self._settings: Any = None
        if parser is not None:
            parser.add_argument("--dwsbridge-config", metavar="FILE", help="dwsbridge configuration file")

    def configure(self, args: Any) -> None:
        self._config_path = getattr(args, "dwsbridge_config", None)

    def _load(self) -> Any:
        if self._settings is None:
            from dwsbridge.config import load_config
            from dwsbridge.directives import RuleSet

            config = load_config(self._config_path)
            self._settings = (
                config.flux_presets,
                RuleSet.load(config.ruleset),
                config.backend,
                config.directive_limits,
            )
        return self._settings

    def validate(self, args: Any) -> tuple[int, str] | None:
        jobspec = args["jobspec"] if isinstance(args, dict) else args.jobspec
        try:
            presets, ruleset, backend, limits = self._load()
            message = check_jobspec(jobspec, presets=presets, ruleset=ruleset, backend=backend, limits=limits)
        except DwsBridgeError as exc:
            message = f"dwsbridge: {exc}"
        return (errno.EINVAL, message) if message else None


def main(argv: list[str] | None = None) -> int:
    import logging
    import subprocess

    from dwsbridge.flux import realflux

    parser = argparse.ArgumentParser(prog="jobtap_plugin.py", description="dwsbridge for Flux")
    commands = parser.add_subparsers(dest="command", required=True)
    service = commands.add_parser("service", help="follow the job-manager journal and walk dw workflows")
    service.add_argument("--config", help="dwsbridge configuration file")
    service.add_argument("--threads", type=int, default=8, help="workflows walked at once")
    for name, default in (("prolog", 3600.0), ("epilog", 3600.0)):
        cmd = commands.add_parser(name, help=f"perilog {name}: hold a dw job ($FLUX_JOB_ID)")
        cmd.add_argument("--timeout", type=float, default=default, help="seconds to wait")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("DWSBRIDGE_LOG_LEVEL", "INFO").upper(), format="%(message)s")
    if args.command == "service":
        try:
            return realflux.run_service(args.config, threads=args.threads)
        except DwsBridgeError as exc:
            print(f"jobtap_plugin.py service: {exc}", file=sys.stderr)
            return 1
    jobid = os.environ.get("FLUX_JOB_ID")
    if not jobid:
        parser.error(f"{args.command} runs from perilog, which sets FLUX_JOB_ID")
    step = realflux.perilog_prolog if args.command == "prolog" else realflux.perilog_epilog
    return step(jobid, args.timeout, subprocess.run)


if __name__ == "__main__":
    sys.exit(main())
