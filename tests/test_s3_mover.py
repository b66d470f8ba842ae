"""The mover's s3:// paths, run as ordinary users against an S3 server on loopback (moto, authentication
on), with each user's credentials in a home directory the test makes: trees and single keys both ways,
data identical, every error named and actionable, cancellation and SIGKILL leaving nothing half-done,
two users isolated, and no credential in any message."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from copyoffload.mover import CopyCancelled, CopyError, CopyOptions, Progress, S3Options, copy_as_user
from tests.helpers_users import shared_tmpdir
from tests.s3_support import S3Server, S3User, give_credentials, running_s3_server, user_with_home

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates users, drops privileges)"),
]
boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

ALICE_BUCKET, BOB_BUCKET = "dwsbt-alice", "dwsbt-bob"
GiB = 1024**3
LARGE = 32 * 1024 * 1024  # interrupted copies, under slow/ (8 MiB/s per request): stopped midway


@pytest.fixture(scope="module")
def server() -> Iterator[S3Server]:
    with running_s3_server({"alice": [ALICE_BUCKET], "bob": [BOB_BUCKET]}) as srv:
        yield srv


@pytest.fixture(scope="module")
def homes() -> Iterator[Path]:
    with shared_tmpdir() as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def alice(server: S3Server, homes: Path) -> S3User:
    user = user_with_home("dwsbt-s3alice", homes)
    give_credentials(user, server, "alice")
    return user


@pytest.fixture(scope="module")
def bob(server: S3Server, homes: Path) -> S3User:
    user = user_with_home("dwsbt-s3bob", homes)
    give_credentials(user, server, "bob")
    return user


@pytest.fixture
def work(alice: S3User) -> Iterator[Path]:
    """A directory alice owns (world-traversable), fresh per test."""
    with shared_tmpdir() as tmp:
        path = Path(tmp)
        os.chown(path, alice.uid, alice.gid)
        yield path


def _own(root: Path, user: S3User) -> None:
    for path in [root, *root.rglob("*")]:
        os.lchown(path, user.uid, user.gid)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _keys(server: S3Server, bucket: str, prefix: str = "") -> dict[str, str]:
    """key -> sha256 of every object under prefix (read with the admin's credentials)."""
    client = server.client()
    result = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            result[obj["Key"]] = hashlib.sha256(body).hexdigest()
    return result


def _put_many(server: S3Server, bucket: str, objects: dict[str, bytes]) -> None:
    client = server.client()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objects.items()))


