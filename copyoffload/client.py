"""Client for the copy-offload server (the calls of upstream's libcopyoffload), standard library only.

It runs inside users' jobs, so it imports nothing beyond the standard library. It finds its server the
way libcopyoffload does::

    host  = $NNF_CONTAINER_LAUNCHER, else the contents of /etc/local-rabbit.conf, else "local-rabbit"
    port  = first entry of $NNF_CONTAINER_PORTS (a comma list)
    token = $DW_WORKFLOW_TOKEN
    CA    = $COPY_OFFLOAD_CERT, else /etc/nnf-dm-usercontainer/cert.pem

Every one of these can be overridden by an argument. Example::

    from copyoffload.client import CopyOffloadClient
    with CopyOffloadClient() as co:
        job = co.copy("/mnt/job/out", "/lus/project/out")
        st = co.status(job, max_wait_secs=-1)      # wait until it is done
        print(st.state, st.status, st.progress)
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

API_VERSION = "1.0"
DEFAULT_CERT = "/etc/nnf-dm-usercontainer/cert.pem"
LOCAL_RABBIT_CONF = "/etc/local-rabbit.conf"
DEFAULT_HOST = "local-rabbit"


class CopyOffloadError(Exception):
    """The server answered with an error: ``code`` is the HTTP status, ``message`` its text (no newline)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class CopyOffloadConnectionError(Exception):
    """The server could not be reached (refused, DNS, TLS verification, timeout, broken connection)."""


class CopyOffloadConfigError(Exception):
    """Not enough information to find or authenticate to a server (e.g. no port)."""


@dataclass(frozen=True)
class CommandStatus:
    command: str = ""
    progress: int = 0
    elapsed_time: str = ""
    last_message: str = ""
    last_message_time: str = ""


@dataclass(frozen=True)
class JobStatus:
    """The v1.0 status of a request; fields absent on the wire are empty."""

    state: str = ""
    status: str = ""
    message: str = ""
    start_time: str = ""
    end_time: str = ""
    command_status: CommandStatus = field(default_factory=CommandStatus)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def finished(self) -> bool:
        return self.state == "completed"

    @property
    def succeeded(self) -> bool:
        return self.state == "completed" and self.status == "success"

    @property
    def progress(self) -> int:
        return self.command_status.progress

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> JobStatus:
        cs = body.get("commandStatus") or {}
        return cls(
            state=str(body.get("state", "")),
            status=str(body.get("status", "")),
            message=str(body.get("message", "")),
            start_time=str(body.get("startTime", "")),
            end_time=str(body.get("endTime", "")),
            command_status=CommandStatus(
                command=str(cs.get("command", "")),
                progress=int(cs.get("progress", 0) or 0),
                elapsed_time=str(cs.get("elapsedTime", "")),
                last_message=str(cs.get("lastMessage", "")),
                last_message_time=str(cs.get("lastMessageTime", "")),
            ),
            raw=body,
        )


def discover_host(environ: Mapping[str, str] | None = None, conf_path: str = LOCAL_RABBIT_CONF) -> str:
    env = os.environ if environ is None else environ
    host = env.get("NNF_CONTAINER_LAUNCHER", "").strip()
    if host:
        return host
    try:
        with open(conf_path, encoding="utf-8") as f:
            host = f.read().strip()
    except OSError:
        host = ""
    return host or DEFAULT_HOST


