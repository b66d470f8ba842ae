"""s3:// staging through the local backend and copy-offload, as ordinary users against an S3 server on
loopback: `#DW copy_in`/`copy_out` with S3 URLs, the site's default endpoint, a per-directive profile,
a failed copy failing its state without a credential in sight, a hurry teardown during a large upload,
copy-offload to and from S3 (and cancelled), and the kubernetes backend refusing s3:// at submit."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from copyoffload.client import CopyOffloadClient
from dwsbridge.backends.local.backend import LocalBackend
from dwsbridge.config import Config, load_config
from dwsbridge.directives import validate_job
from dwsbridge.errors import ConfigError, ValidationFailed, WorkflowFailed
from dwsbridge.flux.validator import check_jobspec
from dwsbridge.lifecycle import Lifecycle
from tests.helpers_users import shared_tmpdir
from tests.s3_support import S3Server, S3User, running_s3_server, user_with_home, write_aws_files

REPO = Path(__file__).resolve().parent.parent
JOBDW = "#DW jobdw type=xfs capacity=2GiB name=scratch"
BUCKET, OTHER = "dwsbt-stage", "dwsbt-stage-other"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates users, drops privileges)")


# --- submit-time checks (no server needed) --------------------------------------------------------------


def test_the_kubernetes_backend_refuses_s3_staging_at_submit() -> None:
    lines = [JOBDW, f"#DW copy_in source=s3://{BUCKET}/in/ destination=$DW_JOB_scratch/in"]
    with pytest.raises(ValidationFailed) as err:
        validate_job(lines, backend="kubernetes")
    assert "the kubernetes backend cannot stage to or from S3" in str(err.value)
    assert "use the local backend, or copy it from inside the job with the copy-offload server" in str(
        err.value
    )
    assert [d.text for d in validate_job(lines, backend="local")] == lines


def test_dwsbridge_validate_judges_s3_paths_for_the_configured_backend(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text(
        f"#!/bin/bash\n{JOBDW} pool=dws\n#DW copy_out source=$DW_JOB_scratch/out destination=s3://{BUCKET}/r/\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text("backend: kubernetes\n")
    env = {**os.environ, "DWSBRIDGE_CONFIG": str(config)}
    cli = [sys.executable, "-m", "dwsbridge", "validate", "--wlm", "slurm"]
    refused = subprocess.run([*cli, str(script)], capture_output=True, text=True, env=env, check=False)
    assert refused.returncode == 1
    assert "line 3" in refused.stderr and "cannot stage to or from S3" in refused.stderr
    accepted = subprocess.run(
        [*cli, "--backend", "local", str(script)], capture_output=True, env=env, check=False
    )
    assert accepted.returncode == 0


def test_the_flux_validator_refuses_s3_on_kubernetes() -> None:
    jobspec = {
        "attributes": {
            "system": {"dw": f"{JOBDW} #DW copy_in source=s3://{BUCKET}/x destination=$DW_JOB_scratch/x"}
        }
    }
    message = check_jobspec(jobspec, backend="kubernetes")
    assert message is not None and "cannot stage to or from S3" in message
    assert check_jobspec(jobspec, backend="local") is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("s3://", "names no bucket"),
        ("s3:///key", "names no bucket"),
        ("s3://Upper/key", "'Upper' is not a valid bucket name"),
        (f"s3://{BUCKET}", None),
    ],
)
def test_s3_urls_are_checked_at_submit(url: str, reason: str | None) -> None:
    lines = [JOBDW, f"#DW copy_in source={url} destination=$DW_JOB_scratch/x"]
    if reason is None:
        validate_job(lines, backend="local")
        return
    with pytest.raises(ValidationFailed, match=reason):
        validate_job(lines, backend="local")


def test_s3_to_s3_is_refused() -> None:
    with pytest.raises(ValidationFailed, match="not from S3 to S3"):
        validate_job(
            [JOBDW, f"#DW copy_in source=s3://{BUCKET}/a destination=s3://{BUCKET}/b"], backend="local"
        )


def test_site_s3_settings_are_checked_when_the_config_loads(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("s3:\n  endpoint_url: http://127.0.0.1:9000\n  multipart_chunksize: 64MiB\n")
    assert load_config(config).s3 == {
        "endpoint_url": "http://127.0.0.1:9000",
        "multipart_chunksize": 64 << 20,
    }
    config.write_text("s3:\n  endpont_url: http://x\n")
    with pytest.raises(ConfigError, match=r"setting s3: unknown s3 setting\(s\): endpont_url"):
        load_config(config)
    config.write_text("s3:\n  addressing_style: sideways\n")
    with pytest.raises(ConfigError, match="addressing_style must be one of auto, path, virtual"):
        load_config(config)


# --- the local backend and copy-offload, for real -------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[S3Server]:
    pytest.importorskip("boto3")
    pytest.importorskip("moto")
    if os.geteuid() != 0:
        pytest.skip("needs root (creates users, drops privileges)")
    with running_s3_server({"stager": [BUCKET], "other": [OTHER]}) as srv:
        yield srv


@pytest.fixture(scope="module")
def homes() -> Iterator[Path]:
    with shared_tmpdir() as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def stager(server: S3Server, homes: Path) -> S3User:
    """Credentials in ~/.aws/credentials, and no endpoint of its own: the site's default applies."""
    user = user_with_home("dwsbt-s3stager", homes)
    keys = server.users["stager"]
    write_aws_files(
        user,
        {
            "default": {"aws_access_key_id": keys["access_key"], "aws_secret_access_key": keys["secret_key"]},
        },
        {"default": {"region": "us-east-1"}},
    )
    return user


