"""Copy-offload wired into the local backend: a server per workflow from PreRun to PostRun, copying as
the job's user, with keys no job user can read, and tokens dead after teardown."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from copyoffload.client import CopyOffloadClient, CopyOffloadConnectionError, CopyOffloadError
from dwsbridge.backends.local.backend import LocalBackend
from dwsbridge.backends.local.store import is_alive
from dwsbridge.config import Config
from dwsbridge.lifecycle import Lifecycle
from tests.conftest import needs_root, user_dir, user_file

pytestmark = needs_root

DIRECTIVES = [
    "#DW jobdw type=xfs capacity=1GiB name=scratch requires=copy-offload",
    "#DW container name=co profile=copy-offload-default",
]


def start_job(config: Config, user: pwd.struct_passwd, job_id: int = 1) -> tuple[Lifecycle, str]:
    lc = Lifecycle(config, LocalBackend(config))
    name = lc.create(wlm="slurm", job_id=job_id, uid=user.pw_uid, gid=user.pw_gid, directives=DIRECTIVES)
    lc.walk(name, ["Setup", "DataIn", "PreRun"])
    return lc, name


def client(env: dict[str, str], token: str | None = None) -> CopyOffloadClient:
    return CopyOffloadClient(environ={**env, **({"DW_WORKFLOW_TOKEN": token} if token else {})})


def server_pid(config: Config, name: str) -> int:
    records = LocalBackend(config).store.processes(name, "server")
    assert len(records) == 1
    return records[0].pid


def test_prerun_starts_a_server_the_job_reaches_with_its_environment(
    local_config: Config, world_tmp: Path, job_user: pwd.struct_passwd
) -> None:
    lc, name = start_job(local_config, job_user)
    env = lc.environment(name)
    assert env["NNF_CONTAINER_LAUNCHER"] == "localhost"
    assert int(env["NNF_CONTAINER_PORTS"]) > 0
    assert Path(env["COPY_OFFLOAD_CERT"]).is_file()
    job_dir = Path(env["DW_JOB_scratch"])
    run_as = {"user": job_user.pw_uid, "group": job_user.pw_gid, "extra_groups": []}
    subprocess.run(["sh", "-c", f"head -c 200000 /dev/urandom > {job_dir}/out.dat"], check=True, **run_as)
    dest = user_dir(world_tmp / "dest", job_user)
    with client(env) as co:
        assert co.hello() == "hello back at ya"
        job = co.copy(str(job_dir / "out.dat"), str(dest) + "/")
        status = co.status(job, max_wait_secs=-1)
    assert (status.state, status.status) == ("completed", "success")
    assert (dest / "out.dat").read_bytes() == (job_dir / "out.dat").read_bytes()
    assert (dest / "out.dat").stat().st_uid == job_user.pw_uid
    lc.walk(name, ["PostRun", "DataOut"])
    lc.teardown(name)


def test_the_server_copies_only_what_the_job_user_may_read(
    local_config: Config, world_tmp: Path, job_user: pwd.struct_passwd
) -> None:
    secret = world_tmp / "root-only"
    secret.write_bytes(b"not yours")
    os.chmod(secret, 0o600)
    lc, name = start_job(local_config, job_user)
    env = lc.environment(name)
    with client(env) as co:
        status = co.status(co.copy(str(secret), env["DW_JOB_scratch"] + "/"), max_wait_secs=-1)
    assert status.status == "failed"
    assert "Permission denied" in status.message
    assert not (Path(env["DW_JOB_scratch"]) / "root-only").exists()
    lc.teardown(name, hurry=True)


def test_postrun_stops_the_server(local_config: Config, job_user: pwd.struct_passwd) -> None:
    lc, name = start_job(local_config, job_user)
    env = lc.environment(name)
    record = LocalBackend(local_config).store.processes(name, "server")[0]
    lc.advance_to(name, "PostRun")
    assert not is_alive(record.pid, record.start)
    with pytest.raises(CopyOffloadConnectionError), client(env) as co:
        co.hello()
    lc.teardown(name)


def test_hurry_teardown_kills_a_running_server_and_the_token_is_dead(
    local_config: Config, job_user: pwd.struct_passwd
) -> None:
    from copyoffload.tokens import TokenError, verify_token

    lc, name = start_job(local_config, job_user)
    env = lc.environment(name)
    backend = LocalBackend(local_config)
    record = backend.store.processes(name, "server")[0]
    key_pem = backend.store.get_secret(f"{name}-token-server")["token.key"]  # type: ignore[index]
    lc.teardown(name, hurry=True)
    assert not is_alive(record.pid, record.start)
    assert backend.store.get_secret(f"{name}-token-server") is None
    assert not (local_config.root / "secrets" / name).exists()
    # A new workflow for the same job id gets a new key: the old token is refused there too.
    lc2, name2 = start_job(local_config, job_user)
    assert name2 == name
    env2 = lc2.environment(name2)
    with pytest.raises(CopyOffloadError) as refused, client(env2, token=env["DW_WORKFLOW_TOKEN"]) as co:
        co.hello()
    assert refused.value.code == 401
    with pytest.raises(TokenError):
        verify_token(env["DW_WORKFLOW_TOKEN"], backend.store.get_secret(f"{name}-token-server")["token.key"])  # type: ignore[index]
    assert verify_token(env["DW_WORKFLOW_TOKEN"], key_pem, workflow=name)["sub"] == "user-container"
    lc2.teardown(name2, hurry=True)


def test_another_workflows_token_is_refused(local_config: Config, job_user: pwd.struct_passwd) -> None:
    lc, first = start_job(local_config, job_user, job_id=1)
    _, second = start_job(local_config, job_user, job_id=2)
    other_token = lc.environment(second)["DW_WORKFLOW_TOKEN"]
    with pytest.raises(CopyOffloadError) as refused, client(lc.environment(first), token=other_token) as co:
        co.hello()
    assert refused.value.code == 401
    lc.teardown(first, hurry=True)
    lc.teardown(second, hurry=True)


READ_ATTEMPT = """
import sys
for path in sys.argv[1:]:
    try:
        open(path, "rb").read(1)
    except PermissionError:
        continue
    print("READABLE", path)
    sys.exit(1)
