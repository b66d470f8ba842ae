"""Slurm adapter: burst_buffer.lua's hook arguments in, lifecycle calls, the result protocol out.

`python -I -m dwsbridge.slurm HOOK ARGS...` is what every hook in burst_buffer.lua runs. Its output
ends with one status line the Lua shim parses (Lua 5.1 cannot see an exit status):

    <log lines, each "@@DWSBRIDGE log <text>">
    <payload>\n
    @@DWSBRIDGE rc=<0|1> len=<bytes of payload>

rc=0 is slurm.SUCCESS with the payload (pools JSON, bbstat text); rc=1 is slurm.ERROR with the payload
as the message Slurm shows (sbatch error, job reason, SystemComment).

job_process, pools and paths run inside slurmctld and block it: they import only what they need
(never the Kubernetes client) and never touch the network. On the Kubernetes backend the job's
environment is final only at PreRun, after paths: pre_run writes it to a per-job file that Slurm's
TaskProlog exports into every task (dwsbridge.job_env).
"""

from __future__ import annotations

import os
import sys
import time

from dwsbridge.errors import AdmissionError, DwsBridgeError, WorkflowFailed

# Not `from typing import TYPE_CHECKING`: `typing` (with `re`) costs ~8 ms of every hook process,
# and the hook path to the bridge agent must stay minimal (mypy treats this name the same way).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Sequence
    from typing import IO

    from dwsbridge.config import Config
    from dwsbridge.lifecycle import Lifecycle

WLM = "slurm"
MARK = "@@DWSBRIDGE"
LOG_PREFIX = f"{MARK} log "
NULL_POOL = "(null)"
BBSTAT_USAGE = (
    "Usage: scontrol show bbstat workflow <job-id>   (one job's workflow states)\n"
    "       scontrol show bbstat [list]               (every Slurm workflow)"
)
NOT_DIGITS = "A job ID must contain only digits."

LOGGER = "dwsbridge.slurm"


class HookResult(tuple[bool, str]):
    """What a hook hands back to Slurm: success or failure, and the string that goes with it.
    (A plain tuple subclass rather than a NamedTuple, which would import `typing` at hook start.)"""

    __slots__ = ()

    def __new__(cls, ok: bool, payload: str = "") -> HookResult:
        return super().__new__(cls, (ok, payload))

    @property
    def ok(self) -> bool:
        return self[0]

    @property
    def payload(self) -> str:
        return self[1]

    def __repr__(self) -> str:
        return f"HookResult(ok={self[0]!r}, payload={self[1]!r})"


# `logging` costs ~5 ms to import: job_process and pools succeed without it (burst_buffer.lua logs
# each hook call itself); events and the lifecycle's own records import it when they happen.
_forward_to: IO[str] | None = None  # set by main(): stream for `@@DWSBRIDGE log` lines


def log() -> logging.Logger:
    import logging

    if _forward_to is not None:
        forward_records(_forward_to)
    return logging.getLogger(LOGGER)


class HookUsageError(DwsBridgeError):
    """The hook was called with arguments Slurm never passes."""


def success(payload: str = "") -> HookResult:
    return HookResult(True, payload)


def failure(message: str) -> HookResult:
    return HookResult(False, message)


# --- argument normalisation -------------------------------------------------------------------


def parse_job_id(job_id: str) -> str:
    job = job_id.strip()
    if not job.isdigit():
        raise HookUsageError(f"job id must contain only digits, not {job_id!r}")
    return str(int(job))