@pytest.fixture
def config(server: S3Server) -> Iterator[Config]:
    with shared_tmpdir() as tmp:
        yield Config(root=Path(tmp) / "root", state_timeout=120.0, s3={"endpoint_url": server.endpoint})


def _lifecycle(config: Config) -> Lifecycle:
    return Lifecycle(config, LocalBackend(config))


def _put(server: S3Server, objects: dict[str, bytes]) -> None:
    client = server.client()
    for key, body in objects.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)


def _objects(server: S3Server, prefix: str) -> dict[str, bytes]:
    client = server.client()
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}


@pytest.mark.root
@needs_root
def test_a_workflow_stages_in_from_s3_and_out_to_s3(server: S3Server, stager: S3User, config: Config) -> None:
    inputs = {"job1/in/a.txt": b"alpha\n", "job1/in/sub/b.bin": os.urandom(40_000), "job1/one.cfg": b"x=1\n"}
    _put(server, inputs)
    lc = _lifecycle(config)
    name = lc.create(
        wlm="slurm",
        job_id="1",
        uid=stager.uid,
        gid=stager.gid,
        directives=[
            JOBDW,
            f"#DW copy_in source=s3://{BUCKET}/job1/in/ destination=$DW_JOB_scratch/input",
            f"#DW copy_in source=s3://{BUCKET}/job1/one.cfg destination=$DW_JOB_scratch/",
            f"#DW copy_out source=$DW_JOB_scratch/input destination=s3://{BUCKET}/job1/out/",
            f"#DW copy_out source=$DW_JOB_scratch/one.cfg destination=s3://{BUCKET}/job1/cfg-back",
        ],
    )
    lc.walk(name, ["Setup", "DataIn"])
    scratch = Path(lc.environment(name)["DW_JOB_scratch"])
    assert (scratch / "input" / "sub" / "b.bin").read_bytes() == inputs["job1/in/sub/b.bin"]
    assert (scratch / "one.cfg").stat().st_uid == stager.uid
    lc.walk(name, ["PreRun", "PostRun", "DataOut"])
    lc.teardown(name)
    assert _objects(server, "job1/out/") == {
        "job1/out/a.txt": inputs["job1/in/a.txt"],
        "job1/out/sub/b.bin": inputs["job1/in/sub/b.bin"],
    }
    assert _objects(server, "job1/cfg-back") == {"job1/cfg-back": b"x=1\n"}