def _open_uploads(server: S3Server, bucket: str) -> list[Any]:
    return list(server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def _assert_no_secret(server: S3Server, text: str) -> None:
    for secret in server.secrets():
        assert secret not in text


def _big_file(path: Path, size: int) -> str:
    """`size` bytes of distinct 1 MiB blocks (random, each stamped with its index), fast to write;
    returns the file's sha256."""
    block = os.urandom(1024 * 1024)
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        for index in range(size // len(block)):
            chunk = index.to_bytes(8, "big") + block[8:]
            digest.update(chunk)
            handle.write(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --- copy_in: a key, a prefix -------------------------------------------------------------------------


def test_a_single_key_lands_in_the_destination_directory_as_the_users_file(
    server: S3Server, alice: S3User, work: Path
) -> None:
    data = os.urandom(300_000)
    server.client().put_object(Bucket=ALICE_BUCKET, Key="in/one/data.bin", Body=data)
    result = copy_as_user(f"s3://{ALICE_BUCKET}/in/one/data.bin", work, uid=alice.uid, gid=alice.gid)
    copied = work / "data.bin"
    assert copied.read_bytes() == data
    assert (copied.stat().st_uid, copied.stat().st_gid) == (alice.uid, alice.gid)
    assert copied.stat().st_mode & 0o777 == 0o644
    assert (result.files, result.bytes) == (1, len(data))


def test_a_prefix_of_1000_objects_becomes_the_same_tree(server: S3Server, alice: S3User, work: Path) -> None:
    objects = {f"tree/d{i % 10}/sub{i % 3}/f{i}.dat": os.urandom(100 + i) for i in range(1000)}
    objects["tree/empty/"] = b""  # a console's directory marker: an empty directory
    _put_many(server, ALICE_BUCKET, objects)
    seen: list[Progress] = []
    result = copy_as_user(
        f"s3://{ALICE_BUCKET}/tree/", work / "tree", uid=alice.uid, gid=alice.gid, progress=seen.append
    )
    expected = {k[len("tree/") :]: hashlib.sha256(v).hexdigest() for k, v in objects.items() if v}
    assert _digests(work / "tree") == expected
    assert (work / "tree" / "empty").is_dir()
    assert result.files == 1000
    assert seen[-1].finished and seen[-1].files_done == 1000


def test_a_key_that_names_no_object_is_read_as_a_prefix(server: S3Server, alice: S3User, work: Path) -> None:
    _put_many(server, ALICE_BUCKET, {"bare/a.txt": b"a", "bare/b/c.txt": b"c"})
    copy_as_user(f"s3://{ALICE_BUCKET}/bare", work / "got", uid=alice.uid, gid=alice.gid)
    assert _digests(work / "got") == {
        "a.txt": hashlib.sha256(b"a").hexdigest(),
        "b/c.txt": hashlib.sha256(b"c").hexdigest(),
    }


def test_a_key_with_dot_dot_is_refused_and_nothing_escapes(
    server: S3Server, alice: S3User, work: Path
) -> None:
    _put_many(server, ALICE_BUCKET, {"evil/ok.txt": b"fine", "evil/../../escape.txt": b"bad"})
    (work / "dest").mkdir()
    os.chown(work / "dest", alice.uid, alice.gid)
    with pytest.raises(
        CopyError, match=r"evil/\.\./\.\./escape\.txt: the key does not map to a safe file path"
    ):
        copy_as_user(f"s3://{ALICE_BUCKET}/evil/", work / "dest" / "in", uid=alice.uid, gid=alice.gid)
    assert not list(work.rglob("escape.txt"))


# --- copy_out: a tree, a file ---------------------------------------------------------------------------


def test_a_tree_goes_to_the_prefix_key_for_path(server: S3Server, alice: S3User, work: Path) -> None:
    src = work / "results"
    (src / "a" / "b").mkdir(parents=True)
    (src / "top.txt").write_bytes(b"top\n")
    (src / "a" / "mid.bin").write_bytes(os.urandom(70_000))
    (src / "a" / "b" / "deep.bin").write_bytes(os.urandom(20 * 1024 * 1024))  # multipart (> 16 MiB)
    (src / "link").symlink_to("top.txt")
    _own(src, alice)
    result = copy_as_user(src, f"s3://{ALICE_BUCKET}/out/run1/", uid=alice.uid, gid=alice.gid)
    assert _keys(server, ALICE_BUCKET, "out/run1/") == {
        f"out/run1/{k}": v for k, v in _digests(src).items() if k != "link"
    }
    assert any("symlink" in w and "link" in w for w in result.warnings)


def test_a_file_goes_to_its_key_or_under_a_prefix(server: S3Server, alice: S3User, work: Path) -> None:
    src = work / "answer.txt"
    src.write_bytes(b"42\n")
    _own(src, alice)
    copy_as_user(src, f"s3://{ALICE_BUCKET}/exact/name.txt", uid=alice.uid, gid=alice.gid)
    copy_as_user(src, f"s3://{ALICE_BUCKET}/under/", uid=alice.uid, gid=alice.gid)
    assert set(_keys(server, ALICE_BUCKET, "exact/")) == {"exact/name.txt"}
    assert set(_keys(server, ALICE_BUCKET, "under/")) == {"under/answer.txt"}


def test_one_gib_goes_up_in_parts_and_comes_back_in_ranges_identical(
    server: S3Server, alice: S3User, work: Path
) -> None:
    src = work / "big.bin"
    expected = _big_file(src, GiB)
    _own(work, alice)
    # Two ranges at once: moto reads the whole object for every ranged GET, so more would only cost memory.
    options = CopyOptions(
        progress_interval=0.2, s3=S3Options(max_concurrency=2, multipart_chunksize=64 << 20)
    )
    seen: list[Progress] = []
    copy_as_user(
        src, f"s3://{ALICE_BUCKET}/big/", uid=alice.uid, gid=alice.gid, options=options, progress=seen.append
    )
    head = server.client().head_object(Bucket=ALICE_BUCKET, Key="big/big.bin")
    assert head["ContentLength"] == GiB and head["ETag"].strip('"').endswith("-16")  # 16 parts
    assert any(0 < p.bytes_done < GiB and not p.finished for p in seen)
    (work / "back").mkdir()
    os.chown(work / "back", alice.uid, alice.gid)
    copy_as_user(
        f"s3://{ALICE_BUCKET}/big/big.bin", work / "back", uid=alice.uid, gid=alice.gid, options=options
    )
    assert os.listdir(work / "back") == ["big.bin"]
    assert _sha256(work / "back" / "big.bin") == expected
    src.unlink()
    (work / "back" / "big.bin").unlink()


# --- errors ---------------------------------------------------------------------------------------------


def test_no_credentials_says_where_to_put_them(server: S3Server, homes: Path, work: Path) -> None:
    (homes / "nocred").mkdir()
    nobody = user_with_home("dwsbt-s3nocred", homes / "nocred")
    with pytest.raises(CopyError) as err:
        copy_as_user(f"s3://{ALICE_BUCKET}/in/x", work, uid=nobody.uid, gid=nobody.gid)
    assert str(err.value) == (
        f"cannot read s3://{ALICE_BUCKET}/in/x: no S3 credentials for this user (profile 'default'): put "
        "aws_access_key_id and aws_secret_access_key in that profile of ~/.aws/credentials, or choose a "
        "profile that has them"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"s3://{BOB_BUCKET}/secret.txt", rf"cannot read s3://{BOB_BUCKET}/secret.txt: access denied"),
        (f"s3://{ALICE_BUCKET}/no/such/key", r"no object 'no/such/key' and no objects under 'no/such/key/'"),
    ],
)
def test_read_errors_name_the_bucket_and_key(
    server: S3Server, alice: S3User, bob: S3User, work: Path, url: str, expected: str
) -> None:
    server.client().put_object(Bucket=BOB_BUCKET, Key="secret.txt", Body=b"bob's")
    with pytest.raises(CopyError, match=expected) as err:
        copy_as_user(url, work, uid=alice.uid, gid=alice.gid)
    _assert_no_secret(server, str(err.value))
    assert os.listdir(work) == []


def test_write_to_another_users_bucket_is_denied(
    server: S3Server, alice: S3User, bob: S3User, work: Path
) -> None:
    src = work / "f.txt"
    src.write_text("alice\n")
    _own(src, alice)
    with pytest.raises(CopyError, match=rf"cannot write s3://{BOB_BUCKET}/f.txt: access denied"):
        copy_as_user(src, f"s3://{BOB_BUCKET}/", uid=alice.uid, gid=alice.gid)
    assert _keys(server, BOB_BUCKET, "f.txt") == {}


def _user_with(server: S3Server, homes: Path, name: str, keys: dict[str, str], endpoint: str) -> S3User:
    (homes / name).mkdir()
    user = user_with_home(f"dwsbt-s3{name}", homes / name)
    from tests.s3_support import write_aws_files

    write_aws_files(user, {"default": keys}, {"default": {"endpoint_url": endpoint}})
    return user


def test_rejected_credentials_are_named_without_showing_them(
    server: S3Server, homes: Path, work: Path
) -> None:
    keys = {"aws_access_key_id": server.users["alice"]["access_key"], "aws_secret_access_key": "Zq9x" * 10}
    user = _user_with(server, homes, "badsecret", keys, server.endpoint)
    with pytest.raises(
        CopyError, match=r"rejected the credentials of profile 'default' \(SignatureDoesNotMatch\)"
    ) as err:
        copy_as_user(f"s3://{ALICE_BUCKET}/in/", work, uid=user.uid, gid=user.gid)
    _assert_no_secret(server, str(err.value))
    assert "Zq9x" not in str(err.value)


def test_an_unreachable_endpoint_says_to_check_endpoint_url(
    server: S3Server, homes: Path, work: Path
) -> None:
    keys = {"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": "s" * 40}
    user = _user_with(server, homes, "noserver", keys, "http://127.0.0.1:6896")  # nothing listens
    with pytest.raises(
        CopyError, match=r"cannot reach the S3 endpoint http://127\.0\.0\.1:6896: check endpoint_url"
    ):
        copy_as_user(f"s3://{ALICE_BUCKET}/x", work, uid=user.uid, gid=user.gid)


def test_a_tls_failure_says_to_set_ca_bundle(server: S3Server, homes: Path, work: Path) -> None:
    keys = {"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": "s" * 40}
    https = server.endpoint.replace("http://", "https://")  # the server speaks plain HTTP: TLS fails
    user = _user_with(server, homes, "tls", keys, https)
    with pytest.raises(CopyError, match=r"TLS failure talking to https://127\.0\.0\.1:\d+ .*set ca_bundle"):
        copy_as_user(f"s3://{ALICE_BUCKET}/x", work, uid=user.uid, gid=user.gid)


def test_an_unknown_profile_says_how_to_define_it(server: S3Server, alice: S3User, work: Path) -> None:
    options = CopyOptions(s3=S3Options(profile="archive"))
    with pytest.raises(
        CopyError, match=r"S3 profile 'archive' is not defined for this user: add \[profile archive\]"
    ):
        copy_as_user(f"s3://{ALICE_BUCKET}/x", work, uid=alice.uid, gid=alice.gid, options=options)


# --- two users ------------------------------------------------------------------------------------------


def test_a_symlink_another_user_plants_at_the_destination_is_never_written_through(
    server: S3Server, alice: S3User, bob: S3User
) -> None:
    """In a shared sticky directory Bob plants `report.txt -> Alice's file`: Alice's download must not
    write through it (it may only fail), her file stays intact, and no partial file is left."""
    server.client().put_object(Bucket=ALICE_BUCKET, Key="drop/report.txt", Body=b"downloaded\n")
    with shared_tmpdir() as tmp:
        shared = Path(tmp)
        os.chmod(shared, 0o1777)
        victim = alice.home / "victim.txt"
        victim.write_text("precious\n")
        os.chown(victim, alice.uid, alice.gid)
        trap = shared / "report.txt"
        trap.symlink_to(victim)
        os.lchown(trap, bob.uid, bob.gid)
        with pytest.raises(CopyError, match=r"cannot write .*/report\.txt: Operation not permitted"):
            copy_as_user(f"s3://{ALICE_BUCKET}/drop/report.txt", shared, uid=alice.uid, gid=alice.gid)
        assert victim.read_text() == "precious\n"
        assert os.listdir(shared) == ["report.txt"] and trap.is_symlink()


def test_each_user_copies_with_its_own_credentials_only(
    server: S3Server, alice: S3User, bob: S3User, work: Path
) -> None:
    """Bob's copy, run the same way, reaches Bob's bucket and not Alice's: the credentials come from the
    home of the user the copy runs as, and each home's ~/.aws is private to its owner."""
    server.client().put_object(Bucket=ALICE_BUCKET, Key="mine.txt", Body=b"alice only")
    server.client().put_object(Bucket=BOB_BUCKET, Key="mine.txt", Body=b"bob only")
    with shared_tmpdir() as tmp:
        bob_dir = Path(tmp)
        os.chown(bob_dir, bob.uid, bob.gid)
        copy_as_user(f"s3://{BOB_BUCKET}/mine.txt", bob_dir, uid=bob.uid, gid=bob.gid)
        assert (bob_dir / "mine.txt").read_bytes() == b"bob only"
        with pytest.raises(CopyError, match="access denied"):
            copy_as_user(f"s3://{ALICE_BUCKET}/mine.txt", bob_dir / "stolen", uid=bob.uid, gid=bob.gid)
        # Bob cannot read Alice's credentials to try them himself.
        with pytest.raises(CopyError, match="Permission denied"):
            copy_as_user(alice.home / ".aws" / "credentials", bob_dir / "creds", uid=bob.uid, gid=bob.gid)
        assert not (bob_dir / "stolen").exists() and not (bob_dir / "creds").exists()


def test_roots_aws_environment_never_reaches_the_users_copy(
    server: S3Server, alice: S3User, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A root caller's AWS_* variables (here: the admin's keys) are not the user's: Alice's copy still
    uses Alice's ~/.aws, so the admin's access does not leak into it."""
    admin = server.users["admin"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", admin["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", admin["secret_key"])
    server.client().put_object(Bucket=BOB_BUCKET, Key="admin-can.txt", Body=b"x")
    with pytest.raises(CopyError, match="access denied"):
        copy_as_user(f"s3://{BOB_BUCKET}/admin-can.txt", work, uid=alice.uid, gid=alice.gid)


# --- cancel, SIGKILL: nothing half-done ---------------------------------------------------------------


@pytest.fixture(scope="module")
def large_object(server: S3Server) -> str:
    """The object the interrupted downloads read (in ranges, two at a time)."""
    key = "large/slow/obj.bin"
    with shared_tmpdir() as tmp:
        path = Path(tmp) / "obj.bin"
        _big_file(path, LARGE)
        server.client().upload_file(str(path), ALICE_BUCKET, key)
    return key


SLOW = CopyOptions(progress_interval=0.1, s3=S3Options(max_concurrency=2, multipart_chunksize=8 << 20))
# Eight ranged GETs at once: moto reads the whole object for each, so they are slow to answer.
SLOW_DOWN = CopyOptions(progress_interval=0.05, s3=S3Options(max_concurrency=8, multipart_chunksize=8 << 20))


def _interrupt_when_moving(stop: Any) -> tuple[Any, threading.Event]:
    moving = threading.Event()

    def progress(p: Progress) -> None:
        if p.bytes_done > 0 and not p.finished:
            moving.set()

    def watcher() -> None:
        if moving.wait(60):
            stop()

    threading.Thread(target=watcher, daemon=True).start()
    return progress, moving


def _eventually(check: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return bool(check())


def test_cancelling_an_upload_stops_within_a_second_and_aborts_its_multipart_upload(
    server: S3Server, alice: S3User, work: Path
) -> None:
    src = work / "up.bin"
    _big_file(src, LARGE)
    _own(work, alice)
    cancel = threading.Event()
    stopped_at: list[float] = []
    progress, moving = _interrupt_when_moving(lambda: (stopped_at.append(time.monotonic()), cancel.set()))
    with pytest.raises(CopyCancelled):
        copy_as_user(
            src,
            f"s3://{ALICE_BUCKET}/slow/cancelled/up.bin",
            uid=alice.uid,
            gid=alice.gid,
            options=SLOW,
            progress=progress,
            cancel=cancel,
        )
    assert moving.is_set() and time.monotonic() - stopped_at[0] < 1.5
    assert _open_uploads(server, ALICE_BUCKET) == []
    assert _keys(server, ALICE_BUCKET, "slow/cancelled/") == {}


def test_a_killed_upload_leaves_no_multipart_upload(server: S3Server, alice: S3User, work: Path) -> None:
    """SIGKILL of the copy's process group (what a hurry teardown does): the guard aborts the upload."""
    src = work / "up.bin"
    _big_file(src, LARGE)
    _own(work, alice)
    pids: list[int] = []
    progress, moving = _interrupt_when_moving(lambda: os.killpg(pids[0], signal.SIGKILL))
    with pytest.raises(CopyCancelled, match="SIGKILL"):
        copy_as_user(
            src,
            f"s3://{ALICE_BUCKET}/slow/killed/up.bin",
            uid=alice.uid,
            gid=alice.gid,
            options=SLOW,
            progress=progress,
            on_child=pids.append,
        )
    assert moving.is_set()
    assert _eventually(lambda: _open_uploads(server, ALICE_BUCKET) == [])
    assert _keys(server, ALICE_BUCKET, "slow/killed/") == {}


def test_a_cancelled_download_removes_its_partial_file(
    server: S3Server, alice: S3User, work: Path, large_object: str
) -> None:
    cancel = threading.Event()
    progress, moving = _interrupt_when_moving(cancel.set)
    with pytest.raises(CopyCancelled) as err:
        copy_as_user(
            f"s3://{ALICE_BUCKET}/{large_object}",
            work,
            uid=alice.uid,
            gid=alice.gid,
            options=SLOW_DOWN,
            progress=progress,
            cancel=cancel,
        )
    assert moving.is_set()
    assert os.listdir(work) == [], str(err.value)


def test_a_killed_download_leaves_no_partial_file(
    server: S3Server, alice: S3User, work: Path, large_object: str
) -> None:
    pids: list[int] = []
    progress, moving = _interrupt_when_moving(lambda: os.killpg(pids[0], signal.SIGKILL))
    with pytest.raises(CopyCancelled, match="SIGKILL"):
        copy_as_user(
            f"s3://{ALICE_BUCKET}/{large_object}",
            work,
            uid=alice.uid,
            gid=alice.gid,
            options=SLOW_DOWN,
            progress=progress,
            on_child=pids.append,
        )
    assert moving.is_set()
    assert _eventually(lambda: os.listdir(work) == [])


def test_a_missing_bucket_is_named(server: S3Server, homes: Path, work: Path) -> None:
    """Seen with credentials that may read any bucket (otherwise S3 answers access denied)."""
    admin = server.users["admin"]
    keys = {"aws_access_key_id": admin["access_key"], "aws_secret_access_key": admin["secret_key"]}
    user = _user_with(server, homes, "admin", keys, server.endpoint)
    with pytest.raises(CopyError) as err:
        copy_as_user("s3://dwsbt-no-such-bucket/x", work, uid=user.uid, gid=user.gid)
    assert str(err.value).startswith(
        f"cannot read s3://dwsbt-no-such-bucket/x: bucket 'dwsbt-no-such-bucket' does not exist at "
        f"{server.endpoint}: check the bucket name and the endpoint"
    )
    _assert_no_secret(server, str(err.value))
