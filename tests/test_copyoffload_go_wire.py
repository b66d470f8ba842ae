"""Copy-offload answers byte for byte as upstream's Go server does (issue 12.4, DESIGN Part 11).

Expected texts are Go's: encoding/json's scanner and decoder, golang-jwt v5's errors, net/http's
ServeMux redirects and content sniffing, net/url's query encoding, time.Time/Duration formatting.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import re
import socket
import time
from pathlib import Path

import pytest

from copyoffload import tokens
from copyoffload.gofmt import go_duration, go_quote, go_time
from copyoffload.gojson import GoJsonError, decode_first, unmarshal
from tests.test_copyoffload_support import Running, raw_exchange, running_server

pytest_plugins = ["tests.test_copyoffload_support"]

DECODE = "unable to decode data movement request body: "


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(key: Path, header: bytes, claims: bytes) -> str:
    """A token with exactly these header and claims bytes, HS256-signed with the workflow key."""
    signing_input = f"{b64(header)}.{b64(claims)}"
    mac = hmac.new(tokens.secret_from_pem(key.read_bytes()), signing_input.encode(), hashlib.sha256)
    return f"{signing_input}.{b64(mac.digest())}"


def hello_with(server: Running, authorization: str) -> tuple[int, bytes]:
    code, body, _ = server.request("GET", "/hello", token=authorization)
    return code, body


# --- request bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"computeName" "c"}', "invalid character '\"' after object key"),
        (b'{"computeName": "c",}', "invalid character '}' looking for beginning of object key string"),
        (b'{"computeName": "c" "x"}', "invalid character '\"' after object key:value pair"),
        (b"[1 2]", "invalid character '2' after array element"),
        (b'{"dryrun": tru}', "invalid character '}' in literal true (expecting 'e')"),
        (b'{"slots": 1.}', "invalid character '}' after decimal point in numeric literal"),
        (b'{"slots": -}', "invalid character '}' in numeric literal"),
        (b'{"computeName": "a\\q"}', "invalid character 'q' in string escape code"),
        (b'{"computeName": "a\tb"}', "invalid character '\\t' in string literal"),
        (b"\xff", "invalid character '\u00ff' looking for beginning of value"),
        (b"'x'", "invalid character '\\'' looking for beginning of value"),
        (b'{"computeName": ', "unexpected EOF"),
        (b"   ", "EOF"),
        (
            b'{"slots": 1.5}',
            "json: cannot unmarshal number 1.5 into Go struct field DMRequest.slots of type int32",
        ),
        (
            b'{"slots": 1e3}',
            "json: cannot unmarshal number 1e3 into Go struct field DMRequest.slots of type int32",
        ),
        (
            b'{"maxSlots": 4294967296}',
            "json: cannot unmarshal number 4294967296 into Go struct field DMRequest.maxSlots of type int32",
        ),
    ],
)
def test_trial_body_errors_are_go_encoding_json_texts(server: Running, raw: bytes, reason: str) -> None:
    code, body, _ = server.request("POST", "/trial", raw)
    assert (code, body) == (400, (DECODE + reason + "\n").encode())


def test_invalid_utf8_in_a_path_becomes_u_fffd_and_the_request_proceeds(server: Running) -> None:
    raw = b'{"computeName": "c", "sourcePath": "/src/a\xffb\xe2\x82", "destinationPath": "/d"}'
    code, body, _ = server.request("POST", "/trial", raw)
    assert code == 200 and body.startswith(b"name=")
    name = body[5:-1].decode()
    status = server.request("GET", f"/status/{name}?maxWaitSecs=0")[1]
    assert "/src/a\ufffdb\ufffd\ufffd" in json.loads(status)["commandStatus"]["command"]


def test_trailing_data_after_the_first_value_is_ignored_as_by_a_go_decoder(server: Running) -> None:
    raw = b'{"computeName": "c", "sourcePath": "/a", "destinationPath": "/b"} trailing garbage'
    assert server.request("POST", "/trial", raw)[0] == 200


def test_json_unmarshal_and_decoder_differ_at_the_end_as_in_go() -> None:
    with pytest.raises(GoJsonError, match=r"^unexpected end of JSON input$"):
        unmarshal(b'{"a": 1')
    with pytest.raises(GoJsonError, match=r"^invalid character 'x' after top-level value$"):
        unmarshal(b"{} x")
    with pytest.raises(GoJsonError, match=r"^invalid character ' ' in literal null \(expecting 'l'\)$"):
        unmarshal(b"nul")
    assert decode_first(b"{} x") == {}
    with pytest.raises(GoJsonError, match=r"^unexpected EOF$"):
        decode_first(b"nul")


# --- tokens ---------------------------------------------------------------------------------------


MALFORMED = "token is malformed: "
UNVERIFIABLE = "token is unverifiable: "
BAD_BASE64 = "illegal base64 data at input byte "


def bearer(header: bytes, claims: bytes, signature: str = "sig") -> str:
    return f"Bearer {b64(header)}.{b64(claims)}.{signature}"


def test_token_error_texts_are_golang_jwt_v5s(server: Running, workflow_key: Path, token: str) -> None:
    good = b'{"alg":"HS256","typ":"JWT"}'
    claims = b'{"sub":"user-container"}'
    cases = {
        "Bearer a.b": MALFORMED + "token contains an invalid number of segments",
        "Bearer a.b.c.d": MALFORMED + "token contains an invalid number of segments",
        "Bearer !x.e30.sig": MALFORMED + "could not base64 decode header: " + BAD_BASE64 + "0",
        "Bearer eyJ=.e30.sig": MALFORMED + "could not base64 decode header: " + BAD_BASE64 + "3",
        "Bearer e.e30.sig": MALFORMED + "could not base64 decode header: " + BAD_BASE64 + "0",
        bearer(b"{", b"{}"): MALFORMED + "could not JSON decode header: unexpected end of JSON input",
        bearer(b"[]", b"{}"): MALFORMED
        + "could not JSON decode header: json: cannot unmarshal array into Go value of type "
        + "map[string]interface {}",
        bearer(b"{}x", b"{}"): MALFORMED
        + "could not JSON decode header: invalid character 'x' after top-level value",
        bearer(good, b"[1]"): MALFORMED
        + "could not JSON decode claim: json: cannot unmarshal array into Go value of type jwt.MapClaims",
        f"Bearer {b64(good)}.!.sig": MALFORMED + "could not base64 decode claim: " + BAD_BASE64 + "0",
        bearer(b"{}", claims): UNVERIFIABLE + "signing method (alg) is unspecified",
        bearer(b'{"alg":7}', claims): UNVERIFIABLE + "signing method (alg) is unspecified",
        bearer(b'{"alg":"XS1"}', claims): UNVERIFIABLE + "signing method (alg) is unavailable",
        bearer(good, claims, "a="): MALFORMED + "could not base64 decode signature: " + BAD_BASE64 + "1",
        bearer(b'{"alg":"HS512"}', claims, "!"): MALFORMED
        + "could not base64 decode signature: "
        + BAD_BASE64
        + "0",
        "Bearer " + signed(workflow_key, good, b'{"sub":"user-container","exp":"soon"}'): (
            "token has invalid claims: invalid type for claim: exp is invalid"
        ),
        "Bearer " + signed(workflow_key, good, b'{"exp":null}'): (
            "token has invalid claims: invalid type for claim: exp is invalid"
        ),
        "Bearer " + signed(workflow_key, good, b'{"exp":1,"nbf":99999999999}'): (
            "token has invalid claims: token is expired, token is not valid yet"
        ),
        "bearer " + token: MALFORMED + "could not base64 decode header: " + BAD_BASE64 + "6",
    }
    for authorization, reason in cases.items():
        expected = (401, f"token parse failed: {reason}\n".encode())
        assert hello_with(server, authorization) == expected, authorization


def test_zero_exp_counts_as_no_exp_and_null_claims_as_none(server: Running, workflow_key: Path) -> None:
    header = b'{"alg":"HS256"}'
    for claims in (b'{"sub":"user-container","exp":0}', b"null"):
        assert hello_with(server, "Bearer " + signed(workflow_key, header, claims)) == (
            200,
            b"hello back at ya\n",
        )


# --- status query, names, redirects, content type --------------------------------------------------


@pytest.mark.parametrize(
    ("query", "reply"),
    [
        ("maxWaitSecs=0&b=2&a=1&a=0", "unexpected query parameters: a=1&a=0&b=2"),
        ("b=x%20y+z&maxWaitSecs=1", "unexpected query parameters: b=x+y+z"),
        ("maxWaitSecs=0&k%C3%A9=%2F%3F", "unexpected query parameters: k%C3%A9=%2F%3F"),
        ("zzz=1&maxWaitSecs=abc", 'unable to parse maxWaitSecs: strconv.Atoi: parsing "abc": invalid syntax'),
        ("maxWaitSecs=%FF", 'unable to parse maxWaitSecs: strconv.Atoi: parsing "\\xff": invalid syntax'),
        ("maxWaitSecs=a%0Ab", 'unable to parse maxWaitSecs: strconv.Atoi: parsing "a\\nb": invalid syntax'),
        (
            "maxWaitSecs=99999999999999999999",
            'unable to parse maxWaitSecs: strconv.Atoi: parsing "99999999999999999999": value out of range',
        ),
        ("maxWaitSecs=0&bad%zz=1", None),  # an undecodable pair is dropped, as Request.URL.Query() does
        ("maxWaitSecs=0;x=1", 'unable to parse maxWaitSecs: strconv.Atoi: parsing "": invalid syntax'),
    ],
)
def test_status_query_rules_are_gos(server: Running, query: str, reply: str | None) -> None:
    name = server.trial()
    code, body, _ = server.request("GET", f"/status/{name}?{query}")
    if reply is None:
        assert code == 200
    else:
        assert (code, body) == (400, (reply + "\n").encode())


def test_request_name_is_the_last_path_element(server: Running) -> None:
    name = server.trial()
    code, body, _ = server.request("GET", f"/status/any/thing/{name}?maxWaitSecs=0")
    assert code == 200 and json.loads(body)["state"] in ("starting", "running")
    assert server.request("DELETE", f"/cancel/x/{name}/")[:2] == (200, b"")
    assert json.loads(server.request("GET", f"/status/{name}?maxWaitSecs=-1")[1])["status"] == "cancelled"


def head_and_body(reply: bytes) -> tuple[list[bytes], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    return [lines[0], *sorted(line for line in lines[1:] if not line.startswith(b"Date: "))], body


def test_get_status_without_slash_gets_gos_307(server: Running, token: str) -> None:
    reply = raw_exchange(
        server.port, b"GET /status?maxWaitSecs=0 HTTP/1.1\r\nHost: x\r\n\r\n", tls=server.tls
    )
    body = b'<a href="/status/?maxWaitSecs=0">Temporary Redirect</a>.\n\n'
    assert head_and_body(reply) == (
        [
            b"HTTP/1.1 307 Temporary Redirect",
            b"Content-Length: %d" % len(body),
            b"Content-Type: text/html; charset=utf-8",
            b"Location: /status/?maxWaitSecs=0",
        ],
        body,
    )


@pytest.mark.parametrize(
    ("request_line", "location"),
    [
        (b"DELETE /cancel HTTP/1.1", b"/cancel/"),
        (b"GET //hello HTTP/1.1", b"/hello"),
        (b"POST //trial HTTP/1.1", b"/trial"),
        (b"GET /status/a/../../list HTTP/1.1", b"/list"),
    ],
)
def test_paths_go_would_clean_are_307_redirects(
    server: Running, request_line: bytes, location: bytes
) -> None:
    reply = raw_exchange(
        server.port, request_line + b"\r\nHost: x\r\nContent-Length: 0\r\n\r\n", tls=server.tls
    )
    lines, _ = head_and_body(reply)
    assert lines[0] == b"HTTP/1.1 307 Temporary Redirect"
    assert b"Location: " + location in lines
    if not request_line.startswith(b"GET"):
        assert lines == [b"HTTP/1.1 307 Temporary Redirect", b"Content-Length: 0", b"Location: " + location]


def test_status_reply_is_sniffed_text_plain(server: Running) -> None:
    name = server.trial()
    code, body, resp = server.request("GET", f"/status/{name}?maxWaitSecs=0")
    assert code == 200 and body.startswith(b"{") and body.endswith(b"}\n")
    assert resp.getheader("Content-Type") == "text/plain; charset=utf-8"
    assert resp.getheader("X-Content-Type-Options") is None


GO_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{1,6})? [+-]\d{4} \S+")


def test_status_times_are_go_time_strings_and_durations(server: Running) -> None:
    name = server.trial()
    assert server.copier is not None
    server.copier.started.acquire(timeout=10)
    time.sleep(0.02)
    server.copier.release.set()
    status = json.loads(server.request("GET", f"/status/{name}?maxWaitSecs=-1")[1])
    assert GO_TIME.fullmatch(status["startTime"]) and GO_TIME.fullmatch(status["endTime"])
    assert GO_TIME.fullmatch(status["commandStatus"]["lastMessageTime"])
    assert re.fullmatch(r"[1-9]\d*ms|\d+(\.\d{1,3})?s", status["commandStatus"]["elapsedTime"])


def test_go_time_and_quote_formats() -> None:
    cdt = dt.timezone(dt.timedelta(hours=-5), "CDT")
    assert (
        go_time(dt.datetime(2025, 4, 1, 11, 46, 36, 535519, tzinfo=cdt))
        == "2025-04-01 11:46:36.535519 -0500 CDT"
    )
    assert (
        go_time(dt.datetime(2025, 4, 1, 11, 46, 36, 500000, tzinfo=cdt)) == "2025-04-01 11:46:36.5 -0500 CDT"
    )
    assert go_time(dt.datetime(2025, 4, 1, 0, 0, 0, tzinfo=dt.UTC)) == "2025-04-01 00:00:00 +0000 UTC"
    assert go_duration(0.0745) == "74ms" and go_duration(300) == "5m0s"
    assert go_quote(b'a"\\\x01\x7f\xff\xc3\xa9\xe2\x80\xa8') == '"a\\"\\\\\\x01\\x7f\\xffé\\u2028"'


# --- the body is never read before the token is checked (11.4) -------------------------------------


def test_unauthenticated_body_is_refused_before_it_is_sent(server: Running) -> None:
    """Only the header is sent: the 401 must come without waiting for the 1 MiB the header announces."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        assert server.tls is not None
        from tests.test_copyoffload_support import client_context

        sock = client_context(server.tls).wrap_socket(raw, server_hostname="localhost")
        sock.sendall(
            b"POST /trial HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nAccepts-version: 1.0\r\n"
            b"Content-Length: 1048576\r\n\r\n"
        )
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert reply.endswith(
        b"\r\n\r\ntoken parse failed: token is malformed: token contains an invalid number of segments\n"
    )
    assert b"Connection: close" in reply


def test_authenticated_body_is_still_read(tls: object, workflow_key: Path, token: str) -> None:
    with running_server(tls=None, key=workflow_key, token=token) as srv:
        assert srv.trial()