@pytest.mark.root
@needs_root
def test_a_failed_s3_copy_fails_its_state_naming_the_url_and_no_credential(
    server: S3Server, stager: S3User, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    lc = _lifecycle(config)
    directive = f"#DW copy_in source=s3://{OTHER}/theirs.dat destination=$DW_JOB_scratch/"
    name = lc.create(wlm="slurm", job_id="2", uid=stager.uid, gid=stager.gid, directives=[JOBDW, directive])
    lc.advance_to(name, "Setup")
    with pytest.raises(WorkflowFailed) as err:
        lc.advance_to(name, "DataIn")
    status = lc.status(name)
    assert status.status == "Error"
    assert f"cannot read s3://{OTHER}/theirs.dat: access denied" in status.message
    assert directive in status.message
    env_text = json.dumps(lc.environment(name))
    lc.teardown(name)
    for text in (str(err.value), status.message, caplog.text, env_text):
        for secret in server.secrets():
            assert secret not in text


@pytest.mark.root
@needs_root
def test_profile_names_one_of_the_users_own_s3_profiles(
    server: S3Server, homes: Path, config: Config
) -> None:
    """Only a [profile lab] here: `profile=lab` finds it; without it there are no credentials."""
    (homes / "lab").mkdir()
    user = user_with_home("dwsbt-s3lab", homes / "lab")
    keys = server.users["stager"]
    write_aws_files(
        user,
        {"lab": {"aws_access_key_id": keys["access_key"], "aws_secret_access_key": keys["secret_key"]}},
        {"lab": {"endpoint_url": server.endpoint}},
    )
    _put(server, {"lab/data.txt": b"lab data\n"})
    lc = _lifecycle(config)
    good = lc.create(
        wlm="slurm",
        job_id="3",
        uid=user.uid,
        gid=user.gid,
        directives=[
            JOBDW,
            f"#DW copy_in source=s3://{BUCKET}/lab/data.txt destination=$DW_JOB_scratch/ profile=lab",
        ],
    )
    lc.walk(good, ["Setup", "DataIn"])
    assert (Path(lc.environment(good)["DW_JOB_scratch"]) / "data.txt").read_bytes() == b"lab data\n"
    lc.teardown(good)
    bad = lc.create(
        wlm="slurm",
        job_id="4",
        uid=user.uid,
        gid=user.gid,
        directives=[JOBDW, f"#DW copy_in source=s3://{BUCKET}/lab/data.txt destination=$DW_JOB_scratch/"],
    )
    lc.advance_to(bad, "Setup")
    with pytest.raises(WorkflowFailed, match=r"no S3 credentials for this user \(profile 'default'\)"):
        lc.advance_to(bad, "DataIn")
    lc.teardown(bad)


DATA_OUT_SCRIPT = """
import json, sys
from dwsbridge.config import Config
from dwsbridge.lifecycle import Lifecycle
lc = Lifecycle(Config(root=sys.argv[1], s3=json.loads(sys.argv[3])))
lc.advance_to(sys.argv[2], "DataOut")
"""


@pytest.mark.root
@needs_root
def test_hurry_teardown_during_a_large_copy_out_leaves_no_multipart_upload(
    server: S3Server, stager: S3User, config: Config
) -> None:
    lc = _lifecycle(config)
    name = lc.create(
        wlm="slurm",
        job_id="5",
        uid=stager.uid,
        gid=stager.gid,
        directives=[
            JOBDW,
            f"#DW copy_out source=$DW_JOB_scratch/big.bin destination=s3://{BUCKET}/slow/hurry/",
        ],
    )
    lc.walk(name, ["Setup", "DataIn", "PreRun", "PostRun"])
    scratch = Path(lc.environment(name)["DW_JOB_scratch"])
    run_as = {"user": stager.uid, "group": stager.gid, "extra_groups": []}
    subprocess.run(["sh", "-c", f"head -c 40000000 /dev/urandom > {scratch}/big.bin"], check=True, **run_as)
    s3 = json.dumps({**config.s3, "max_concurrency": 2, "multipart_chunksize": 8 << 20})
    proc = subprocess.Popen([sys.executable, "-c", DATA_OUT_SCRIPT, str(config.root), name, s3], cwd=REPO)
    client = server.client()
    deadline = time.monotonic() + 60
    while not client.list_multipart_uploads(Bucket=BUCKET, Prefix="slow/hurry/").get("Uploads"):
        assert proc.poll() is None and time.monotonic() < deadline, "the upload never started"
        time.sleep(0.05)
    started = time.monotonic()
    lc.teardown(name, hurry=True)
    assert time.monotonic() - started < 5
    assert proc.wait(30) != 0
    deadline = time.monotonic() + 15
    while client.list_multipart_uploads(Bucket=BUCKET, Prefix="slow/hurry/").get("Uploads"):
        assert time.monotonic() < deadline, "a multipart upload was left behind"
        time.sleep(0.1)
    assert "Contents" not in client.list_objects_v2(Bucket=BUCKET, Prefix="slow/hurry/")
    assert not lc.exists(name)


COPY_OFFLOAD = [
    "#DW jobdw type=xfs capacity=2GiB name=scratch requires=copy-offload",
    "#DW container name=co profile=copy-offload-default",
]


@pytest.mark.root
@needs_root
def test_copy_offload_moves_data_from_and_to_s3_and_cancels_quickly(
    server: S3Server, stager: S3User, config: Config
) -> None:
    payload = os.urandom(3_000_000)
    _put(server, {"co/in/data.bin": payload})
    big = bytes(range(256)) * (128 << 10)  # 32 MiB under slow/: served at 8 MiB/s, so cancelled midway
    server.client().upload_fileobj(io.BytesIO(big), BUCKET, "co/slow/big.bin")  # in parallel parts
    lc = _lifecycle(config)
    name = lc.create(wlm="slurm", job_id="6", uid=stager.uid, gid=stager.gid, directives=COPY_OFFLOAD)
    try:
        shown, server_log = _copy_offload_to_and_from_s3(server, lc, name, payload)
    finally:
        lc.teardown(name, hurry=True)  # also when an assertion failed: no server is left running
    for secret in server.secrets():
        assert secret not in shown and secret not in server_log


def _copy_offload_to_and_from_s3(
    server: S3Server, lc: Lifecycle, name: str, payload: bytes
) -> tuple[str, str]:
    """The body of the test above; returns what the job saw and the server's log."""
    config = lc.config
    lc.walk(name, ["Setup", "DataIn", "PreRun"])
    env = lc.environment(name)
    scratch = Path(env["DW_JOB_scratch"])
    with CopyOffloadClient(environ=env) as co:
        got = co.status(co.copy(f"s3://{BUCKET}/co/in/", str(scratch / "in")), max_wait_secs=-1)
        assert (got.state, got.status) == ("completed", "success"), got.message
        assert (
            hashlib.sha256((scratch / "in" / "data.bin").read_bytes()).digest()
            == hashlib.sha256(payload).digest()
        )
        put = co.status(co.copy(str(scratch / "in"), f"s3://{BUCKET}/co/out/"), max_wait_secs=-1)
        assert (put.state, put.status) == ("completed", "success"), put.message
        denied = co.status(co.copy(f"s3://{OTHER}/x.bin", str(scratch) + "/"), max_wait_secs=-1)
        assert (
            denied.status == "failed" and f"cannot read s3://{OTHER}/x.bin: access denied" in denied.message
        )
        shown = json.dumps([got.raw, put.raw, denied.raw])
        job = co.copy(f"s3://{BUCKET}/co/slow/big.bin", str(scratch) + "/")
        deadline = time.monotonic() + 30
        while co.status(job).progress == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        co.cancel(job)
        cancelled = co.status(job, max_wait_secs=10)
        assert time.monotonic() - started < 1.5
        assert (cancelled.state, cancelled.status) == ("completed", "cancelled")
    assert _objects(server, "co/out/") == {"co/out/data.bin": payload}
    assert sorted(os.listdir(scratch)) == ["in"]  # no partial big.bin
    lc.walk(name, ["PostRun", "DataOut"])
    return shown, (config.root / "log" / f"{name}-copy-offload.log").read_text(errors="replace")
