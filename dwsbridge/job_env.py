"""The job's environment as Slurm carries it: `KEY=VALUE` lines, checked here and nowhere else.

Two ways into a Slurm job. `paths` writes `path_file`, which slurmctld adds to the job's environment;
it runs inside slurmctld before `pre_run`, so it can only carry what is known by then. For a backend
whose environment is final only at PreRun (DWS sets `DW_JOB_*` during PreRun), `pre_run` writes the
whole environment to a per-job file, `<slurm_env_dir>/<jobid>.env`, and the TaskProlog that
`dwsbridge slurm install` ships (`dwsbridge-task-prolog`) prints it as `export KEY=VALUE` lines before
each task, as the job's user. Teardown removes the file.

Slurm takes everything after the `=` to the end of the line as the value, without any quoting, and
reads a TaskProlog's output in pieces of at most 4095 bytes. So a name must be a shell identifier, a
value may not contain a newline, carriage return or NUL, and a TaskProlog line must fit in one piece;
anything else is left out (and logged by the caller) rather than mangled or split into a second line.

The file holds the workflow token: it is mode 0600, owned by the job's user, in a directory owned by
root that no one else may write (made 0711 when the bridge creates it, so other users cannot list
which jobs have one). The token never goes through `path_file`: slurmctld logs that file whole with
`DebugFlags=BurstBuffer`. So on a backend whose environment is known at `paths`, `paths` writes the
token (SECRET_NAMES) to the per-job file and the rest to `path_file`.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

from dwsbridge.errors import DwsBridgeError

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
FORBIDDEN_IN_VALUE = ("\n", "\r", "\0")
EXPORT = "export "
# slurmstepd reads TaskProlog output with fgets(buf, 4095): a longer line would be cut in two, and the
# second half read as a line of its own.
TASK_PROLOG_LINE_LIMIT = 4000
DIRECTORY_MODE = 0o711
FILE_MODE = 0o600
SUFFIX = ".env"
SECRET_NAMES = frozenset({"DW_WORKFLOW_TOKEN"})  # never in path_file: only in the 0600 per-job file


def split_secrets(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(what may go through Slurm's path_file, what only the job's own 0600 file may carry)."""
    public = {k: v for k, v in env.items() if k not in SECRET_NAMES}
    return public, {k: v for k, v in env.items() if k in SECRET_NAMES}


def env_lines(env: Mapping[str, str], *, line_limit: int | None = None) -> tuple[list[str], list[str]]:
    """(`KEY=VALUE\\n` lines sorted by name, names left out because Slurm cannot carry them intact).

    With `line_limit`, a variable whose `export KEY=VALUE\\n` line is longer (in bytes) is left out."""
    lines: list[str] = []
    skipped: list[str] = []
    for key, value in sorted(env.items()):
        line = f"{key}={value}\n"
        if (
            not NAME.match(key)
            or any(c in value for c in FORBIDDEN_IN_VALUE)
            or (
                line_limit is not None
                and len((EXPORT + line).encode("utf-8", "surrogateescape")) > line_limit
            )
        ):
            skipped.append(key)
            continue
        lines.append(line)
    return lines, skipped


class JobEnvFiles:
    """The per-job environment files the TaskProlog exports, one per Slurm job id."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, job: str) -> Path:
        if not job.isdigit():
            raise DwsBridgeError(f"job id must contain only digits, not {job!r}")
        return self.directory / f"{job}{SUFFIX}"

    def write(self, job: str, env: Mapping[str, str], *, uid: int, gid: int) -> list[str]:
        """Write the job's environment for the TaskProlog (atomically; mode 0600, owned by uid:gid).
        Returns the names left out (see env_lines)."""
        target = self.path(job)
        lines, skipped = env_lines(env, line_limit=TASK_PROLOG_LINE_LIMIT)
        directory = self.ready_directory()
        as_root = os.geteuid() == 0
        if not as_root and uid != os.geteuid():
            raise DwsBridgeError(
                f"cannot write {target} for uid {uid}: only root can hand the file to the job's user"
            )
        tmp = directory / f".{job}{SUFFIX}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as out:
                if as_root:
                    os.fchown(out.fileno(), uid, gid)
                os.fchmod(out.fileno(), FILE_MODE)
                out.writelines(lines)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise DwsBridgeError(
                f"cannot write the job's environment file {target}: {exc.strerror or exc}"
            ) from exc
        return skipped

    def remove(self, job: str) -> bool:
        """Remove the job's file; False when there was none."""
        try:
            self.path(job).unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise DwsBridgeError(f"cannot remove {self.path(job)}: {exc.strerror or exc}") from exc
        return True

    def ready_directory(self) -> Path:
        """The directory, created 0711 if missing; refused when someone other than us could write it
        (they could swap a job's file, or read one they made)."""
        directory = self.directory
        try:
            if not directory.exists():
                directory.parent.mkdir(parents=True, exist_ok=True)
                try:
                    directory.mkdir(mode=DIRECTORY_MODE)
                    os.chmod(directory, DIRECTORY_MODE)  # mkdir's mode is cut by the umask
                except FileExistsError:
                    pass
            st = os.stat(directory)
        except OSError as exc:
            raise DwsBridgeError(
                f"cannot create the job environment directory {directory}: {exc.strerror or exc}"
            ) from exc
        if not stat.S_ISDIR(st.st_mode):
            raise DwsBridgeError(f"job environment directory {directory} is not a directory")
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise DwsBridgeError(
                f"job environment directory {directory} must be owned by uid {os.geteuid()} and writable "
                f"by it alone (it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}); "
                f"chown {os.geteuid()} and chmod 0711 it, or set slurm_env_dir"
            )
        return directory


__all__ = ["NAME", "SECRET_NAMES", "TASK_PROLOG_LINE_LIMIT", "JobEnvFiles", "env_lines", "split_secrets"]