def parse_id(value: str, what: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise HookUsageError(f"{what} must be a number, not {value!r}") from None


def parse_pool(pool: str) -> str | None:
    """Slurm passes the literal "(null)" (or nothing) when the job named no pool."""
    pool = pool.strip()
    return None if pool in ("", NULL_POOL) else pool


def parse_hurry(hurry: str) -> bool:
    return hurry.strip().lower() == "true"


SCRIPT_READ = 1 << 16  # bytes per read of a job script: below malloc's mmap threshold


def read_script(path: str) -> str:
    """The job script Slurm hands to hooks; it ends with a NUL byte. Read with os.read: open()
    and read() of a file object make twice the system calls (job_process is on every sbatch). Read
    to the end: a network filesystem may return less than asked before it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks = []
            while chunk := os.read(fd, SCRIPT_READ):
                chunks.append(chunk)
        finally:
            os.close(fd)
    except OSError as exc:
        raise DwsBridgeError(f"cannot read job script {path}: {exc.strerror}") from exc
    return b"".join(chunks).rstrip(b"\0").decode("utf-8", errors="replace")


def bbstat_words(args: Sequence[str]) -> list[str]:
    """The words after `scontrol show bbstat`; 23.02+ puts the caller's uid and gid first."""
    words = list(args)
    if len(words) >= 2 and words[0].isdigit() and words[1].isdigit():
        return words[2:]
    return words


# --- the hooks --------------------------------------------------------------------------------


class SlurmHooks:
    """One method per burst_buffer.lua hook. Config and lifecycle are built on first use, so the
    fast hooks pay only for what they touch."""

    def __init__(
        self,
        config: Config | None = None,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self._config = config
        self._lifecycle = lifecycle

    @property
    def config(self) -> Config:
        if self._config is None:
            if self._lifecycle is not None:
                self._config = self._lifecycle.config
            else:
                from dwsbridge.config import load_config

                self._config = load_config()
        return self._config

    @property
    def lifecycle(self) -> Lifecycle:
        if self._lifecycle is None:
            log()  # the lifecycle and backends log through `logging`: forward their records too
            from dwsbridge.lifecycle import Lifecycle

            self._lifecycle = Lifecycle(self.config)
        return self._lifecycle

    # directives ---------------------------------------------------------------------------
    def script_directives(self, script_path: str) -> list[tuple[int, str]]:
        from dwsbridge.directives import script_directives

        return list(script_directives(read_script(script_path)))

    def validated_directives(self, items: list[tuple[int, str]]) -> list[str]:
        """Validate a job's #DW lines (raises ValidationFailed listing every problem) and return
        them as DWS receives them: normalised, Slurm's `pool=` removed."""
        from dwsbridge.directives import RuleSet, validate_job

        ruleset = RuleSet.load(self.config.ruleset)
        directives = validate_job(
            items,
            ruleset=ruleset,
            wlm=WLM,
            pool=self.config.pool_name,
            limits=self.config.directive_limits,
            backend=self.config.backend,
        )
        return [d.text for d in directives]

    # hooks run inside slurmctld: keep them fast --------------------------------------------
    def job_process(self, script_path: str) -> HookResult:
        text = read_script(script_path)
        from dwsbridge.directives import script_directives

        items = list(script_directives(text))
        if not items:
            return success()
        self.validated_directives(items)
        return success()

    def pools(self) -> HookResult:
        import json

        pools = [
            {"id": p.name, "quantity": int(p.quantity), "granularity": int(p.granularity)}
            | ({} if p.free is None else {"free": int(p.free)})  # space held outside Slurm's jobs
            for p in self.lifecycle.pools()
        ]
        return success(json.dumps({"pools": pools}, separators=(",", ":")))

    def paths(self, job_id: str, script: str, path_file: str) -> HookResult:
        """The job's environment into path_file. A backend whose environment is final only at PreRun
        (DWS) is not asked at all: this runs inside slurmctld, before pre_run, and must not touch the
        network. The job gets the workflow's name and namespace here and the rest from pre_run, through
        the TaskProlog (see dwsbridge.job_env)."""
        job = parse_job_id(job_id)
        name = workflow_name(job)
        from dwsbridge.workflow import PRE_RUN

        lc = self.lifecycle
        if lc.env_known_at == PRE_RUN:
            if not self.script_directives(script):
                return success()
            env = {"DW_WORKFLOW_NAME": name, "DW_WORKFLOW_NAMESPACE": self.config.namespace}
        elif lc.exists(name):
            from dwsbridge.job_env import split_secrets

            env, secrets = split_secrets(lc.environment(name))
            if secrets:  # the token: the TaskProlog exports it from the job's 0600 file
                self.write_job_env(job, name, secrets, hook="paths")
        else:
            return success()
        from dwsbridge.job_env import env_lines

        lines, skipped = env_lines(env)
        for key in skipped:
            log().warning("workflow=%s job=%s paths: skipped unsafe variable %r", name, job, key)
        with open(path_file, "w", encoding="utf-8") as out:
            out.writelines(lines)
        log().info("workflow=%s job=%s paths: %d variable(s) for the job", name, job, len(lines))
        return success()

    # hooks run by slurmscriptd, within burst_buffer.conf's timeouts ---------------------------
    def setup(self, job_id: str, uid: str, gid: str, pool: str, bb_size: str, script: str) -> HookResult:
        job = parse_job_id(job_id)
        user, group = parse_id(uid, "uid"), parse_id(gid, "gid")
        name = workflow_name(job)
        items = self.script_directives(script)
        if not items:
            log().info("workflow=%s job=%s setup: no #DW directives, nothing to do", name, job)
            return success()
        directives = self.validated_directives(items)
        lc = self.lifecycle
        if lc.exists(name):
            self._reuse_or_clear(name, job, user)
            left = lc.status(name) if lc.exists(name) else None
            if left is not None and left.desired == "Teardown":  # its storage could not be removed yet
                raise WorkflowFailed(
                    name,
                    "Setup",
                    f"an earlier workflow of job ID {job} is still being torn down: {left.message}",
                )
        if not lc.exists(name):
            lc.create(wlm=WLM, job_id=job, uid=user, gid=group, directives=directives)
        log().info(
            "workflow=%s job=%s setup: uid=%d gid=%d pool=%s size=%s",
            name,
            job,
            user,
            group,
            parse_pool(pool) or "-",
            bb_size or "-",
        )
        lc.advance_to(name, "Setup")
        return success()

    def _reuse_or_clear(self, name: str, job: str, uid: int) -> None:
        """A workflow by this name already exists: keep it when it is this job's unfinished setup
        (setup being retried), otherwise it is left over from an earlier run and goes."""
        current = self.lifecycle.status(name)
        if current.uid == uid and current.desired in ("Proposal", "Setup") and current.status != "Error":
            log().info("workflow=%s job=%s setup: resuming existing workflow", name, job)
            return
        log().warning(
            "workflow=%s job=%s setup: removing a leftover workflow (desired=%s uid=%d)",
            name,
            job,
            current.desired,
            current.uid,
        )
        self.lifecycle.teardown(name, hurry=True, quiet=True)

    def data_in(self, job_id: str, script: str) -> HookResult:
        return self._advance(job_id, script, "DataIn")

    def pre_run(self, job_id: str, script: str) -> HookResult:
        job = parse_job_id(job_id)
        name = workflow_name(job)
        exists = self.lifecycle.exists(name)
        if self.config.backend == "kubernetes" and exists:
            hosts = job_nodes(job)
            if hosts:
                self.lifecycle.set_computes(name, hosts)
        result = self._advance(job_id, script, "PreRun")
        from dwsbridge.workflow import PRE_RUN

        if exists and self.lifecycle.env_known_at == PRE_RUN:
            self.write_job_env(job, name, self.lifecycle.environment(name), hook="pre_run")
        return result

    def write_job_env(self, job: str, name: str, env: dict[str, str], *, hook: str) -> None:
        """Variables for the TaskProlog, in the job's 0600 file: what `paths` could not know yet
        (the job starts once pre_run has succeeded, so every task sees it), and the token."""
        from dwsbridge.job_env import JobEnvFiles

        owner = self.lifecycle.status(name)
        files = JobEnvFiles(self.config.job_env_dir)
        skipped = files.write(job, env, uid=owner.uid, gid=owner.gid)
        for key in skipped:
            log().warning("workflow=%s job=%s %s: skipped unsafe variable %r", name, job, hook, key)
        log().info(
            "workflow=%s job=%s %s: %d variable(s) for the TaskProlog in %s",
            name,
            job,
            hook,
            len(env) - len(skipped),
            files.path(job),
        )

    def post_run(self, job_id: str, script: str) -> HookResult:
        return self._advance(job_id, script, "PostRun")

    def data_out(self, job_id: str, script: str) -> HookResult:
        return self._advance(job_id, script, "DataOut")

    def real_size(self, job_id: str) -> HookResult:
        return success()

    def job_teardown(self, job_id: str, script: str, hurry: str) -> HookResult:
        job = parse_job_id(job_id)
        name = workflow_name(job)
        in_hurry = parse_hurry(hurry)
        from dwsbridge.job_env import JobEnvFiles

        try:  # the job's copy of the token goes first; the workflow's teardown must happen regardless
            JobEnvFiles(self.config.job_env_dir).remove(job)
        except DwsBridgeError as exc:
            log().warning("workflow=%s job=%s teardown: %s", name, job, exc)
        if not self.lifecycle.exists(name):
            log().info("workflow=%s job=%s teardown: no workflow (already gone)", name, job)
            return success()
        self.lifecycle.teardown(name, hurry=in_hurry)
        log().info("workflow=%s job=%s teardown: done hurry=%s", name, job, in_hurry)
        return success()

    def _advance(self, job_id: str, script: str, state: str) -> HookResult:
        job = parse_job_id(job_id)
        name = workflow_name(job)
        if not self.lifecycle.exists(name):
            if self.script_directives(script):
                raise DwsBridgeError(f"workflow {name} for job {job} does not exist (was setup run?)")
            return success()
        started = time.monotonic()
        try:
            self.lifecycle.advance_to(name, state)
        except AdmissionError as exc:
            raise AdmissionError(f"workflow {name}: cannot move to {state}: {exc}") from exc
        log().info("workflow=%s job=%s %s complete in %.2fs", name, job, state, time.monotonic() - started)
        return success()

    # scontrol show bbstat -------------------------------------------------------------------
    def get_status(self, *args: str) -> HookResult:
        words = bbstat_words(args)
        if not words or words == ["list"]:
            from dwsbridge.display import format_table

            return success(format_table([s for s in self.lifecycle.list() if s.wlm in ("", WLM)]))
        if words[0] == "workflow" and len(words) == 2:
            job = words[1]
            if not job.isdigit():
                return success(NOT_DIGITS)
            name = workflow_name(job)
            if not self.lifecycle.exists(name):
                return success(f"No workflow for job {int(job)} ({name} does not exist or was torn down).")
            s = self.lifecycle.status(name)
            return success(f"desiredState={s.desired} currentState={s.current} status={s.status}")
        return success(BBSTAT_USAGE)


def workflow_name(job: str) -> str:
    from dwsbridge.workflow import workflow_name as name_for

    return name_for(WLM, job)


def job_nodes(job: str) -> list[str]:
    """The job's compute hosts, asked of Slurm (only the Kubernetes backend needs them)."""
    import subprocess

    try:
        nodelist = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%N"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        if not nodelist:
            return []
        hosts = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError) as exc:
        log().warning("job=%s cannot list the job's nodes: %s", job, exc)
        return []
    return hosts


# --- dispatch and the result protocol ----------------------------------------------------------

HOOKS: dict[str, tuple[int, int]] = {
    # hook: (fewest, most) arguments after the hook name
    "job_process": (1, 1),
    "pools": (0, 0),
    "setup": (6, 6),
    "data_in": (2, 2),
    "real_size": (1, 1),
    "paths": (3, 3),
    "pre_run": (2, 2),
    "post_run": (2, 2),
    "data_out": (2, 2),
    "job_teardown": (3, 3),
    "get_status": (0, 64),
}


def run_hook(hooks: SlurmHooks, hook: str, args: Sequence[str]) -> HookResult:
    """Run one hook; every failure becomes a HookResult whose message a user can act on."""
    limits = HOOKS.get(hook)
    if limits is None:
        return failure(f"unknown burst buffer hook {hook!r}; expected one of {', '.join(HOOKS)}")
    fewest, most = limits
    if not fewest <= len(args) <= most:
        return failure(f"{hook} takes {fewest}..{most} arguments, got {len(args)}")
    method: Callable[..., HookResult] = getattr(hooks, hook)
    try:
        return method(*args)
    except DwsBridgeError as exc:
        log().error("%s job=%s failed: %s", hook, _job_of(hook, args), exc)
        return failure(str(exc))
    except Exception as exc:
        log().exception("%s job=%s crashed", hook, _job_of(hook, args))
        return failure(f"dwsbridge internal error in {hook}: {type(exc).__name__}: {exc}")


def _job_of(hook: str, args: Sequence[str]) -> str:
    return args[0] if args and hook not in ("job_process", "get_status") else "-"


def write_result(result: HookResult, stream: IO[bytes]) -> None:
    """The end of the result protocol: the payload and the status line (log lines come before)."""
    payload = result.payload.encode("utf-8", errors="replace")
    stream.write(payload + b"\n" + f"{MARK} rc={0 if result.ok else 1} len={len(payload)}\n".encode())
    stream.flush()


def forward_records(stream: IO[str]) -> None:
    """Send dwsbridge's log records to `stream` as `@@DWSBRIDGE log` lines (once per process);
    burst_buffer.lua forwards them to slurmctld's log (grep for "dwsbridge"). The bridge agent
    passes a stream that keeps each request's lines apart (dwsbridge.agent)."""
    import logging

    root = logging.getLogger("dwsbridge")
    if any(getattr(h, "dwsbridge_protocol", False) for h in root.handlers):
        return

    class ProtocolLogHandler(logging.Handler):
        dwsbridge_protocol = True

        def emit(self, record: logging.LogRecord) -> None:
            try:
                text = self.format(record).replace("\n", " | ")
                stream.write(f"{LOG_PREFIX}dwsbridge: {record.levelname.lower()}: {text}\n")
                stream.flush()
            except Exception:
                self.handleError(record)

    root.addHandler(ProtocolLogHandler())
    root.propagate = False
    level = os.environ.get("DWSBRIDGE_LOG_LEVEL", "INFO").upper()
    root.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -I -m dwsbridge.slurm HOOK ARGS`: through the bridge agent when one serves
    $DWSBRIDGE_AGENT_SOCKET, else in-process (dwsbridge.hookclient)."""
    from dwsbridge.hookclient import main as hook_main

    return hook_main(argv)


def run_in_process(args: Sequence[str], *, fallback_note: str = "") -> int:
    """Run one hook in this process and print its result: what every hook did before the agent,
    and what it still does when no agent answers."""
    global _forward_to
    _forward_to = sys.stderr
    if fallback_note:
        log().warning("%s; running %s in-process", fallback_note, args[0])
    if not args or args[0] in ("-h", "--help"):
        result = failure(
            "usage: python -I -m dwsbridge.slurm HOOK [ARGS...]  (run by burst_buffer.lua); hooks: "
            + ", ".join(HOOKS)
        )
    else:
        result = run_hook(SlurmHooks(), args[0], args[1:])
    write_result(result, sys.stdout.buffer)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
