"""The HTTP side: a small Kubernetes API server over TLS on loopback.

Serves discovery (/api, /api/v1, /apis, /apis/<group>[/<version>], /version), and for every resource
type: get, list (label and field selectors), watch (?watch=1, chunked JSON lines, from a
resourceVersion), create, update (resourceVersion checked, 409 on conflict), patch (JSON merge patch,
strategic merge read as merge, JSON patch), delete (finalizers leave a deletionTimestamp), and the
`/status` subresource where the CRD has one. kubectl's Table requests get printer columns.

Test-only endpoints under /standin/: the request log, fault injection, driving test-driver entries.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from .admission import WorkflowWebhook
from .controller import Controller, set_driver
from .resources import (
    DWS_GROUP,
    Resource,
    admit_schema,
    api_group,
    api_group_list,
    api_resource_list,
    as_table,
    load_resources,
)
from .store import ApiError, Obj, Store

log = logging.getLogger("dws_standin.server")

_GROUP_PATH = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)(?:/namespaces/(?P<ns>[^/]+))?"
    r"/(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$"
)
_CORE_PATH = re.compile(
    r"^/api/(?P<version>v1)(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$"
)
MERGE_TYPES = ("application/merge-patch+json", "application/strategic-merge-patch+json")
JSON_PATCH = "application/json-patch+json"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class StandIn:
    """The whole stand-in: store, webhook, controller, HTTP server."""

    def __init__(
        self,
        crd_dir: Path,
        token: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: tuple[Path, Path] | None = None,
        rulesets: list[Path] | None = None,
        controller_delay: float = 0.0,
        computes: list[str] | None = None,
    ) -> None:
        self.resources = load_resources(crd_dir)
        self.token = token
        self.store = Store()
        self.webhook = WorkflowWebhook(self.store)
        self.controller = Controller(self.store, self.webhook, delay=controller_delay)
        self.request_log: list[Obj] = []
        self.touch_after_get: dict[str, int] = {}
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._seed(rulesets or [], computes or [])
        self.httpd = ThreadingHTTPServer((host, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.standin = self  # type: ignore[attr-defined]
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])

    def _seed(self, rulesets: list[Path], computes: list[str]) -> None:
        for ns in ("default", "dws-system"):
            self.store.create(
                "namespaces",
                "",
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": ns},
                    "status": {"phase": "Active"},
                },
                "namespaces",
            )
        for path in rulesets:
            for doc in yaml.safe_load_all(path.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "DWDirectiveRule":
                    doc["apiVersion"] = f"{DWS_GROUP}/v1alpha7"
                    doc["metadata"] = {"name": doc["metadata"]["name"]}
                    self.store.create("dwdirectiverules", "dws-system", doc, "dwdirectiverules")
        hosts = computes or ["localhost"]
        half = max(1, (len(hosts) + 1) // 2)
        groups = [hosts[:half], hosts[half:]] if len(hosts) > 1 else [hosts]
        self.store.create(
            "systemconfigurations",
            "default",
            {
                "apiVersion": f"{DWS_GROUP}/v1alpha7",
                "kind": "SystemConfiguration",
                "metadata": {"name": "default"},
                "spec": {
                    "storageNodes": [
                        {
                            "type": "Rabbit",
                            "name": f"rabbit-{i}",
                            "computesAccess": [{"name": h, "index": j} for j, h in enumerate(group)],
                        }
                        for i, group in enumerate(groups)
                    ]
                },
            },
            "systemconfigurations",
        )

    def serve_forever(self) -> None:
        self.controller.start()
        try:
            self.httpd.serve_forever(poll_interval=0.2)
        finally:
            self.stopping.set()
            self.controller.stop()

    def shutdown(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()

    def record(self, entry: Obj) -> None:
        with self._lock:
            self.request_log.append(entry)

    # --- resource operations -----------------------------------------------------------------
    def resource(self, group: str, version: str, plural: str) -> Resource:
        res = self.resources.get((group, plural))
        if res is None or version not in res.versions:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return res

    def present(self, res: Resource, version: str, obj: Obj) -> Obj:
        obj["apiVersion"] = res.api_version(version)
        obj["kind"] = res.kind
        return obj

    def get(self, res: Resource, version: str, ns: str, name: str) -> Obj:
        obj = self.store.get(res.plural, ns, name)
        if obj is None:
            raise ApiError(
                404, "NotFound", f'{res.name} "{name}" not found', {"name": name, "kind": res.plural}
            )
        key = f"{res.plural}/{ns}/{name}"
        with self._lock:
            pending = self.touch_after_get.get(key, 0)
            if pending:
                self.touch_after_get[key] = pending - 1
        if pending:
            self.store.touch(res.plural, ns, name)  # a concurrent writer, right after our reader
        return self.present(res, version, obj)

    def list(self, res: Resource, version: str, ns: str | None, query: dict[str, str]) -> Obj:
        items, rv = self.store.list(
            res.plural, ns, query.get("labelSelector", ""), query.get("fieldSelector", "")
        )
        return {
            "apiVersion": res.api_version(version),
            "kind": f"{res.kind}List",
            "metadata": {"resourceVersion": str(rv)},
            "items": [self.present(res, version, o) for o in items],
        }

    def create(self, res: Resource, version: str, ns: str, body: Obj) -> Obj:
        obj = self._normalize(res, version, ns, body)
        if res.status_subresource:
            obj.pop("status", None)
        admit_schema(res, version, obj)
        if res.plural == "workflows":
            self.webhook.on_create(obj)
        return self.present(res, version, self.store.create(res.plural, ns, obj, res.name))

    def update(self, res: Resource, version: str, ns: str, name: str, body: Obj, sub: str | None) -> Obj:
        new = self._normalize(res, version, ns, body)
        if new["metadata"].get("name", name) != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        new["metadata"]["name"] = name
        return self._write(res, version, ns, name, new, sub)

    def patch(
        self, res: Resource, version: str, ns: str, name: str, body: Any, content_type: str, sub: str | None
    ) -> Obj:
        for _attempt in range(10):
            old = self.store.get(res.plural, ns, name)
            if old is None:
                raise ApiError(
                    404, "NotFound", f'{res.name} "{name}" not found', {"name": name, "kind": res.plural}
                )
            if content_type in MERGE_TYPES:
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
                new = merge_patch(old, body)
            elif content_type == JSON_PATCH:
                new = _json_patch(old, body)
            else:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format: {content_type}",
                )
            meta = new.setdefault("metadata", {})
            pinned = isinstance(body, dict) and "resourceVersion" in (body.get("metadata") or {})
            if not pinned:
                meta["resourceVersion"] = old["metadata"]["resourceVersion"]
            try:
                return self._write(res, version, ns, name, new, sub)
            except ApiError as exc:
                if exc.code != 409 or pinned or exc.reason != "Conflict":
                    raise
        raise ApiError(409, "Conflict", f'{res.name} "{name}": too many concurrent writers')

    def _write(self, res: Resource, version: str, ns: str, name: str, new: Obj, sub: str | None) -> Obj:
        old = self.store.get(res.plural, ns, name)
        if old is None:
            raise ApiError(
                404, "NotFound", f'{res.name} "{name}" not found', {"name": name, "kind": res.plural}
            )
        if sub == "status":
            if not res.status_subresource:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            status = new.get("status")
            new = copy.deepcopy(old)
            new["status"] = status
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        elif sub:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        elif res.status_subresource:
            new["status"] = old.get("status")
            if new["status"] is None:
                new.pop("status")
        if (
            res.plural == "secrets"
            and old.get("immutable")
            and (new.get("data") != old.get("data") or new.get("immutable") is not True)
        ):
            raise ApiError(
                422,
                "Invalid",
                f'Secret "{name}" is invalid: data: Forbidden: field is immutable when `immutable` is set',
            )
        admit_schema(res, version, new)
        if res.plural == "workflows" and not old["metadata"].get("deletionTimestamp"):
            self.webhook.on_update(old, new)
        return self.present(res, version, self.store.update(res.plural, ns, name, new, res.name))

    def delete(self, res: Resource, version: str, ns: str, name: str) -> Obj:
        obj = self.store.delete(res.plural, ns, name, res.name)
        return self.present(res, version, obj)

    def _normalize(self, res: Resource, version: str, ns: str, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if res.namespaced:
            if meta.get("namespace") and meta["namespace"] != ns:
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            meta["namespace"] = ns
        obj["apiVersion"] = res.api_version(version)
        obj["kind"] = res.kind
        if res.plural == "secrets" and "stringData" in obj:
            import base64

            data = obj.setdefault("data", {})
            for key, value in (obj.pop("stringData") or {}).items():
                data[key] = base64.b64encode(str(value).encode()).decode("ascii")
        return obj


def _json_patch(old: Obj, body: Any) -> Obj:
    try:
        import jsonpatch
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise ApiError(415, "UnsupportedMediaType", "JSON patch needs the jsonpatch package") from exc
    if not isinstance(body, list):
        raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
    try:
        result = jsonpatch.apply_patch(old, body)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise ApiError(
            422, "Invalid", f"the server rejected our request due to an error in our request: {exc}"
        ) from exc
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise ApiError(
            422, "Invalid", f"the server rejected our request due to an error in our request: {exc}"
        ) from exc
    if not isinstance(result, dict):
        raise ApiError(422, "Invalid", "the patched object is not an object")
    return result


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dws-standin/1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without NODELAY, delayed ACKs cost 40 ms each.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def standin(self) -> StandIn:
        return self.server.standin  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # --- plumbing ----------------------------------------------------------------------------
    def _send_json(self, code: int, body: Any) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            try:
                return yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise ApiError(400, "BadRequest", f"cannot decode the request body: {exc}") from exc

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        body: Any = None
        code = 500
        try:
            body = self._body()
            if path not in ("/healthz", "/readyz", "/livez") and not self._authorized():
                raise ApiError(401, "Unauthorized", "Unauthorized")
            code = self._route(method, path, query, body)
        except ApiError as exc:
            code = exc.code
            self._send_json(exc.code, exc.status())
        except (BrokenPipeError, ConnectionResetError):
            return
        except Exception as exc:
            log.exception("%s %s", method, self.path)
            code = 500
            self._send_json(500, ApiError(500, "InternalError", f"stand-in error: {exc!r}").status())
        finally:
            if method != "GET" and not path.startswith("/standin"):
                self.standin.record(
                    {
                        "method": method,
                        "path": path,
                        "query": query,
                        "contentType": (self.headers.get("Content-Type") or "").split(";")[0].strip(),
                        "body": body,
                        "code": code,
                    }
                )

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization") or ""
        return header == f"Bearer {self.standin.token}"

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> int:
        if path in ("/healthz", "/readyz", "/livez"):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            return 200
        if path.startswith("/standin"):
            return self._admin(method, path, body)
        if path in ("/version", "/api", "/apis", "/api/v1") or re.fullmatch(r"/apis(/[^/]+){1,2}", path):
            discovery = self._discovery(path)
            if discovery is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            self._send_json(200, discovery)
            return 200
        match = _GROUP_PATH.match(path)
        group = match.group("group") if match else ""
        if match is None:
            match = _CORE_PATH.match(path)
        if match is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return self._resource(method, group, match.groupdict(), query, body)

    def _discovery(self, path: str) -> Obj | None:
        s = self.standin
        if path == "/version":
            return {
                "major": "1",
                "minor": "30",
                "gitVersion": "v1.30.0-dws-standin",
                "gitCommit": "0",
                "gitTreeState": "clean",
                "buildDate": "2024-01-01T00:00:00Z",
                "goVersion": "go1.22",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        if path == "/api":
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{s.port}"}
                ],
            }
        if path == "/apis":
            return api_group_list(s.resources)
        if path == "/api/v1":
            return api_resource_list(s.resources, "", "v1")
        parts = path.split("/")[2:]
        if len(parts) == 1:
            return api_group(s.resources, parts[0])
        return api_resource_list(s.resources, parts[0], parts[1])

    def _resource(
        self, method: str, group: str, parts: dict[str, str | None], query: dict[str, str], body: Any
    ) -> int:
        s = self.standin
        version, plural = str(parts["version"]), str(parts["plural"])
        ns, name, sub = parts.get("ns"), parts.get("name"), parts.get("sub")
        res = s.resource(group, version, plural)
        if not res.namespaced:
            if ns is not None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            scope = ""
        else:
            if ns is None and (name is not None or method != "GET"):
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            scope = ns or ""
        if method == "GET" and name is None:
            if query.get("watch") in ("1", "true"):
                self._watch(res, version, ns if res.namespaced else "", query)
                return 200
            result = s.list(res, version, ns if res.namespaced else None, query)
            if self._wants_table():
                result = as_table(res, version, result["items"], result["metadata"]["resourceVersion"])
            self._send_json(200, result)
            return 200
        if method == "GET":
            assert name is not None
            obj = s.get(res, version, scope, name)
            self._send_json(
                200,
                as_table(res, version, [obj], obj["metadata"]["resourceVersion"])
                if self._wants_table()
                else obj,
            )
            return 200
        if method == "POST" and name is None:
            self._send_json(201, s.create(res, version, scope, body))
            return 201
        if name is None:
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on a collection")
        if method == "PUT":
            self._send_json(200, s.update(res, version, scope, name, body, sub))
            return 200
        if method == "PATCH":
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            self._send_json(200, s.patch(res, version, scope, name, body, content_type, sub))
            return 200
        if method == "DELETE":
            self._send_json(200, s.delete(res, version, scope, name))
            return 200
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")

    def _wants_table(self) -> bool:
        return "as=Table" in (self.headers.get("Accept") or "")

    def _watch(self, res: Resource, version: str, ns: str | None, query: dict[str, str]) -> None:
        s = self.standin
        since_text = query.get("resourceVersion", "")
        since = int(since_text) if since_text.isdigit() and since_text != "0" else None
        timeout = min(float(query.get("timeoutSeconds") or 300), 1800.0)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(payload: Obj) -> None:
            data = json.dumps(payload, separators=(",", ":")).encode() + b"\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        try:
            try:
                events = s.store.watch(
                    res.plural,
                    ns if res.namespaced else None,
                    since,
                    query.get("labelSelector", ""),
                    query.get("fieldSelector", ""),
                    timeout,
                    s.stopping,
                )
                for event in events:
                    if event is None:
                        continue
                    chunk({"type": event.type, "object": s.present(res, version, event.obj)})
            except ApiError as exc:
                chunk({"type": "ERROR", "object": exc.status()})
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.close_connection = True

    # --- test-only endpoints -------------------------------------------------------------------
    def _admin(self, method: str, path: str, body: Any) -> int:
        s = self.standin
        parts = path.strip("/").split("/")
        if parts == ["standin", "requests"]:
            if method == "DELETE":
                with s._lock:
                    s.request_log.clear()
                self._send_json(200, {})
            else:
                with s._lock:
                    self._send_json(200, list(s.request_log))
            return 200
        if parts == ["standin", "faults"] and method == "POST":
            # {"touchAfterGet": "workflows/<ns>/<name>", "count": 1}: the next GET(s) of that object are
            # followed by a concurrent write, so a PUT built from what was read gets 409.
            key = str((body or {}).get("touchAfterGet", ""))
            with s._lock:
                s.touch_after_get[key] = int((body or {}).get("count", 1))
            self._send_json(200, {"touchAfterGet": key})
            return 200
        if len(parts) == 4 and parts[:2] == ["standin", "drivers"] and method == "POST":
            # {"state": "DataIn", "action": "complete"|"error", "message": "...", "severity": "Major"}
            request = body or {}
            obj = set_driver(
                s.store,
                parts[2],
                parts[3],
                str(request.get("state", "")),
                str(request.get("action", "complete")),
                str(request.get("message", "")),
                str(request.get("severity", "")),
            )
            self._send_json(200, obj)
            return 200
        raise ApiError(404, "NotFound", f"no stand-in endpoint {method} {path}")
