# ruff: noqa: F811  (pytest fixtures are imported from test_copyoffload_support by name)
"""The `copyoffload` command: client commands, exit codes, secrets and token tools."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from cryptography import x509

from copyoffload import tokens
from copyoffload.cli import main
from tests.test_copyoffload_support import (  # noqa: F401  (fixtures)
    WORKFLOW,
    Running,
    server,
    tls,
    token,
    workflow_key,
)


def conn_args(srv: Running) -> list[str]:
    assert srv.tls is not None and srv.token
    return ["--host", "127.0.0.1", "--port", str(srv.port), "--cert", str(srv.tls.cert), "--token", srv.token]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_teaches_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "examples" in out and "exit codes" in out and "copyoffload copy" in out


def test_no_command_is_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert run([], capsys)[0] == 2
    assert run(["copy"], capsys)[0] == 2


def test_hello(server: Running, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["hello", *conn_args(server)], capsys)[:2] == (0, "hello back at ya\n")


def test_copy_prints_name_and_list_shows_it(server: Running, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["copy", "/a", "/b", *conn_args(server)], capsys)
    name = out.strip()
    assert code == 0 and name.startswith("rabbit-0--nnf-copy-offload-node-")
    assert run(["list", *conn_args(server)], capsys)[1] == name + "\n"
    assert json.loads(run(["list", "--json", *conn_args(server)], capsys)[1]) == [name]


def test_copy_wait_prints_plain_progress_lines_when_not_a_tty(
    server: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["copy", "/a", "/b", "--dry-run", "--wait", *conn_args(server)], capsys)
    lines = out.splitlines()
    assert code == 0
    assert lines[-1] == f"{lines[0]}: success" and "completed 100%" in lines


def test_copy_wait_exit_1_when_copy_fails(server: Running, capsys: pytest.CaptureFixture[str]) -> None:
    assert server.copier is not None
    server.copier.fail_with = "cannot open /a: No such file or directory"
    server.copier.release.set()
    code, out, _ = run(["copy", "/a", "/b", "--wait", *conn_args(server)], capsys)
    assert code == 1 and out.splitlines()[-1].endswith("failed (cannot open /a: No such file or directory)")


def test_status_json_is_the_server_json(server: Running, capsys: pytest.CaptureFixture[str]) -> None:
    name = server.trial(dryrun=True)
    code, out, _ = run(["status", name, "--wait", "-1", "--json", *conn_args(server)], capsys)
    assert code == 0
    body = json.loads(out)
    assert (body["state"], body["status"]) == ("completed", "success")


def test_status_human_readable(server: Running, capsys: pytest.CaptureFixture[str]) -> None:
    name = server.trial()
    code, out, _ = run(["status", name, *conn_args(server)], capsys)
    assert code == 0 and "state: " in out and "status: unknown status" in out


def test_cancel_then_status_exit_1_for_cancelled(server: Running, capsys: pytest.CaptureFixture[str]) -> None:
    name = server.trial()
    assert run(["cancel", name, *conn_args(server)], capsys)[0] == 0
    assert run(["status", name, "--wait", "-1", *conn_args(server)], capsys)[0] == 1


def test_not_found_exits_3(server: Running, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["cancel", "nope", *conn_args(server)], capsys)
    assert code == 3 and "unable to cancel request: request not found" in err


def test_auth_refused_exits_4(server: Running, capsys: pytest.CaptureFixture[str]) -> None:
    args = conn_args(server)
    args[-1] = tokens.mint_token(tokens.new_workflow_key())
    code, _, err = run(["hello", *args], capsys)
    assert code == 4 and "token parse failed" in err


def test_cannot_connect_exits_5(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run(
        ["hello", "--host", "127.0.0.1", "--port", str(port), "--skip-tls", "--token", "t"], capsys
    )
    assert code == 5 and "cannot connect" in err


def test_shutdown(server: Running, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["shutdown", *conn_args(server)], capsys)[:2] == (0, "Server shutting down\n")


def test_token_new_key_and_mint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "wf.pem"
    assert run(["token", "new-key", str(key)], capsys)[0] == 0
    assert key.stat().st_mode & 0o777 == 0o600
    assert run(["token", "new-key", str(key)], capsys)[0] == 1  # never overwrites
    code, out, _ = run(["token", "mint", str(key), "--workflow", WORKFLOW], capsys)
    claims = tokens.verify_token(out.strip(), key.read_bytes(), WORKFLOW)
    assert code == 0 and claims["sub"] == "user-container" and claims["wf"] == WORKFLOW


SYSTEM_CONFIGURATION = """\
apiVersion: dataworkflowservices.github.io/v1alpha7
kind: SystemConfiguration
metadata: {name: default, namespace: default}
spec:
  storageNodes:
    - {type: Rabbit, name: rabbit-0}
    - {type: Rabbit, name: rabbit-1}
    - {type: Other, name: not-a-rabbit}
"""


def test_mk_secrets_from_systemconfiguration_with_kubernetes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    sc = tmp_path / "sc.yaml"
    sc.write_text(SYSTEM_CONFIGURATION)
    out_dir = tmp_path / "out"
    argv = ["mk-secrets", "--out", str(out_dir), "--from-systemconfiguration", str(sc), "--san", "127.0.0.1"]
    code, _, _ = run([*argv, "--san", "localhost", "--kubernetes"], capsys)
    assert code == 0
    cert = x509.load_pem_x509_certificate((out_dir / "cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["rabbit-0", "rabbit-1", "localhost"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert cert.subject.rfc4514_string() == "CN=rabbit-0"
    assert 364 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 366
    assert (out_dir / "key.pem").stat().st_mode & 0o777 == 0o600
    server_secret = yaml.safe_load((out_dir / "nnf-dm-usercontainer-server-tls.yaml").read_text())
    client_secret = yaml.safe_load((out_dir / "nnf-dm-usercontainer-client-tls.yaml").read_text())
    assert server_secret["type"] == "kubernetes.io/tls" and set(server_secret["data"]) == {
        "tls.crt",
        "tls.key",
    }
    assert client_secret["metadata"]["name"] == "nnf-dm-usercontainer-client-tls"
    assert set(client_secret["data"]) == {"tls.crt"}


def test_mk_secrets_without_names_is_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["mk-secrets", "--out", str(tmp_path)], capsys)[0] == 2


def test_server_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["server", "--addr", "127.0.0.1:0", "--skip-tls", "--tokenkey", "/nonexistent", "--uid", "0"])
    assert code == 2


def test_server_help_lists_upstream_flags(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["server", "--help"], capsys)
    assert code == 0
    for flag in (
        "--addr",
        "--cert",
        "--cakey",
        "--tokenkey",
        "--skip-tls",
        "--skip-token",
        "--mock",
        "--ready-file",
    ):
        assert flag in out