"""


def test_no_job_user_can_read_the_tls_key_token_keys_or_state(
    local_config: Config, job_user: pwd.struct_passwd
) -> None:
    lc, name = start_job(local_config, job_user)
    pid = server_pid(local_config, name)
    secrets = [
        local_config.tls_dir / "key.pem",
        local_config.root / "secrets" / name / "token.key",
        local_config.root / "state.db",
        Path(f"/proc/{pid}/environ"),
        Path(f"/proc/{pid}/mem"),
    ]
    for path in secrets[:3]:
        assert path.exists(), path
    result = subprocess.run(
        [sys.executable, "-c", READ_ATTEMPT, *map(str, secrets)],
        user=job_user.pw_uid,
        group=job_user.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_uid == 0
    lc.teardown(name, hurry=True)


def test_a_workflow_without_copy_offload_gets_no_server_and_no_token(
    local_config: Config, job_user: pwd.struct_passwd
) -> None:
    lc = Lifecycle(local_config, LocalBackend(local_config))
    name = lc.create(
        wlm="slurm",
        job_id=5,
        uid=job_user.pw_uid,
        gid=job_user.pw_gid,
        directives=["#DW jobdw type=xfs capacity=1GiB name=scratch"],
    )
    lc.walk(name, ["Setup", "DataIn", "PreRun"])
    env = lc.environment(name)
    assert "DW_WORKFLOW_TOKEN" not in env and "NNF_CONTAINER_PORTS" not in env
    assert LocalBackend(local_config).store.processes(name, "server") == []
    lc.teardown(name)


def test_user_files_are_written_by_the_user_not_root(
    local_config: Config, world_tmp: Path, job_user: pwd.struct_passwd
) -> None:
    src = user_dir(world_tmp / "src", job_user)
    user_file(src / "a.txt", job_user, b"a")
    lc, name = start_job(local_config, job_user)
    env = lc.environment(name)
    with client(env) as co:
        status = co.status(co.copy(str(src), env["DW_JOB_scratch"] + "/"), max_wait_secs=-1)
    assert status.succeeded, status.message
    copied = Path(env["DW_JOB_scratch"]) / "src"
    assert copied.stat().st_uid == job_user.pw_uid
    assert (copied / "a.txt").stat().st_uid == job_user.pw_uid
    lc.teardown(name, hurry=True)
