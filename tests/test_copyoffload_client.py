# ruff: noqa: F811  (pytest fixtures are imported from test_copyoffload_support by name)
"""The client library against our server over real TLS: every call, error mapping, server discovery."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from copyoffload import certs
from copyoffload.client import (
    CopyOffloadClient,
    CopyOffloadConfigError,
    CopyOffloadConnectionError,
    CopyOffloadError,
    JobStatus,
    discover_host,
    discover_port,
)
from tests.test_copyoffload_support import (  # noqa: F401  (fixtures)
    Running,
    Tls,
    running_server,
    server,
    tls,
    token,
    workflow_key,
)


def client_for(srv: Running, host: str = "127.0.0.1", **kw: object) -> CopyOffloadClient:
    assert srv.tls is not None
    return CopyOffloadClient(host, srv.port, token=srv.token, cert=str(srv.tls.cert), **kw)  # type: ignore[arg-type]


def test_hello(server: Running) -> None:
    with client_for(server) as co:
        assert co.hello() == "hello back at ya"


def test_copy_list_status_cancel(server: Running) -> None:
    with client_for(server) as co:
        name = co.copy("/src", "/dest", profile="serial", slots=2, max_slots=4, compute_name="cn1")
        assert co.list() == [name]
        assert server.copier is not None and server.copier.started.acquire(timeout=10)
        st = co.status(name)
        assert isinstance(st, JobStatus)
        assert (st.state, st.status, st.progress) == ("running", "unknown status", 42)
        assert st.start_time and not st.end_time and not st.finished
        co.cancel(name)
        st = co.status(name, max_wait_secs=-1)
        assert (st.state, st.status, st.finished, st.succeeded) == ("completed", "cancelled", True, False)
        assert co.list() == []


def test_status_waits_server_side_until_done(server: Running) -> None:
    with client_for(server) as co:
        name = co.copy("/a", "/b")
        assert server.copier is not None and server.copier.started.acquire(timeout=10)
        threading.Timer(0.2, server.copier.release.set).start()
        st = co.wait(name)
        assert st.succeeded and st.progress == 100 and st.command_status.last_message == "copied by the gate"


def test_dry_run(server: Running) -> None:
    with client_for(server) as co:
        st = co.wait(co.copy("/a", "/b", dry_run=True))
        assert st.succeeded


def test_copy_sends_upstream_client_fields(server: Running) -> None:
    with client_for(server) as co:
        name = co.copy("/a", "/b")
    job = server.server.table._jobs[name]
    assert job.request.compute_name == socket.gethostname()
    assert (job.request.log_stdout, job.request.store_stdout, job.request.dcp_options) == (True, False, "")
    assert (job.request.slots, job.request.max_slots) == (-1, -1)


def test_errors_carry_http_code_and_server_message(server: Running) -> None:
    with client_for(server) as co:
        with pytest.raises(CopyOffloadError) as err:
            co.status("nope")
        assert (err.value.code, err.value.message) == (404, "request not found")
        with pytest.raises(CopyOffloadError) as err:
            co.cancel("nope")
        assert (err.value.code, err.value.message) == (404, "unable to cancel request: request not found")
        with pytest.raises(CopyOffloadError) as err:
            co.copy("", "/b")
        assert (err.value.code, err.value.message) == (400, "source path must be supplied")
        co.copy("/a", "/b")
        with pytest.raises(CopyOffloadError) as err:
            co.shutdown()
        assert err.value.code == 409


def test_bad_token_is_401(server: Running) -> None:
    assert server.tls is not None
    with CopyOffloadClient("127.0.0.1", server.port, token="x.y.z", cert=str(server.tls.cert)) as co:
        with pytest.raises(CopyOffloadError) as err:
            co.hello()
        assert err.value.code == 401 and err.value.message.startswith("token parse failed: ")


def test_shutdown(server: Running) -> None:
    with client_for(server) as co:
        assert co.shutdown() == "Server shutting down"
    assert server.server.wait(10)


def test_refused_connection_is_a_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        CopyOffloadClient("127.0.0.1", port, token="t", skip_tls=True) as co,
        pytest.raises(CopyOffloadConnectionError),
    ):
        co.hello()


def test_host_name_is_verified_against_the_certificate_san(
    tmp_path: Path, workflow_key: Path, token: str
) -> None:
    cert, key = certs.make_site_certificate(tmp_path, ["localhost"])  # no IP SAN
    with running_server(tls=Tls(cert, key), key=workflow_key, token=token) as srv:
        with CopyOffloadClient("localhost", srv.port, token=token, cert=str(cert)) as co:
            assert co.hello() == "hello back at ya"
        co = CopyOffloadClient("127.0.0.1", srv.port, token=token, cert=str(cert))
        with co, pytest.raises(CopyOffloadConnectionError, match="TLS verification failed"):
            co.hello()


def test_missing_ca_certificate_is_a_config_error(server: Running, tmp_path: Path) -> None:
    co = CopyOffloadClient("127.0.0.1", server.port, token="t", cert=str(tmp_path / "none.pem"))
    with co, pytest.raises(CopyOffloadConfigError):
        co.hello()


def test_skip_tls_client_talks_to_plain_server(workflow_key: Path, token: str) -> None:
    with (
        running_server(tls=None, key=workflow_key, token=token) as srv,
        CopyOffloadClient("127.0.0.1", srv.port, token=token, skip_tls=True) as co,
    ):
        assert co.hello() == "hello back at ya"


def test_keep_alive_connection_is_reused(server: Running) -> None:
    with client_for(server) as co:
        co.hello()
        first = co._conn.sock if co._conn else None
        co.list()
        assert first is not None and co._conn is not None and co._conn.sock is first


def test_discovery_prefers_nnf_container_launcher(tmp_path: Path) -> None:
    conf = tmp_path / "local-rabbit.conf"
    conf.write_text("rabbit-7\n")
    assert discover_host({"NNF_CONTAINER_LAUNCHER": "rabbit-3"}, str(conf)) == "rabbit-3"
    assert discover_host({}, str(conf)) == "rabbit-7"
    assert discover_host({}, str(tmp_path / "missing")) == "local-rabbit"


def test_discovery_port_is_first_of_nnf_container_ports() -> None:
    assert discover_port({"NNF_CONTAINER_PORTS": "5001,5002"}) == 5001
    with pytest.raises(CopyOffloadConfigError):
        discover_port({})
    with pytest.raises(CopyOffloadConfigError):
        discover_port({"NNF_CONTAINER_PORTS": "http"})


def test_client_reads_everything_from_the_environment(server: Running, tmp_path: Path) -> None:
    assert server.tls is not None and server.token
    conf = tmp_path / "local-rabbit.conf"
    conf.write_text("127.0.0.1\n")
    env = {
        "NNF_CONTAINER_PORTS": f"{server.port},9",
        "DW_WORKFLOW_TOKEN": server.token,
        "COPY_OFFLOAD_CERT": str(server.tls.cert),
    }
    with CopyOffloadClient(environ=env, local_rabbit_conf=str(conf)) as co:
        assert (co.host, co.port) == ("127.0.0.1", server.port)
        assert co.hello() == "hello back at ya"


def test_copy_names_the_workflow_from_the_given_environment(
    server: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert server.tls is not None and server.token
    monkeypatch.setenv("DW_WORKFLOW_NAME", "from-the-process")
    env = {"DW_WORKFLOW_NAME": "bb7", "DW_WORKFLOW_NAMESPACE": "ns"}
    with CopyOffloadClient(
        "127.0.0.1", server.port, token=server.token, cert=str(server.tls.cert), environ=env
    ) as co:
        name = co.copy("/a", "/b", dry_run=True)
    request = server.server.table._jobs[name].request
    assert (request.workflow_name, request.workflow_namespace) == ("bb7", "ns")


def test_default_ca_path_is_the_compute_node_certificate() -> None:
    co = CopyOffloadClient("h", 1, environ={})
    assert co.cert == "/etc/nnf-dm-usercontainer/cert.pem"


def test_client_module_imports_only_the_standard_library() -> None:
    code = (
        "import sys, copyoffload.client; "
        "heavy = ('jwt', 'cryptography', 'yaml', 'copyoffload'); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy "
        "and m not in ('copyoffload', 'copyoffload.client')); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
