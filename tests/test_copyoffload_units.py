"""Pieces without the network: request decoding, profiles, job table, tokens, the shipped OpenAPI file."""

from __future__ import annotations

import os
import threading
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from copyoffload import tokens
from copyoffload.jobs import (
    MOVER_MAX_WORKERS,
    CopyAborted,
    CopyRequest,
    JobTable,
    Profile,
    ProfileError,
    Profiles,
    RequestRejected,
    command_copier,
    go_duration,
)
from copyoffload.server.bodies import BodyError, decode_copy_request, json_line, text


def test_decode_takes_zero_values_for_missing_fields() -> None:
    assert decode_copy_request(b"{}") == CopyRequest()
    assert decode_copy_request(b"null") == CopyRequest()


def test_decode_matches_field_names_case_insensitively_like_go() -> None:
    req = decode_copy_request(
        b'{"COMPUTENAME": "c", "sourcepath": "/a", "destinationPath": "/b", "Slots": 3}'
    )
    assert (req.compute_name, req.source_path, req.destination_path, req.slots) == ("c", "/a", "/b", 3)


def test_decode_reads_only_the_first_json_value() -> None:
    assert decode_copy_request(b'{"computeName": "c"} trailing').compute_name == "c"


@pytest.mark.parametrize(
    "body", [b'{"slots": 1.5}', b'{"slots": 4294967296}', b'{"slots": true}', b"NaN", b"[]"]
)
def test_decode_rejects_wrong_types(body: bytes) -> None:
    with pytest.raises(BodyError):
        decode_copy_request(body)


def test_decode_survives_deep_nesting() -> None:
    with pytest.raises(BodyError):
        decode_copy_request(b"[" * 100000)


@pytest.mark.parametrize(
    ("slots", "max_slots", "workers"),
    [(-1, -1, 4), (0, -1, 1), (8, -1, 8), (32, -1, 16), (8, 2, 2), (8, 0, 8), (-1, 3, 3)],
)
def test_profile_sizes_the_copy(slots: int, max_slots: int, workers: int) -> None:
    assert Profile("p", workers=4, max_workers=16).workers_for(slots, max_slots) == workers


def test_no_request_takes_the_built_in_mover_past_its_worker_limit() -> None:
    profile = Profile("p", workers=4, max_workers=16)
    assert profile.workers_for(2**31 - 1, 0) == MOVER_MAX_WORKERS
    assert profile.workers_for(2**31 - 1, 2**31 - 1) == MOVER_MAX_WORKERS
    assert Profile("dcp", command=("dcp",)).workers_for(512, 0) == 512  # mpirun sizes itself


def test_lone_surrogates_in_a_request_become_replacement_characters_as_in_go() -> None:
    req = decode_copy_request(b'{"sourcePath": "/a/\\ud800b", "destinationPath": "/\\ud83d\\ude00"}')
    assert (req.source_path, req.destination_path) == ("/a/\ufffdb", "/\U0001f600")


def test_bodies_are_valid_utf8_even_for_names_that_are_not() -> None:
    undecodable = "cannot read /x/" + os.fsdecode(b"\xff") + ": Permission denied"
    assert (
        json_line({"message": undecodable}).body
        == '{"message":"cannot read /x/\ufffd: Permission denied"}\n'.encode()
    )
    assert text(400, undecodable).body.decode("utf-8").endswith("\ufffd: Permission denied\n")


def test_json_bodies_escape_line_separators_like_go() -> None:
    assert json_line({"m": "a\u2028b\u2029<"}).body == b'{"m":"a\\u2028b\\u2029\\u003c"}\n'


def test_command_copier_leaves_no_thread_behind() -> None:
    command_copier(
        CopyRequest("c", "/a", "/b"),
        profile=Profile("c", command=("true",)),
        workers=1,
        uid=os.geteuid(),
        gid=os.getegid(),
        progress=lambda p: None,
        cancel=threading.Event(),
        on_child=lambda pid: None,
    )
    assert not [t for t in threading.enumerate() if "kill_on_cancel" in t.name]


def test_shipped_profiles_load_and_default_exists() -> None:
    profiles = Profiles.load()
    assert profiles.select("").name == "default"
    assert profiles.select("copy-offload-default").name == "copy-offload-default"
    with pytest.raises(RequestRejected):
        profiles.select("missing")


def test_bad_profiles_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("profiles: {a: {workerz: 3}}\n")
    with pytest.raises(ProfileError, match="unknown keys"):
        Profiles.load(bad)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0004, "0s"),
        (0.0123, "12ms"),
        (0.074, "74ms"),
        (1.5, "1.5s"),
        (90.5, "1m30.5s"),
        (300, "5m0s"),
        (3725, "1h2m5s"),
        (3600.0126, "1h0m0.012s"),
    ],
)
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def slow_copier(request: CopyRequest, *, cancel: threading.Event, **_: object) -> str:
    cancel.wait()
    raise CopyAborted()


def test_job_table_is_bounded() -> None:
    table = JobTable(node="n", copier=slow_copier, uid=0, gid=0, max_running=1, max_active=3)
    for _ in range(3):
        table.submit(CopyRequest("c", "/a", "/b"), Profile("p"))
    with pytest.raises(RequestRejected) as err:
        table.submit(CopyRequest("c", "/a", "/b"), Profile("p"))
    assert err.value.code == 503
    table.close(timeout=10)
    assert not table.has_active()


