"""Shared pieces of the tests that run the real single-node Slurm (testenv/slurm-cluster): when they can
run, waiting, and a cluster handle that submits jobs as an ordinary user and reads their states.

Each test module starts its own cluster under its own base directory and ports (see `slurm_env`), so
that two clusters never collide.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "testenv" / "slurm-cluster"
USER = "dwsbuser"
WAIT_FOR_GO = "for i in $(seq 600); do [ -e go ] && break; sleep 0.1; done"


def slurm_skip_reason() -> str | None:
    """Why the real Slurm cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (runs slurmctld, slurmd and munged)"
    if not all(
        shutil.which(c, path="/usr/sbin:/usr/bin") for c in ("slurmctld", "slurmd", "munged", "sbatch")
    ):
        return "Slurm packages missing (make debs: slurmctld slurmd slurm-client munge)"
    if not (REPO / ".venv" / "bin" / "python").exists():
        return "no .venv (make install)"
    return None


def slurm_env(base: Path, ctld_port: str, slurmd_port: str, **extra: str) -> dict[str, str]:
    """The environment of testenv/slurm-cluster and of the commands run against it."""
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "DWSB_SLURM_BASE": str(base),
        "DWSB_SLURM_CTLD_PORT": ctld_port,
        "DWSB_SLURM_SLURMD_PORT": slurmd_port,
        "DWSB_SLURM_USER": USER,
        "SLURM_CONF": str(base / "etc" / "slurm.conf"),
        **extra,
    }


def wait_for(check: Callable[[], object], what: str, timeout: float = 60.0, interval: float = 0.2) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def release(workdir: Path) -> None:
    """Let a job running WAIT_FOR_GO in `workdir` finish."""
    (workdir / "go").touch()


@dataclass
class SlurmCluster:
    """A running cluster: commands in its environment, jobs submitted as USER in their own directories."""

    env: dict[str, str]
    user: pwd.struct_passwd
    wait_timeout: ClassVar[float] = 60.0

    @property
    def base(self) -> Path:
        return Path(self.env["DWSB_SLURM_BASE"])

    def run(self, *cmd: str, as_user: bool = False, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = list(cmd)
        if as_user:
            argv = ["runuser", "-u", USER, "--", "env", f"SLURM_CONF={self.env['SLURM_CONF']}", *argv]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60, check=check)

    def workdir(self, name: str) -> Path:
        path = self.base / "jobs" / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        os.chown(path, self.user.pw_uid, self.user.pw_gid)
        return path

    def write_job(self, workdir: Path, body: str, *directives: str, name: str = "job.sh") -> Path:
        lines = ["#!/bin/bash", f"#SBATCH -o {workdir}/{name}.out", *directives, body]
        path = workdir / name
        path.write_text("\n".join(lines) + "\n")
        os.chown(path, self.user.pw_uid, self.user.pw_gid)
        return path

    def sbatch(self, script: Path, *options: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(
            "sbatch", "--parsable", "-D", str(script.parent), *options, str(script), as_user=True, check=check
        )

    def submit(self, workdir: Path, body: str, *directives: str, name: str = "job.sh") -> str:
        """Submit a job script (its output goes to `<name>.out` in `workdir`); its job id."""
        proc = self.sbatch(self.write_job(workdir, body, *directives, name=name))
        return proc.stdout.strip().split(";")[0]

    def state(self, job: str) -> tuple[str, str]:
        out = self.run("squeue", "-h", "-t", "all", "-j", job, "-o", "%T|%r", check=False).stdout.strip()
        state, _, reason = out.partition("|")
        return state, reason

    def wait_state(self, job: str, *states: str, timeout: float | None = None) -> str:
        def reached() -> str | None:
            state = self.state(job)[0]
            return state if state in states else None

        what = f"job {job} to reach {'/'.join(states)} (is {self.state(job)})"
        return str(wait_for(reached, what, self.wait_timeout if timeout is None else timeout))


@dataclass
class LocalSlurmCluster(SlurmCluster):
    """A cluster on the local backend, whose workflows and logs this (root) process reads directly."""

    lifecycle: Any

    def wait_gone(self, job: str, timeout: float = 60.0) -> None:
        wait_for(lambda: not self.lifecycle.exists(f"bb{job}"), f"workflow bb{job} to be torn down", timeout)

    def storage(self, job: str) -> Path:
        return Path(self.lifecycle.config.root) / "storage" / "jobs" / f"bb{job}"

    def log_lines(self, job: str = "") -> list[str]:
        """slurmctld's dwsbridge lines (of `job` when given; "-" for job_process, pools, get_status)."""
        lines = text(self.base / "log" / "slurmctld.log").splitlines()
        return [line for line in lines if "dwsbridge" in line and (not job or f"job={job} " in line)]

    def agent_lines(self) -> list[str]:
        return text(self.base / "log" / "agent.log").splitlines()

    def agent_pid(self) -> int:
        return int(text(self.base / "run" / "agent.pid").strip())

    def cluster(self, action: str) -> None:
        subprocess.run([str(SCRIPT), action], env=self.env, check=True, timeout=120)


def start_local_cluster(base: Path, ctld_port: str, slurmd_port: str) -> LocalSlurmCluster:
    from dwsbridge.config import load_config
    from dwsbridge.lifecycle import Lifecycle

    env = slurm_env(base, ctld_port, slurmd_port)
    subprocess.run([str(SCRIPT), "start"], env=env, check=True, timeout=120)
    return LocalSlurmCluster(env, pwd.getpwnam(USER), Lifecycle(load_config(base / "dwsbridge.yaml")))


def stop_local_cluster(cluster: LocalSlurmCluster) -> None:
    subprocess.run([str(SCRIPT), "stop"], env=cluster.env, check=False, timeout=120)
    for daemon in ("slurmctld", "slurmd", "munged", "agent"):
        assert not (cluster.base / "run" / f"{daemon}.pid").exists(), f"{daemon} left running"
