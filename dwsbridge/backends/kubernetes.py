"""The Kubernetes backend: real DWS on a real cluster, through the official `kubernetes` client.

Importing this module is cheap: the client library is imported when a backend is constructed, so the
Slurm hooks that run inside slurmctld (job_process, pools, paths) never pay for it.

What a WLM owes DWS, and where this backend does it (DESIGN Part 2):

- create: the Workflow carries our labels and the WLM's finalizer (`workflow.build_workflow`).
- before Setup: every DirectiveBreakdown the Workflow lists is read and the Servers object it
  references gets `spec.allocationSets`, planned from the SystemConfiguration's compute-to-Rabbit
  map (`plan_allocation_sets`). Already-filled Servers are left alone, so a retried Setup is safe.
- before PreRun: the Computes object must name the job's nodes. The WLM calls `set_computes`; if it
  has not, the Computes are filled with this host's name (a single-node or test site) and a warning.
- advancing: one merge patch of `spec.desiredState` (with `spec.hurry` for a hurried Teardown, in the
  same patch). The API server's webhook judges it; its refusal reaches the caller word for word as
  AdmissionError.
- waiting: a watch from the object's resourceVersion; on any watch failure, polling with backoff.
  `workflow.is_state_complete` decides, so the old state's stale `ready` is never mistaken. Error is
  final at once; TransientCondition only after `config.transient_timeout`.
- teardown: re-read, drop our finalizer with an update that carries the resourceVersion (retried on
  409), then delete. Nothing is remembered between calls: a restarted bridge reads it all back.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dwsbridge.backends.base import Pool
from dwsbridge.config import DEFAULT_KUBECONFIG, Config
from dwsbridge.errors import (
    AdmissionError,
    Cancelled,
    ConfigError,
    DwsBridgeError,
    WorkflowNotFound,
    WorkflowTimeout,
)
from dwsbridge.workflow import (
    GROUP,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    PLURAL,
    PRE_RUN,
    SERVED_VERSIONS,
    SETUP,
    finalizer,
    is_failed,
    is_state_complete,
)

log = logging.getLogger("dwsbridge.kubernetes")

DEFAULT_POOL_SIZE = 1 << 50  # 1 PiB: DWS, not Slurm, decides what fits; see docs/kubernetes.md
SYSTEM_CONFIGURATION = ("default", "default")  # (namespace, name), as DWS installs it
WATCH_SLICE = 30.0  # seconds one watch request may last before it is renewed
DELETE_WAIT = 30.0  # seconds delete() waits for the controller to let the Workflow go


@dataclass(frozen=True)
class _Kind:
    plural: str
    kind: str


COMPUTES = _Kind("computes", "Computes")
BREAKDOWNS = _Kind("directivebreakdowns", "DirectiveBreakdown")
SERVERS = _Kind("servers", "Servers")
SYSTEM_CONFIGURATIONS = _Kind("systemconfigurations", "SystemConfiguration")


def kubeconfig_path(config: Config) -> str | None:
    """config.kubeconfig, else $KUBECONFIG, else /etc/slurm/slurm-dws.kubeconfig when it exists;
    None means in-cluster credentials."""
    if config.kubeconfig is not None:
        return str(config.kubeconfig)
    if os.environ.get("KUBECONFIG"):
        return os.environ["KUBECONFIG"]
    if DEFAULT_KUBECONFIG.exists():
        return str(DEFAULT_KUBECONFIG)
    return None


def _connect(config: Config) -> Any:
    from kubernetes import client
    from kubernetes import config as kube_config

    configuration = client.Configuration()
    path = kubeconfig_path(config)
    try:
        if path is not None:
            kube_config.load_kube_config(
                config_file=path, client_configuration=configuration, persist_config=False
            )
        else:
            kube_config.load_incluster_config(client_configuration=configuration)
    except kube_config.ConfigException as exc:
        where = f"kubeconfig {path}" if path else "in-cluster service account"
        raise ConfigError(
            f"cannot configure the Kubernetes client from the {where}: {exc} "
            f"(set kubeconfig in the dwsbridge config, $KUBECONFIG, or install {DEFAULT_KUBECONFIG})"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read kubeconfig {path}: {exc.strerror or exc}") from exc
    configuration.retries = 2
    return client.ApiClient(configuration)


def _status_message(exc: Any) -> str:
    """The API server's own message from an ApiException's Status body."""
    body = getattr(exc, "body", None)
    if body:
        try:
            message = json.loads(body).get("message")
        except (ValueError, AttributeError):
            message = None
        if message:
            return str(message)
        return str(body).strip()
    return str(getattr(exc, "reason", "") or exc)


class KubernetesBackend:
    """Workflows in DWS. Every method reads the cluster; nothing is cached but the API version."""

    name = "kubernetes"
    # status.env is complete only once PreRun is (DWS's driver sets DW_JOB_* then); see env_known_at.
    env_known_at = PRE_RUN

    def __init__(self, config: Config, *, api_client: Any = None) -> None:
        self.config = config
        self.namespace = config.namespace
        self._given_client = api_client
        self._clients: tuple[Any, Any, type[Exception]] | None = None
        self._version: str | None = None

    def _connected(self) -> tuple[Any, Any, type[Exception]]:
        """(ApiClient, CustomObjectsApi, ApiException), made on first use: pools() and a backend that
        is built but not used never import the client. CoreV1Api is never imported: it builds ~250
        models and costs most of a second per hook."""
        if self._clients is None:
            from kubernetes import client
            from kubernetes.client.exceptions import ApiException

            api = self._given_client if self._given_client is not None else _connect(self.config)
            self._clients = (api, client.CustomObjectsApi(api), ApiException)
        return self._clients

    @property
    def _api_client(self) -> Any:
        return self._connected()[0]

    @property
    def _custom(self) -> Any:
        return self._connected()[1]

    @property
    def _ApiException(self) -> type[Exception]:
        return self._connected()[2]

    # --- plumbing ----------------------------------------------------------------------------
    @property
    def version(self) -> str:
        """The served Workflow version: v1alpha7 if the cluster has it, else v1alpha6."""
        if self._version is None:
            for version in SERVED_VERSIONS:
                try:
                    resources = self._call(self._custom.get_api_resources, GROUP, version)
                except WorkflowNotFound:
                    continue
                names = {getattr(r, "name", None) for r in (getattr(resources, "resources", None) or [])}
                if PLURAL in names:
                    self._version = version
                    break
            else:
                raise DwsBridgeError(
                    f"DWS is not installed on this cluster: no {PLURAL}.{GROUP} in any of "
                    f"{', '.join(SERVED_VERSIONS)}"
                )
            log.debug("using %s/%s", GROUP, self._version)
        return self._version

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one client call; translate the API server's answers into our error types."""
        try:
            return fn(*args, **kwargs)
        except self._ApiException as exc:
            raise self._translate(exc) from exc
        except DwsBridgeError:
            raise
        except Exception as exc:  # urllib3 connection errors and the like
            host = getattr(getattr(self._api_client, "configuration", None), "host", "?")
            raise DwsBridgeError(f"cannot reach the Kubernetes API at {host}: {exc}") from exc

    def _translate(self, exc: Any) -> DwsBridgeError:
        status = getattr(exc, "status", None)
        message = _status_message(exc)
        if status == 404:
            return WorkflowNotFound(message)
        if status in (403, 422) or (status == 409 and "already exists" in message):
            return AdmissionError(message)  # the webhook's (or RBAC's, or the schema's) words, unchanged
        if status == 409:
            return _Conflict(message)
        if status == 401:
            return DwsBridgeError(f"the Kubernetes API refused our credentials: {message}")
        return DwsBridgeError(f"Kubernetes API error {status}: {message}")

    def _get_object(self, kind: _Kind, name: str, namespace: str | None = None) -> dict[str, Any]:
        return dict(
            self._call(
                self._custom.get_namespaced_custom_object,
                GROUP,
                self.version,
                namespace or self.namespace,
                kind.plural,
                name,
            )
        )

    def _patch_object(
        self, kind: _Kind, name: str, patch: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        return dict(
            self._call(
                self._custom.patch_namespaced_custom_object,
                GROUP,
                self.version,
                namespace or self.namespace,
                kind.plural,
                name,
                patch,
            )
        )

    # --- create / read -----------------------------------------------------------------------
    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        body = dict(obj)
        body["apiVersion"] = f"{GROUP}/{self.version}"
        namespace = body["metadata"].get("namespace") or self.namespace
        created = self._call(
            self._custom.create_namespaced_custom_object, GROUP, self.version, namespace, PLURAL, body
        )
        log.info(
            "workflow=%s created in namespace %s (%s)", body["metadata"]["name"], namespace, self.version
        )
        return dict(created)

    def get(self, name: str) -> dict[str, Any]:
        try:
            return self._get_object(_WORKFLOWS, name)
        except WorkflowNotFound:
            raise WorkflowNotFound(f"workflow {name} not found in namespace {self.namespace}") from None

    def find(self, name: str) -> dict[str, Any] | None:
        try:
            return self.get(name)
        except WorkflowNotFound:
            return None

    # --- state changes -----------------------------------------------------------------------
    def update_desired_state(self, name: str, state: str, *, hurry: bool = False) -> dict[str, Any]:
        """One merge patch of desiredState (and hurry). Before Setup the Servers are filled, before
        PreRun the Computes are checked: DWS fails those states otherwise."""
        if state == SETUP:
            self.fill_servers(name)
        elif state == PRE_RUN:
            self._ensure_computes(name)
        spec: dict[str, Any] = {"desiredState": state}
        if hurry:
            spec["hurry"] = True
        obj = self._patch_object(_WORKFLOWS, name, {"spec": spec})
        log.info("workflow=%s job=%s desiredState=%s hurry=%s", name, obj["spec"].get("jobID"), state, hurry)
        return obj

    def wait_for(
        self, name: str, state: str, *, timeout: float, cancel: threading.Event | None = None
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        transient_since: float | None = None
        quick = cancel is not None

        def tick() -> float:
            """How long one watch request may block before we look at the clock again."""
            return 1.0 if quick or transient_since is not None else WATCH_SLICE

        for obj in self._updates(name, deadline, tick):
            spec, status = obj.get("spec") or {}, obj.get("status") or {}
            if is_state_complete(obj, state) or is_failed(obj):
                return obj
            if spec.get("desiredState") != state:
                return obj  # someone moved on (a hurried teardown): let the caller judge
            if status.get("status") == "TransientCondition" and status.get("state") == state:
                now = time.monotonic()
                transient_since = transient_since if transient_since is not None else now
                if now - transient_since >= self.config.transient_timeout:
                    return _transient_expired(obj, self.config.transient_timeout)
            else:
                transient_since = None
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"stopped waiting for workflow {name} to reach {state}")
            if time.monotonic() >= deadline:
                detail = f"state {status.get('state', '?')}, status {status.get('status', '?')}"
                if status.get("message"):
                    detail += f": {status['message']}"
                raise WorkflowTimeout(name, state, timeout, detail)
        raise WorkflowNotFound(f"workflow {name} was deleted while waiting for {state}")

    def _updates(self, name: str, deadline: float, tick: Callable[[], float]) -> Iterator[dict[str, Any]]:
        """The Workflow now, then each new version of it, until it is deleted. Also yields (possibly
        the same object) whenever a watch slice ends, so the caller can check deadline and cancel."""
        obj = self.get(name)
        yield obj
        poll_delay = 0.05
        watching = True
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                yield obj
                continue
            slice_seconds = min(remaining, tick())
            if watching:
                try:
                    for event_type, new in self._watch(name, obj, slice_seconds):
                        if event_type == "DELETED":
                            return
                        obj = new
                        yield obj
                    yield obj
                    continue
                except _WatchGone:
                    obj = self.get(name)
                    yield obj
                    continue
                except (DwsBridgeError, OSError, ValueError) as exc:
                    if isinstance(exc, WorkflowNotFound):
                        return
                    log.warning("workflow=%s watch failed (%s); polling instead", name, exc)
                    watching = False
            time.sleep(min(poll_delay, max(0.0, remaining)))
            poll_delay = min(poll_delay * 2, 2.0)
            found = self.find(name)
            if found is None:
                return
            obj = found
            yield obj

    def _watch(self, name: str, obj: dict[str, Any], seconds: float) -> Iterator[tuple[str, dict[str, Any]]]:
        from kubernetes import watch

        rv = (obj.get("metadata") or {}).get("resourceVersion")
        stream = watch.Watch().stream(
            self._custom.list_namespaced_custom_object,
            GROUP,
            self.version,
            self.namespace,
            PLURAL,
            field_selector=f"metadata.name={name}",
            resource_version=rv,
            timeout_seconds=max(1, math.ceil(seconds)),
            _request_timeout=(10, seconds + 10),
        )
        try:
            for event in stream:
                event_type = event.get("type")
                new = event.get("object")
                if event_type == "ERROR":
                    code = (event.get("raw_object") or {}).get("code")
                    if code == 410:
                        raise _WatchGone()
                    raise DwsBridgeError(f"watch error: {event.get('raw_object')}")
                if event_type in ("ADDED", "MODIFIED", "DELETED") and isinstance(new, dict):
                    yield str(event_type), dict(new)
        except self._ApiException as exc:
            if getattr(exc, "status", None) == 410:
                raise _WatchGone() from exc
            raise self._translate(exc) from exc

    def delete(self, name: str) -> None:
        """Drop our finalizer (re-reading first, retrying on conflict), delete, and wait a little for
        DWS's controller to let the Workflow go. A missing Workflow is not an error."""
        for _attempt in range(10):
            obj = self.find(name)
            if obj is None:
                return
            ours = finalizer(str((obj.get("spec") or {}).get("wlmID", "")))
            finalizers = list((obj.get("metadata") or {}).get("finalizers") or [])
            if ours not in finalizers:
                break
            obj["metadata"]["finalizers"] = [f for f in finalizers if f != ours]
            try:
                self._call(
                    self._custom.replace_namespaced_custom_object,
                    GROUP,
                    self.version,
                    self.namespace,
                    PLURAL,
                    name,
                    obj,
                )
                break
            except _Conflict:
                log.info("workflow=%s changed while removing our finalizer; reading it again", name)
                continue
            except WorkflowNotFound:
                return
        else:
            raise DwsBridgeError(f"workflow {name}: could not remove finalizer {ours} (kept conflicting)")
        try:
            self._call(
                self._custom.delete_namespaced_custom_object,
                GROUP,
                self.version,
                self.namespace,
                PLURAL,
                name,
            )
        except WorkflowNotFound:
            return
        log.info("workflow=%s deleted", name)
        self._wait_gone(name, time.monotonic() + DELETE_WAIT)

    def _wait_gone(self, name: str, deadline: float) -> None:
        try:
            for _obj in self._updates(name, deadline, lambda: WATCH_SLICE):
                if time.monotonic() >= deadline:
                    log.warning("workflow=%s is still present after delete (DWS finalizers pending)", name)
                    return
        except WorkflowNotFound:
            return

    # --- the job's side ------------------------------------------------------------------------
    def read_token(self, obj: dict[str, Any]) -> str | None:
        ref = (obj.get("status") or {}).get("workflowToken") or {}
        secret_name = ref.get("secretName")
        if not secret_name:
            return None
        namespace = ref.get("secretNamespace") or self.namespace
        try:
            secret = self._call(self._get_core, f"/api/v1/namespaces/{namespace}/secrets/{secret_name}")
        except WorkflowNotFound:
            raise DwsBridgeError(
                f"workflow {obj['metadata']['name']}: token secret {namespace}/{secret_name} is missing"
            ) from None
        data = secret.get("data") or {}
        if "token" not in data:
            raise DwsBridgeError(f"token secret {namespace}/{secret_name} has no 'token' key")
        return base64.b64decode(data["token"]).decode("utf-8").strip()

    def _get_core(self, path: str) -> dict[str, Any]:
        """GET a core-API object as plain JSON, through the client's configured connection."""
        api = self._api_client
        if hasattr(api, "param_serialize"):  # kubernetes >= 32 (openapi-generator 7)
            request = api.param_serialize(
                "GET", path, header_params={"Accept": "application/json"}, auth_settings=["BearerToken"]
            )
            response = api.call_api(*request, _request_timeout=(10, 30))
            response.read()
            if not 200 <= response.status <= 299:
                raise self._ApiException.from_response(  # type: ignore[attr-defined]
                    http_resp=response, body=response.data.decode("utf-8", "replace"), data=None
                )
            return dict(json.loads(response.data))
        return dict(  # older clients
            api.call_api(
                path,
                "GET",
                header_params={"Accept": "application/json"},
                response_type="object",
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _request_timeout=(10, 30),
            )
        )

    def set_computes(self, name: str, hosts: list[str]) -> None:
        computes_name, namespace = self._computes_ref(name)
        self._patch_object(COMPUTES, computes_name, {"data": [{"name": h} for h in hosts]}, namespace)
        log.info("workflow=%s computes: %s", name, ",".join(hosts))

    def _computes_ref(self, name: str) -> tuple[str, str]:
        ref = (self.get(name).get("status") or {}).get("computes") or {}
        if not ref.get("name"):
            raise DwsBridgeError(f"workflow {name} has no Computes yet (DWS creates it during Proposal)")
        return str(ref["name"]), str(ref.get("namespace") or self.namespace)

    def _computes(self, name: str) -> list[str]:
        computes_name, namespace = self._computes_ref(name)
        computes = self._get_object(COMPUTES, computes_name, namespace)
        return [str(entry["name"]) for entry in computes.get("data") or [] if entry.get("name")]

    def _ensure_computes(self, name: str) -> None:
        """DWS fails PreRun on an empty Computes; a WLM that did not say gets this host."""
        try:
            if self._computes(name):
                return
        except WorkflowNotFound:
            return  # let the webhook speak about the missing workflow
        host = socket.gethostname()
        log.warning("workflow=%s no compute nodes were set before PreRun; using this host %s", name, host)
        self.set_computes(name, [host])

    # --- Servers (allocation) ------------------------------------------------------------------
    def fill_servers(self, name: str) -> None:
        """Fill the Servers object of every DirectiveBreakdown the Workflow lists (skipping filled ones)."""
        obj = self.get(name)
        refs = (obj.get("status") or {}).get("directiveBreakdowns") or []
        if not refs:
            return
        computes: list[str] | None = None
        rabbits: dict[str, list[str]] | None = None
        for ref in refs:
            breakdown = self._get_object(BREAKDOWNS, ref["name"], ref.get("namespace"))
            storage = (breakdown.get("status") or {}).get("storage") or {}
            sets = storage.get("allocationSets") or []
            server_ref = storage.get("reference") or {}
            if not sets or not server_ref.get("name"):
                continue  # persistentdw: the storage exists already
            servers = self._get_object(SERVERS, server_ref["name"], server_ref.get("namespace"))
            if (servers.get("spec") or {}).get("allocationSets"):
                continue
            if computes is None:
                computes = self._computes_or_local(name)
                rabbits = self._rabbit_map()
            assert rabbits is not None
            plan = plan_allocation_sets(sets, computes, rabbits)
            self._patch_object(
                SERVERS, server_ref["name"], {"spec": {"allocationSets": plan}}, server_ref.get("namespace")
            )
            log.info(
                "workflow=%s servers %s: %s",
                name,
                server_ref["name"],
                "; ".join(
                    f"{s['label']} {s['allocationSize']}B on "
                    + ",".join(f"{x['name']}x{x['allocationCount']}" for x in s["storage"])
                    for s in plan
                ),
            )

    def _computes_or_local(self, name: str) -> list[str]:
        """The job's nodes as far as known at Setup; Slurm picks nodes later, so this host stands in."""
        try:
            hosts = self._computes(name)
        except (WorkflowNotFound, DwsBridgeError):
            hosts = []
        return hosts or [socket.gethostname()]

    def _rabbit_map(self) -> dict[str, list[str]]:
        namespace, sc_name = SYSTEM_CONFIGURATION
        try:
            system = self._get_object(SYSTEM_CONFIGURATIONS, sc_name, namespace)
        except WorkflowNotFound:
            raise DwsBridgeError(
                f"no SystemConfiguration {namespace}/{sc_name}: cannot place storage on Rabbits"
            ) from None
        return rabbits_of(system)

    def pools(self) -> list[Pool]:
        size = self.config.pool_size if self.config.pool_size is not None else DEFAULT_POOL_SIZE
        return [Pool(self.config.pool_name, int(size), self.config.pool_granularity)]

    def list(self) -> list[dict[str, Any]]:
        result = self._call(
            self._custom.list_namespaced_custom_object,
            GROUP,
            self.version,
            self.namespace,
            PLURAL,
            label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}",
        )
        return [dict(item) for item in (result or {}).get("items") or []]


