"""A real Flux instance with dwsbridge installed as docs/flux.md tells an admin (`dwsbridge flux install`:
validator, perilog prolog/epilog, the shell plugin site-wide), the service run by root beside it on the
local backend with a private root.

The instance is owned by an ordinary user (jobs of a single-user instance run as its owner), so the
root service reaches it through `[access] allow-root-owner`, as on a system instance. It starts from a
content archive whose job-manager checkpoint is far along, so every job ID is above 2^53.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ENTRY_FILE = REPO / "flux" / "jobtap_plugin.py"
# A job-manager checkpoint whose max_jobid has a FLUID timestamp past 2^29 ms: new IDs are >= 2^53.
BIG_MAX_JOBID = ((1 << 29) + 5000) << 24


@dataclass
class Job:
    jobid: str  # decimal
    f58: str


@dataclass
class FluxInstance:
    prefix: Path
    workdir: Path
    owner: pwd.struct_passwd
    prolog_timeout: float = 60.0
    epilog_timeout: float = 10.0
    uri: str = ""
    broker: subprocess.Popen[bytes] | None = None
    service: subprocess.Popen[bytes] | None = None
    service_log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.service_log = self.workdir / "service.log"

    # --- layout -------------------------------------------------------------------------------------
    @property
    def flux_cmd(self) -> str:
        return str(self.prefix / "bin" / "flux")

    @property
    def config_file(self) -> Path:
        return self.workdir / "dwsbridge.yaml"

    @property
    def root(self) -> Path:
        return self.workdir / "root"

    def _as_owner(self) -> dict[str, Any]:
        return {"user": self.owner.pw_uid, "group": self.owner.pw_gid, "extra_groups": []}

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": f"{self.prefix / 'bin'}:/usr/bin:/bin",
            "HOME": str(self.workdir),
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.workdir / "tmp"),
        }
        if self.uri:
            env["FLUX_URI"] = self.uri
        env.update(extra)
        return env

    # --- set-up -------------------------------------------------------------------------------------
    def install(self) -> None:
        """What an admin does: the dwsbridge config, then `dwsbridge flux install` into the instance."""
        for sub, mode in (("conf", 0o755), ("shell", 0o755), ("units", 0o755), ("tmp", 0o1777)):
            (self.workdir / sub).mkdir(mode=mode, exist_ok=True)
            os.chmod(self.workdir / sub, mode)
        shutil.copytree(self.prefix / "etc" / "flux" / "shell", self.workdir / "shell", dirs_exist_ok=True)
        (self.workdir / "shell" / "lua.d").mkdir(exist_ok=True)
        self.config_file.write_text(
            f"backend: local\nroot: {self.root}\nstate_timeout: 60\ncompute_name: localhost\n"
            "data_movement_profiles:\n  slow: {workers: 1, bwlimit: 2097152}\n"
            'flux_presets:\n  small: "#DW jobdw type=xfs capacity=1GiB name=data"\n',
            encoding="utf-8",
        )
        os.chmod(self.config_file, 0o644)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "dwsbridge",
                "flux",
                "install",
                f"--conf-dir={self.workdir / 'conf'}",
                f"--shell-dir={self.workdir / 'shell' / 'lua.d'}",
                f"--unit-dir={self.workdir / 'units'}",
                f"--flux={self.flux_cmd}",
                f"--source={ENTRY_FILE.parent}",
                f"--config={self.config_file}",
                f"--prolog-timeout={self.prolog_timeout:g}",
                f"--epilog-timeout={self.epilog_timeout:g}",
            ],
            check=True,
            capture_output=True,
        )

    def big_id_archive(self) -> Path:
        """A content archive whose job-manager checkpoint makes the next job IDs exceed 2^53."""
        archive = self.workdir / "big-ids.tar"
        if not archive.exists():
            script = (
                f'flux kvs put checkpoint.job-manager=\'{{"version":1,"max_jobid":{BIG_MAX_JOBID}}}\''
                f" && flux dump --quiet {archive}"
            )
            subprocess.run(
                [self.flux_cmd, "start", "--test-size=1", "sh", "-c", script],
                env=self.env(),
                cwd=self.workdir,
                check=True,
                capture_output=True,
                timeout=60,
                **self._as_owner(),
            )
        return archive

    def start(self) -> None:
        os.chown(self.workdir, self.owner.pw_uid, self.owner.pw_gid)
        self.install()
        archive = self.big_id_archive()
        uri_file = self.workdir / "uri"
        command = [
            self.flux_cmd,
            "start",
            "--test-size=1",
            f"--config-path={self.workdir / 'conf'}",
            f"-Slog-filename={self.workdir / 'broker.log'}",
            f"-Sconf.shell_initrc={self.workdir / 'shell' / 'initrc.lua'}",
            f"-Scontent.restore={archive}",
            "sh",
            "-c",
            f'echo "$FLUX_URI" > {uri_file}.tmp && mv {uri_file}.tmp {uri_file} && read _ || true',
        ]
        self.broker = subprocess.Popen(
            command, stdin=subprocess.PIPE, env=self.env(), cwd=self.workdir, **self._as_owner()
        )
        deadline = time.monotonic() + 60
        while not uri_file.exists():
            if self.broker.poll() is not None or time.monotonic() > deadline:
                log = (self.workdir / "broker.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the Flux instance did not start: {log}")
            time.sleep(0.05)
        self.uri = uri_file.read_text().strip()
        self.start_service()

    def service_unit(self) -> tuple[list[str], dict[str, str]]:
        """ExecStart and Environment of the unit `dwsbridge flux install` wrote (FLUX_URI: this instance)."""
        command: list[str] = []
        env: dict[str, str] = {}
        for line in (self.workdir / "units" / "dwsbridge-flux.service").read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "ExecStart":
                command = shlex.split(value)
            elif key == "Environment":
                name, _, setting = value.partition("=")
                env[name] = setting
        env["FLUX_URI"] = self.uri
        return command, env

    def start_service(self) -> None:
        """The service as root, as the shipped unit runs it."""
        mark = self.service_lines_size()
        command, unit_env = self.service_unit()
        with open(self.service_log, "ab") as log:
            self.service = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env(DWSBRIDGE_LOG_LEVEL="INFO", TMPDIR="/tmp", **unit_env),
                cwd="/",
            )
        self.wait_log("following the job-manager journal", since=mark)
        self.wait_log("journal history replayed", since=mark)

    def kill_service(self) -> None:
        if self.service is not None and self.service.poll() is None:
            self.service.send_signal(signal.SIGKILL)
            self.service.wait()
        self.service = None

    def stop(self) -> None:
        self.kill_service()
        if self.broker is not None and self.broker.poll() is None:
            assert self.broker.stdin is not None
            self.broker.stdin.close()
            try:
                self.broker.wait(30)
            except subprocess.TimeoutExpired:
                self.broker.kill()
                self.broker.wait()

    # --- using it ----------------------------------------------------------------------------------
    def flux(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
        as_root: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """`flux ARGS` in the instance, as its owner (or as root, through allow-root-owner)."""
        kwargs: dict[str, Any] = {} if as_root else self._as_owner()
        done = subprocess.run(
            [self.flux_cmd, *args],
            env=self.env(),
            cwd=self.workdir,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"flux {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done

    def submit(self, *args: str, dw: str | None = None, **kwargs: Any) -> Job:
        extra = ["-S", f"dw={dw}"] if dw is not None else []
        out = self.flux("submit", *extra, *args, **kwargs).stdout.split()
        return self.job(out[-1])

    def job(self, any_id: str) -> Job:
        dec = self.flux("job", "id", "--to=dec", any_id).stdout.strip()
        f58 = self.flux("job", "id", "--to=f58", any_id).stdout.strip()
        return Job(dec, f58)

    def wait_event(self, job: Job, event: str, timeout: float = 60) -> None:
        self.flux("job", "wait-event", "-t", f"{timeout:g}", job.jobid, event, timeout=timeout + 10)

    def eventlog(self, job: Job) -> list[str]:
        out = self.flux("job", "eventlog", "-f", "json", job.jobid).stdout
        import json

        return [json.loads(line)["name"] for line in out.splitlines() if line.strip()]

    def workflow(self, job: Job) -> Path:
        return self.root / "storage" / "jobs" / f"fluxjob-{job.jobid}"

    def workflows(self) -> list[str]:
        """Names of the workflows the local backend still has."""
        from dwsbridge.config import Config
        from dwsbridge.lifecycle import Lifecycle

        lifecycle = Lifecycle(Config(root=self.root))
        try:
            return [status.name for status in lifecycle.list()]
        finally:
            lifecycle.close()

    def service_lines(self, since: int = 0) -> list[str]:
        if not self.service_log.exists():
            return []
        with open(self.service_log, "rb") as log:
            log.seek(since)
            return log.read().decode(errors="replace").splitlines()

    def log_mark(self) -> int:
        return self.service_lines_size()

    def service_lines_size(self) -> int:
        return self.service_log.stat().st_size if self.service_log.exists() else 0

    def wait_log(self, text: str, *, since: int = 0, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.service_lines(since):
                if text in line:
                    return line
            if self.service is not None and self.service.poll() is not None:
                raise AssertionError(f"the service exited: {self.service_lines(since)[-20:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the service log: {self.service_lines(since)[-20:]}")
            time.sleep(0.05)


def processes_of(uid: int, needle: str) -> list[int]:
    """PIDs of `uid`'s processes whose command line contains `needle` (leftover movers, servers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if entry.stat().st_uid != uid:
                continue
            if needle in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(entry.name))
    return found


@contextlib.contextmanager
def running_instance(
    prefix: Path, workdir: Path, owner: pwd.struct_passwd, **kw: Any
) -> Iterator[FluxInstance]:
    instance = FluxInstance(prefix, workdir, owner, **kw)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


def files_under(path: Path, pattern: str = "*") -> Sequence[Path]:
    return sorted(path.rglob(pattern)) if path.exists() else []
