"""nnf-dm on the kubernetes backend: requests forwarded to the workflow's real copy-offload server, the
workflow and its token read from DWS (the stand-in), as the workflow's user."""

from __future__ import annotations

import base64
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from dwsbridge.config import Config
from dwsbridge.lifecycle import Lifecycle
from tests.conftest import ensure_user, needs_root, user_dir, user_file
from tests.nnfdm_support import REPO, Daemon, calls_as, generate_stubs, running_daemon

pytestmark = [needs_root, pytest.mark.timeout(180)]
pytest.importorskip("kubernetes")

if TYPE_CHECKING:
    from tests.standin_support import RunningStandIn

COPY_OFFLOAD_PORT = int(os.environ.get("DWSB_NNFDM_CO_PORT", "6881"))
CO_JOB = [
    "#DW jobdw type=gfs2 capacity=1GiB name=scratch requires=copy-offload",
    "#DW container name=co profile=copy-offload-default",
]
_jobs = itertools.count(46_000 + os.getpid() % 1000 * 10)


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dwsbt-nnfdm-k8s-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture(scope="module")
def daemon(base: Path, standin: RunningStandIn) -> Iterator[Daemon]:
    from copyoffload.certs import make_site_certificate

    cert, _ = make_site_certificate(base / "tls", names=["localhost"], ips=["127.0.0.1"])
    config = base / "config.yaml"
    config.write_text(yaml.safe_dump({"backend": "kubernetes", "kubeconfig": str(standin.kubeconfig)}))
    extra = ("--copy-offload-cert", str(cert), "--sweep-interval", "0.2")
    with running_daemon(base, generate_stubs(base / "stubs"), config=config, extra=extra) as running:
        yield running


def lifecycle(standin: RunningStandIn) -> Lifecycle:
    return Lifecycle(Config(backend="kubernetes", kubeconfig=standin.kubeconfig, state_timeout=30.0))


def start_workflow(standin: RunningStandIn, uid: int, gid: int, directives: list[str]) -> str:
    lc = lifecycle(standin)
    name = lc.create(wlm="slurm", job_id=next(_jobs), uid=uid, gid=gid, directives=directives)
    lc.walk(name, ["Setup", "DataIn"])
    lc.set_computes(name, ["localhost"])
    lc.walk(name, ["PreRun"])
    return name


def point_env_at(standin: RunningStandIn, name: str, **env: str) -> None:
    """What NNF's driver sets on a real system: the job's mount and the user container's port (the
    stand-in's fixed port and /mnt/nnf paths do not exist here)."""
    path = f"/apis/dataworkflowservices.github.io/v1alpha7/namespaces/default/workflows/{name}"
    obj = standin.request("GET", path)
    obj["status"]["env"].update(env)
    standin.request("PUT", path, obj)


@pytest.fixture
def copy_offload_server(base: Path, standin: RunningStandIn) -> Iterator[tuple[str, int, int]]:
    """A workflow in PreRun and its real copy-offload server (as root, copying as the job's user)."""
    user = ensure_user("dwsbt-user1")
    name = start_workflow(standin, user.pw_uid, user.pw_gid, CO_JOB)
    secret = standin.request("GET", f"/api/v1/namespaces/default/secrets/{name}-token-server")
    key = base / f"{name}.key"
    key.write_bytes(base64.b64decode(secret["data"]["token.key"]))
    os.chmod(key, 0o600)
    ready = base / f"{name}.ready"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "copyoffload.cli",
            "server",
            "--addr",
            f"127.0.0.1:{COPY_OFFLOAD_PORT}",
            "--cert",
            str(base / "tls" / "cert.pem"),
            "--cakey",
            str(base / "tls" / "key.pem"),
            "--tokenkey",
            str(key),
            "--uid",
            str(user.pw_uid),
            "--gid",
            str(user.pw_gid),
            "--ready-file",
            str(ready),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert server.poll() is None and time.monotonic() < deadline, "copy-offload server did not start"
            time.sleep(0.05)
        yield name, user.pw_uid, user.pw_gid
    finally:
        server.terminate()
        server.wait(10)
        lifecycle(standin).teardown(name)


def test_requests_are_forwarded_to_the_workflows_copy_offload_server(
    daemon: Daemon, standin: RunningStandIn, copy_offload_server: tuple[str, int, int], base: Path
) -> None:
    name, _, _ = copy_offload_server
    user = ensure_user("dwsbt-user1")
    job = user_dir(base / f"{name}-mnt", user, 0o700)
    user_file(job / "out.dat", user, b"results" * 1000)
    point_env_at(
        standin,
        name,
        DW_JOB_scratch=str(job),
        NNF_CONTAINER_LAUNCHER="localhost",
        NNF_CONTAINER_PORTS=str(COPY_OFFLOAD_PORT),
    )
    create, status, listed, delete = calls_as(
        user,
        daemon,
        [
            {
                "rpc": "Create",
                "args": {"source": "$DW_JOB_scratch/out.dat", "destination": "$DW_JOB_scratch/copy"},
            },
            {"rpc": "Status", "args": {"uid": "$uid", "maxWaitTime": -1}},
            {"rpc": "List"},
            {"rpc": "Delete", "args": {"uid": "$uid"}},
        ],
        workflow=name,
    )
    assert create["status"] == "SUCCESS", create
    assert (status["state"], status["status"]) == ("COMPLETED", "SUCCESS"), status
    assert listed["uids"] == [create["uid"]]
    assert delete["status"] == "SUCCESS"
    assert (job / "copy").read_bytes() == b"results" * 1000
    assert (job / "copy").stat().st_uid == user.pw_uid
    # another user reaches neither the workflow nor, through it, the copy-offload server
    (stolen,) = calls_as(
        ensure_user("dwsbt-user2"),
        daemon,
        [{"rpc": "Create", "args": {"source": "$DW_JOB_scratch/out.dat", "destination": "/tmp/stolen"}}],
        workflow=name,
    )
    assert stolen["status"] == "FAILED" and "belongs to another user" in stolen["message"]
    assert "token" not in daemon.log_text().lower()


def test_a_workflow_without_copy_offload_is_refused_with_what_to_add(
    daemon: Daemon, standin: RunningStandIn
) -> None:
    user = ensure_user("dwsbt-user1")
    name = start_workflow(
        standin, user.pw_uid, user.pw_gid, ["#DW jobdw type=gfs2 capacity=1GiB name=scratch"]
    )
    try:
        (reply,) = calls_as(
            user, daemon, [{"rpc": "Create", "args": {"source": "/a", "destination": "/b"}}], workflow=name
        )
        assert reply["status"] == "FAILED"
        assert f"workflow {name} has no copy-offload server" in reply["message"]
        assert "requires=copy-offload" in reply["message"]
    finally:
        lifecycle(standin).teardown(name)


def test_an_unreachable_copy_offload_server_fails_the_create_with_the_reason(
    daemon: Daemon, standin: RunningStandIn
) -> None:
    user = ensure_user("dwsbt-user1")
    name = start_workflow(standin, user.pw_uid, user.pw_gid, CO_JOB)
    try:
        closed = str(COPY_OFFLOAD_PORT + 8)  # nobody listens there
        point_env_at(standin, name, NNF_CONTAINER_LAUNCHER="localhost", NNF_CONTAINER_PORTS=closed)
        (reply,) = calls_as(
            user, daemon, [{"rpc": "Create", "args": {"source": "/a", "destination": "/b"}}], workflow=name
        )
        assert reply["status"] == "FAILED"
        assert f"copy-offload server of {name} unreachable" in reply["message"]
    finally:
        lifecycle(standin).teardown(name)
