# ruff: noqa: F811  (pytest fixtures are imported from test_copyoffload_support by name)
"""The v1.0 wire protocol over real TLS: every endpoint, status code and body byte (DESIGN Part 5)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from tests.test_copyoffload_support import (  # noqa: F401  (fixtures)
    Running,
    running_server,
    server,
    tls,
    token,
    workflow_key,
)

ENDPOINTS = [
    ("GET", "/hello"),
    ("POST", "/trial"),
    ("GET", "/list"),
    ("GET", "/status/some-job?maxWaitSecs=0"),
    ("DELETE", "/cancel/some-job"),
    ("POST", "/shutdown"),
]
JOB_NAME = re.compile(r"^rabbit-0--nnf-copy-offload-node-\d+$")


def test_hello_answers_hello_back_at_ya(server: Running) -> None:
    code, body, resp = server.request("GET", "/hello")
    assert (code, body) == (200, b"hello back at ya\n")
    assert resp.getheader("Content-Type") == "text/plain; charset=utf-8"


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_wrong_method_is_501_method_not_supported(server: Running, method: str, path: str) -> None:
    wrong = "PUT" if method != "PUT" else "GET"
    code, body, resp = server.request(wrong, path)
    assert (code, body) == (501, b"method not supported\n")
    assert resp.getheader("Content-Type") == "text/plain; charset=utf-8"


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_method_is_checked_before_auth_and_version(server: Running, method: str, path: str) -> None:
    code, body, _ = server.request("PATCH", path, token=None, version=None)
    assert (code, body) == (501, b"method not supported\n")


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_auth_is_checked_before_version(server: Running, method: str, path: str) -> None:
    code, body, _ = server.request(method, path, token=None, version="9.9")
    assert (code, body) == (401, b"unauthorized\n")


@pytest.mark.parametrize("version", [None, "", "1.1", "2.0", "1.0.0", "v1.0"])
def test_version_must_be_exactly_1_0(server: Running, version: str | None) -> None:
    code, body, _ = server.request("GET", "/hello", version=version)
    assert (code, body) == (406, b"Valid versions: 1.0\n")


def test_bare_token_without_bearer_is_accepted(server: Running) -> None:
    assert server.token
    code, body, _ = server.request("GET", "/hello", token=server.token)
    assert (code, body) == (200, b"hello back at ya\n")


def test_trial_returns_name_of_new_job(server: Running) -> None:
    code, body, _ = server.request(
        "POST", "/trial", json.dumps({"computeName": "c", "sourcePath": "/a", "destinationPath": "/b"})
    )
    assert code == 200
    assert body.endswith(b"\n") and body.count(b"\n") == 1
    name = body.decode()[len("name=") : -1]
    assert body.startswith(b"name=") and JOB_NAME.match(name) and "," not in name


def test_job_names_are_unique(server: Running) -> None:
    names = {server.trial() for _ in range(5)}
    assert len(names) == 5


def test_trial_accepts_any_content_type_and_ignores_unknown_fields(server: Running) -> None:
    body = json.dumps(
        {"computeName": "c", "sourcePath": "/a", "destinationPath": "/b", "noSuchField": [1, {"x": 2}]}
    )
    code, data, _ = server.request(
        "POST", "/trial", body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert code == 200 and data.startswith(b"name=")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "compute name must be supplied"),
        ({"computeName": "c"}, "source path must be supplied"),
        ({"computeName": "c", "sourcePath": "/a"}, "destination path must be supplied"),
        (
            {"computeName": "c", "sourcePath": "/a", "destinationPath": "/b", "slots": -2},
            "slots must be -1 (defer to profile), 0 (disable), or a positive integer",
        ),
        (
            {"computeName": "c", "sourcePath": "/a", "destinationPath": "/b", "maxSlots": -7},
            "maxSlots must be -1 (defer to profile), 0 (disable), or a positive integer",
        ),
    ],
)
def test_trial_validation_messages(server: Running, fields: dict[str, object], message: str) -> None:
    code, body, resp = server.request("POST", "/trial", json.dumps(fields))
    assert (code, body) == (400, (message + "\n").encode())
    assert resp.getheader("Content-Type") == "text/plain; charset=utf-8"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "EOF"),
        (b"{not json", None),
        (b"[1, 2]", "json: cannot unmarshal array into Go value of type driver.DMRequest"),
        (
            b'{"computeName": 7}',
            "json: cannot unmarshal number into Go struct field DMRequest.computeName of type string",
        ),
        (
            b'{"slots": "4"}',
            "json: cannot unmarshal string into Go struct field DMRequest.slots of type int32",
        ),
        (
            b'{"dryrun": "yes"}',
            "json: cannot unmarshal string into Go struct field DMRequest.dryrun of type bool",
        ),
    ],
)
def test_trial_undecodable_body_is_400(server: Running, raw: bytes, reason: str | None) -> None:
    code, body, _ = server.request("POST", "/trial", raw)
    assert code == 400
    assert body.startswith(b"unable to decode data movement request body: ")
    assert body.endswith(b"\n") and body.count(b"\n") == 1
    if reason:
        assert body == b"unable to decode data movement request body: " + reason.encode() + b"\n"


def test_trial_with_unknown_profile_is_refused(server: Running) -> None:
    body = {"computeName": "c", "sourcePath": "/a", "destinationPath": "/b", "dmProfile": "nope"}
    code, data, _ = server.request("POST", "/trial", json.dumps(body))
    assert (code, data) == (400, b"data movement profile 'nope' not found\n")


def test_list_is_empty_body_when_nothing_runs(server: Running) -> None:
    code, body, _ = server.request("GET", "/list")
    assert (code, body) == (200, b"")


def test_list_names_active_jobs_sorted_and_comma_joined(server: Running) -> None:
    names = [server.trial() for _ in range(3)]
    code, body, _ = server.request("GET", "/list")
    assert code == 200
    assert body == (",".join(sorted(names)) + "\n").encode()


def test_list_leaves_out_finished_jobs(server: Running) -> None:
    done = server.trial(dryrun=True)
    server.request("GET", f"/status/{done}?maxWaitSecs=-1")
    running = server.trial()
    assert server.request("GET", "/list")[1] == (running + "\n").encode()


def test_status_of_unknown_job_is_404(server: Running) -> None:
    code, body, _ = server.request("GET", "/status/nnf-copy-offload-node-99?maxWaitSecs=0")
    assert (code, body) == (404, b"request not found\n")


def test_status_without_max_wait_secs_is_400(server: Running) -> None:
    name = server.trial()
    code, body, _ = server.request("GET", f"/status/{name}")
    assert (code, body) == (400, b'unable to parse maxWaitSecs: strconv.Atoi: parsing "": invalid syntax\n')


@pytest.mark.parametrize("value", ["abc", "1.5", "", "0x10", "1e3"])
def test_status_with_unparsable_max_wait_secs_is_400(server: Running, value: str) -> None:
    name = server.trial()
    code, body, _ = server.request("GET", f"/status/{name}?maxWaitSecs={value}")
    expected = f'unable to parse maxWaitSecs: strconv.Atoi: parsing "{value}": invalid syntax\n'
    assert (code, body) == (400, expected.encode())


def test_status_with_other_query_parameters_is_400(server: Running) -> None:
    name = server.trial()
    code, body, _ = server.request("GET", f"/status/{name}?maxWaitSecs=0&verbose=1")
    assert (code, body) == (400, b"unexpected query parameters: verbose=1\n")


def test_status_is_compact_json_ending_in_newline(server: Running) -> None:
    name = server.trial()
    assert server.copier is not None
    server.copier.started.acquire(timeout=10)
    code, body, _ = server.request("GET", f"/status/{name}?maxWaitSecs=0")
    assert code == 200 and body.endswith(b"}\n") and b": " not in body and b", " not in body
    status = json.loads(body)
    assert status["state"] == "running"
    assert status["status"] == "unknown status"
    assert status["commandStatus"]["progress"] == 42
    assert "startTime" in status and "endTime" not in status


def test_pending_status_form(tls: object, workflow_key: Path, token: str) -> None:
    with running_server(tls=tls, key=workflow_key, token=token, max_running=1) as srv:  # type: ignore[arg-type]
        first = srv.trial()
        assert srv.copier is not None and srv.copier.started.acquire(timeout=10)
        second = srv.trial()
        code, body, _ = srv.request("GET", f"/status/{second}?maxWaitSecs=0")
        assert (code, body) == (200, b'{"state":"pending","status":"unknown status"}\n')
        assert srv.request("GET", "/list")[1] == (",".join(sorted([first, second])) + "\n").encode()


def test_max_wait_secs_zero_answers_at_once_while_running(server: Running) -> None:
    name = server.trial()
    status = json.loads(server.request("GET", f"/status/{name}?maxWaitSecs=0")[1])
    assert status["state"] in ("starting", "running")


def test_max_wait_secs_positive_returns_running_state_when_time_runs_out(server: Running) -> None:
    name = server.trial()
    status = json.loads(server.request("GET", f"/status/{name}?maxWaitSecs=1")[1])
    assert status["state"] == "running"


@pytest.mark.parametrize("wait", ["-1", "30"])
def test_max_wait_secs_waits_for_completion(server: Running, wait: str) -> None:
    name = server.trial()
    assert server.copier is not None and server.copier.started.acquire(timeout=10)
    answers: list[bytes] = []
    waiter = threading.Thread(
        target=lambda: answers.append(server.request("GET", f"/status/{name}?maxWaitSecs={wait}")[1])
    )
    waiter.start()
    # The waiter is parked on the job's Condition; /hello still answers meanwhile.
    assert server.request("GET", "/hello")[1] == b"hello back at ya\n"
    server.copier.release.set()
    waiter.join(20)
    status = json.loads(answers[0])
    assert (status["state"], status["status"]) == ("completed", "success")
    assert status["commandStatus"]["progress"] == 100
    assert status["commandStatus"]["lastMessage"] == "copied by the gate"
    assert "endTime" in status


def test_failed_copy_reports_failed_with_message(server: Running) -> None:
    assert server.copier is not None
    server.copier.fail_with = "cannot open /src/x: Permission denied"
    server.copier.release.set()
    name = server.trial()
    status = json.loads(server.request("GET", f"/status/{name}?maxWaitSecs=-1")[1])
    assert (status["state"], status["status"]) == ("completed", "failed")
    assert status["message"] == "cannot open /src/x: Permission denied"


def test_dry_run_succeeds_without_copying(server: Running) -> None:
    name = server.trial(dryrun=True)
    status = json.loads(server.request("GET", f"/status/{name}?maxWaitSecs=-1")[1])
    assert (status["state"], status["status"]) == ("completed", "success")
    assert server.copier is not None and not server.copier.started.acquire(timeout=0)


def test_status_of_a_request_with_a_lone_surrogate_in_its_path_is_valid_utf8(server: Running) -> None:
    raw = b'{"computeName": "c", "sourcePath": "/src/\\udcff", "destinationPath": "/d"}'
    code, data, _ = server.request("POST", "/trial", raw)
    assert code == 200, data
    assert server.copier is not None and server.copier.started.acquire(timeout=10)
    code, body, _ = server.request("GET", f"/status/{data[5:-1].decode()}?maxWaitSecs=0")
    assert code == 200 and body.endswith(b"\n")
    assert "/src/\ufffd" in json.loads(body.decode("utf-8"))["commandStatus"]["command"]


def test_cancel_running_job(server: Running) -> None:
    name = server.trial()
    code, body, _ = server.request("DELETE", f"/cancel/{name}")
    assert (code, body) == (200, b"")
    status = json.loads(server.request("GET", f"/status/{name}?maxWaitSecs=-1")[1])
    assert (status["state"], status["status"]) == ("completed", "cancelled")
    assert server.request("GET", "/list")[1] == b""


def test_cancel_finished_job_is_a_200_no_op(server: Running) -> None:
    name = server.trial(dryrun=True)
    server.request("GET", f"/status/{name}?maxWaitSecs=-1")
    assert server.request("DELETE", f"/cancel/{name}")[:2] == (200, b"")
    status = json.loads(server.request("GET", f"/status/{name}?maxWaitSecs=0")[1])
    assert status["status"] == "success"


def test_cancel_unknown_job_is_404(server: Running) -> None:
    code, body, _ = server.request("DELETE", "/cancel/rabbit-0--nnf-copy-offload-node-77")
    assert (code, body) == (404, b"unable to cancel request: request not found\n")


def test_shutdown_refused_while_requests_in_progress(server: Running) -> None:
    server.trial()
    code, body, _ = server.request("POST", "/shutdown")
    assert (code, body) == (409, b"unable to shutdown server: requests in progress\n")
    assert server.request("GET", "/hello")[0] == 200


def test_shutdown_answers_then_stops(server: Running) -> None:
    code, body, _ = server.request("POST", "/shutdown")
    assert (code, body) == (200, b"Server shutting down\n")
    assert server.server.wait(10)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/nope",
        "/hello/x",
        "/trial/",
        "/statusx/a",
    ],
)
def test_other_paths_are_404(server: Running, path: str) -> None:
    code, body, _ = server.request("GET", path)
    assert (code, body) == (404, b"404 page not found\n")


@pytest.mark.parametrize("name", ["..%2F..%2Fetc", "%00", "a%2Fb", "..%2F"])
def test_traversal_in_job_names_never_matches(server: Running, name: str) -> None:
    server.trial()
    code, body, _ = server.request("GET", f"/status/{name}?maxWaitSecs=0")
    assert (code, body) == (404, b"request not found\n")


@pytest.mark.parametrize(("name", "location"), [("..", "/"), (".", "/status/"), ("../../etc", "/etc")])
def test_dot_segments_in_job_names_are_redirected_never_matched(
    server: Running, name: str, location: str
) -> None:
    server.trial()
    code, _, resp = server.request("GET", f"/status/{name}?maxWaitSecs=0")
    assert (code, resp.getheader("Location")) == (307, location + "?maxWaitSecs=0")


def test_keep_alive_serves_many_requests_on_one_connection(server: Running) -> None:
    conn = server.connect()
    for _ in range(20):
        code, body, resp = server.request("GET", "/hello", conn=conn)
        assert (code, body) == (200, b"hello back at ya\n")
        assert not resp.will_close
    sock = conn.sock
    server.request("GET", "/list", conn=conn)
    assert conn.sock is sock


def test_huge_body_is_refused_with_413(server: Running) -> None:
    code, body, _ = server.request("POST", "/trial", b"x" * (2 * 1024 * 1024))
    assert code == 413
    assert body == b"request body too large (limit 1048576 bytes)\n"
    assert server.request("GET", "/hello")[0] == 200