def test_job_table_forgets_the_oldest_finished_jobs() -> None:
    table = JobTable(node="n", copier=slow_copier, uid=0, gid=0, keep_finished=2)
    names = [table.submit(CopyRequest("c", "/a", "/b", dryrun=True), Profile("p")).name for _ in range(4)]
    for name in names:
        table.status(name, None)
    assert table.status(names[0]) is None and table.status(names[-1]) is not None


def test_cancel_of_pending_job_never_runs_it() -> None:
    table = JobTable(node="n", copier=slow_copier, uid=0, gid=0, max_running=1)
    table.submit(CopyRequest("c", "/a", "/b"), Profile("p"))
    pending = table.submit(CopyRequest("c", "/a", "/b"), Profile("p"))
    assert table.status(pending.name) == {"state": "pending", "status": "unknown status"}
    table.cancel(pending.name)
    status = table.status(pending.name, None)
    assert status is not None and (status["state"], status["status"]) == ("completed", "cancelled")
    assert "startTime" not in status
    table.close(timeout=10)


def test_job_names_are_url_safe_without_commas() -> None:
    table = JobTable(node="rabbit 0,x/../y", copier=slow_copier, uid=0, gid=0)
    name = table.submit(CopyRequest("c", "/a", "/b", dryrun=True), Profile("p")).name
    assert name == "rabbit-0-x-..-y--nnf-copy-offload-node-0"
    assert "," not in name and "/" not in name


def test_minted_token_verifies_and_carries_workflow() -> None:
    key = tokens.new_workflow_key()
    claims = tokens.verify_token(tokens.mint_token(key, "bb1"), key, "bb1")
    assert claims["sub"] == "user-container" and claims["wf"] == "bb1" and isinstance(claims["iat"], int)


def test_token_hmac_secret_is_the_der_inside_the_pem() -> None:
    import jwt

    key = tokens.new_workflow_key()
    token = tokens.mint_token(key)
    assert jwt.decode(token, tokens.secret_from_pem(key), algorithms=["HS256"])["sub"] == "user-container"
    assert jwt.encode({"sub": "x"}, tokens.secret_from_pem(key), algorithm="HS256").count(".") == 2
    with pytest.raises(tokens.TokenError, match="signature is invalid"):
        tokens.verify_token(jwt.encode({"sub": "x"}, b"another secret" * 4, algorithm="HS256"), key)


def test_verifier_cache_still_checks_expiry() -> None:
    import time

    import jwt

    key = tokens.new_workflow_key()
    verifier = tokens.TokenVerifier(key)
    short = jwt.encode({"sub": "user-container", "exp": time.time() + 5}, tokens.secret_from_pem(key))
    verifier.verify(short)
    verifier._cache[short]["exp"] = time.time() - 1  # as if the time had passed
    with pytest.raises(tokens.TokenError, match="expired"):
        verifier.verify(short)


def test_deeply_nested_token_header_is_refused_not_crashed() -> None:
    header = tokens._b64encode(b"[" * 20000)
    with pytest.raises(tokens.TokenError, match="malformed"):
        tokens.verify_token(f"{header}.e30.c2ln", tokens.new_workflow_key())


def openapi() -> dict[str, object]:
    return yaml.safe_load(files("copyoffload").joinpath("data/openapi.yaml").read_text())


def test_openapi_lists_every_endpoint_and_method() -> None:
    doc = openapi()
    paths = doc["paths"]
    assert isinstance(paths, dict)
    assert {p: set(ops) for p, ops in paths.items()} == {
        "/hello": {"get"},
        "/trial": {"post"},
        "/list": {"get"},
        "/status/{job}": {"get"},
        "/cancel/{job}": {"delete"},
        "/shutdown": {"post"},
    }


def test_status_bodies_match_the_openapi_schema() -> None:
    import jsonschema

    schema = openapi()["components"]["schemas"]["Status"]  # type: ignore[index]
    table = JobTable(node="n", copier=slow_copier, uid=0, gid=0)
    name = table.submit(CopyRequest("c", "/a", "/b", dryrun=True), Profile("p")).name
    jsonschema.validate(table.status(name, None), schema)
    jsonschema.validate({"state": "pending", "status": "unknown status"}, schema)


def test_bounded_lines_split_across_reads_and_drop_only_the_overlong_line() -> None:
    import io

    from copyoffload.pipes import OVERLONG, bounded_lines

    class Trickle(io.RawIOBase):
        """Hands out at most 3 bytes per read, as a pipe may."""

        def __init__(self, data: bytes) -> None:
            self.data = data

        def readable(self) -> bool:
            return True

        def read1(self, size: int = -1) -> bytes:
            chunk, self.data = self.data[:3], self.data[3:]
            return chunk

    data = b"ab\ncdefghij\n" + b"x" * 40 + b"\nlast"
    assert list(bounded_lines(Trickle(data), max_line=12)) == [b"ab\n", b"cdefghij\n", OVERLONG, b"last"]
    endless = io.BytesIO(b"y" * 1000)
    assert list(bounded_lines(endless, max_line=100)) == [OVERLONG]