_WORKFLOWS = _Kind(PLURAL, "Workflow")


class _Conflict(DwsBridgeError):
    """HTTP 409: the object changed since we read it."""


class _WatchGone(Exception):
    """HTTP 410: our resourceVersion is too old to watch from."""


def _transient_expired(obj: dict[str, Any], limit: float) -> dict[str, Any]:
    out = dict(obj)
    status = dict(out.get("status") or {})
    message = status.get("message") or "a driver reported a TransientCondition"
    status["message"] = f"{message} (TransientCondition lasted more than {limit:g}s)"
    out["status"] = status
    return out


# --- allocation planning: pure functions, testable without a cluster ---------------------------------


def rabbits_of(system_configuration: Mapping[str, Any]) -> dict[str, list[str]]:
    """Rabbit name -> the compute nodes it serves, from a SystemConfiguration, in its order."""
    out: dict[str, list[str]] = {}
    for node in (system_configuration.get("spec") or {}).get("storageNodes") or []:
        if node.get("type", "Rabbit") != "Rabbit" or not node.get("name"):
            continue
        out[str(node["name"])] = [str(c["name"]) for c in node.get("computesAccess") or [] if c.get("name")]
    return out


def plan_allocation_sets(
    breakdown_sets: Sequence[Mapping[str, Any]],
    computes: Sequence[str],
    rabbits: Mapping[str, Sequence[str]],
) -> list[dict[str, Any]]:
    """Servers `spec.allocationSets` for a DirectiveBreakdown's `status.storage.allocationSets`.

    - AllocatePerCompute: every Rabbit serving a job node gets one allocation per node it serves,
      each of minimumCapacity (xfs, gfs2, raw: a file system per compute).
    - AllocateAcrossServers: minimumCapacity split evenly over `constraints.count` Rabbits (default:
      the Rabbits serving the job's nodes), one allocation each (lustre OSTs, MDTs).
    - AllocateSingleServer: one allocation of minimumCapacity on one Rabbit (a lustre MGT).
    - AllocatePerServer: one allocation of minimumCapacity on each Rabbit serving the job.
    Rabbits near the job's nodes come first; others (in SystemConfiguration order) fill a larger count.
    """
    if not rabbits:
        raise DwsBridgeError("the SystemConfiguration lists no Rabbit storage nodes")
    serving: dict[str, int] = {}
    for host in computes:
        for rabbit, hosts in rabbits.items():
            if host in hosts:
                serving[rabbit] = serving.get(rabbit, 0) + 1
                break
    if not serving:
        # Nodes not known yet (Slurm chooses them after Setup) or not attached to any Rabbit.
        first = next(iter(rabbits))
        log.warning("no Rabbit serves compute(s) %s; placing storage on %s", ",".join(computes), first)
        serving = {first: max(1, len(computes))}
    near = list(serving)
    ordered = near + [r for r in rabbits if r not in serving]
    plan: list[dict[str, Any]] = []
    for entry in breakdown_sets:
        strategy = entry.get("allocationStrategy")
        label = str(entry.get("label", ""))
        capacity = int(entry.get("minimumCapacity") or 0)
        if capacity < 1:
            raise DwsBridgeError(f"allocation set {label!r} asks for no capacity")
        count = int(((entry.get("constraints") or {}).get("count")) or 0)
        if strategy == "AllocatePerCompute":
            storage = [{"name": r, "allocationCount": serving[r]} for r in near]
            size = capacity
        elif strategy == "AllocateAcrossServers":
            chosen = ordered[: count or len(near)]
            if count and len(chosen) < count:
                raise DwsBridgeError(
                    f"allocation set {label!r} needs {count} Rabbits; only {len(chosen)} exist"
                )
            storage = [{"name": r, "allocationCount": 1} for r in chosen]
            size = math.ceil(capacity / len(chosen))
        elif strategy == "AllocateSingleServer":
            storage = [{"name": near[0], "allocationCount": 1}]
            size = capacity
        elif strategy == "AllocatePerServer":
            storage = [{"name": r, "allocationCount": 1} for r in near]
            size = capacity
        else:
            raise DwsBridgeError(f"allocation set {label!r}: unknown allocationStrategy {strategy!r}")
        plan.append({"label": label, "allocationSize": size, "storage": storage})
    return plan