def discover_port(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    ports = env.get("NNF_CONTAINER_PORTS", "").strip()
    first = ports.split(",")[0].strip() if ports else ""
    if not first:
        raise CopyOffloadConfigError(
            "no server port: NNF_CONTAINER_PORTS is not set (is this job using copy-offload?)"
        )
    if not first.isdigit() or not 0 < int(first) < 65536:
        raise CopyOffloadConfigError(f"NNF_CONTAINER_PORTS does not start with a port number: {ports!r}")
    return int(first)


class CopyOffloadClient:
    """One keep-alive connection to one server; thread-safe (calls are serialised)."""

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        token: str | None = None,
        cert: str | None = None,
        skip_tls: bool = False,
        timeout: float = 30.0,
        environ: Mapping[str, str] | None = None,
        local_rabbit_conf: str = LOCAL_RABBIT_CONF,
    ) -> None:
        env = os.environ if environ is None else environ
        self.host = host or discover_host(env, local_rabbit_conf)
        self.port = port if port is not None else discover_port(env)
        self.token = token if token is not None else env.get("DW_WORKFLOW_TOKEN") or None
        self.cert = cert or env.get("COPY_OFFLOAD_CERT") or DEFAULT_CERT
        self.skip_tls = skip_tls
        self.timeout = timeout
        self._environ = env
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None

    def __enter__(self) -> CopyOffloadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'http' if self.skip_tls else 'https'}://{host}:{self.port}"

    # -- the API ---------------------------------------------------------------------------------

    def hello(self) -> str:
        """The server's greeting (``hello back at ya``)."""
        return self._call("GET", "/hello").rstrip("\n")

    def copy(
        self,
        source: str,
        dest: str,
        *,
        profile: str = "",
        slots: int = -1,
        max_slots: int = -1,
        dry_run: bool = False,
        compute_name: str | None = None,
    ) -> str:
        """Start copying ``source`` to ``dest`` on the server; return the request's job name."""
        body = {
            "computeName": compute_name or socket.gethostname(),
            "sourcePath": source,
            "destinationPath": dest,
            "dmProfile": profile,
            "dryrun": bool(dry_run),
            "dcpOptions": "",
            "logStdout": True,
            "storeStdout": False,
            "slots": int(slots),
            "maxSlots": int(max_slots),
        }
        workflow = self._environ.get("DW_WORKFLOW_NAME")
        if workflow:
            body["workflowName"] = workflow
            body["workflowNamespace"] = self._environ.get("DW_WORKFLOW_NAMESPACE", "default")
        text = self._call("POST", "/trial", json.dumps(body).encode("utf-8"), "application/json")
        _, sep, name = text.strip().partition("=")
        if not sep or not name:
            raise CopyOffloadError(200, f"unexpected reply to copy: {text!r}")
        return name

    def list(self) -> list[str]:
        """Names of the requests that have not finished, sorted."""
        text = self._call("GET", "/list").strip()
        return text.split(",") if text else []

    def status(self, job: str, max_wait_secs: int = 0) -> JobStatus:
        """Status of a request; wait up to ``max_wait_secs`` for it to finish (negative: until it does)."""
        wait = int(max_wait_secs)
        timeout: float | None = None if wait < 0 else self.timeout + wait
        text = self._call("GET", f"/status/{quote(job, safe='')}?maxWaitSecs={wait}", timeout=timeout)
        try:
            body = json.loads(text)
        except ValueError:
            raise CopyOffloadError(200, f"status reply is not JSON: {text[:200]!r}") from None
        if not isinstance(body, dict):
            raise CopyOffloadError(200, f"status reply is not a JSON object: {text[:200]!r}")
        return JobStatus.from_wire(body)

    def wait(self, job: str, timeout: float | None = None) -> JobStatus:
        """Wait (server-side, no polling) until the request is finished or ``timeout`` seconds pass."""
        return self.status(job, -1 if timeout is None else max(1, int(timeout)))

    def cancel(self, job: str) -> None:
        """Cancel a request (a finished one is left as it is)."""
        self._call("DELETE", "/cancel/{}".format(quote(job, safe="")))

    def shutdown(self) -> str:
        """Ask the server to stop (refused with 409 while requests are in progress)."""
        return self._call("POST", "/shutdown").rstrip("\n")

    # -- plumbing --------------------------------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            try:
                ctx = ssl.create_default_context(cafile=self.cert)
            except (OSError, ssl.SSLError) as exc:
                raise CopyOffloadConfigError(f"cannot load the CA certificate {self.cert}: {exc}") from None
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.check_hostname = True
            ctx.set_alpn_protocols(["http/1.1"])
            self._ssl = ctx
        return self._ssl

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.skip_tls:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            else:
                self._conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=timeout, context=self._context()
                )
        else:
            self._conn.timeout = timeout
            if self._conn.sock is not None:
                self._conn.sock.settimeout(timeout)
        return self._conn

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accepts-version": API_VERSION}
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def _call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        *,
        timeout: float | str | None = "default",
    ) -> str:
        effective: float | None = self.timeout if timeout == "default" else timeout  # type: ignore[assignment]
        with self._lock:
            for attempt in (1, 2):
                conn = self._connection(effective)
                reused = conn.sock is not None
                try:
                    conn.request(method, path, body=body, headers=self._headers(content_type))
                    response = conn.getresponse()
                    data = response.read()
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                    conn.close()
                    self._conn = None
                    if reused and attempt == 1 and method != "POST":
                        continue  # the server closed an idle keep-alive connection; try once more
                    raise CopyOffloadConnectionError(f"{self.base_url}: {exc}") from None
                except ssl.SSLCertVerificationError as exc:
                    self._drop()
                    raise CopyOffloadConnectionError(
                        f"{self.base_url}: TLS verification failed ({exc.verify_message or exc}); "
                        f"check the CA certificate {self.cert}"
                    ) from None
                except (OSError, http.client.HTTPException) as exc:
                    self._drop()
                    raise CopyOffloadConnectionError(f"{self.base_url}: {exc}") from None
                if response.will_close:
                    self._drop()
                text = data.decode("utf-8", "replace")
                if response.status == 200 or (response.status == 204 and method == "DELETE"):
                    return text
                raise CopyOffloadError(response.status, text.rstrip("\n") or response.reason)
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
