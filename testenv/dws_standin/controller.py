"""What runs behind the API server: the DWS workflow controller, a minimal nnf-sos, the dws-test-driver.

It reacts to writes like a controller does: asynchronously, from a queue, writing status with the
resourceVersion it read (a concurrent write makes it read again). So right after a WLM patches
desiredState, the old state's `ready: true` is still visible for a moment, as on a real cluster.

DWS controller: registers a driver entry per (directive, watchState) from the DWDirectiveRules, moves
status.state to spec.desiredState, sums the entries of the current state into status.status / ready /
message, honours forceReady, sets DW_WORKFLOW_NAME/NAMESPACE, creates the Computes, cleans up on
delete.

nnf-sos (driver "nnf"): a DirectiveBreakdown `<workflow>-<index>` and a Servers object per jobdw,
create_persistent and persistentdw; Setup fails if the WLM left a Servers without allocation sets,
and mints the token secrets for requires=copy-offload/user-container-auth; PreRun fails on empty
Computes and sets DW_JOB_* / DW_PERSISTENT_* / NNF_CONTAINER_*; Teardown deletes the token secrets.

dws-test-driver (driver "tester"): `#DW <State> action=complete|wait|error [message=] [severity=]`.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime
import logging
import queue
import threading
import time

from dwsbridge.config import parse_size
from dwsbridge.directives import Directive, job_env_name, parse_directive, persistent_env_name
from dwsbridge.errors import DirectiveError

from .admission import WorkflowWebhook, driver_rules
from .resources import DWS_GROUP
from .store import ApiError, Obj, Store, now_rfc3339

log = logging.getLogger("dws_standin.controller")

DWS_FINALIZER = f"finalizer.{DWS_GROUP}"
LABEL_WF_NAME = f"{DWS_GROUP}/workflow.name"
LABEL_WF_NAMESPACE = f"{DWS_GROUP}/workflow.namespace"
STORAGE_COMMANDS = ("jobdw", "create_persistent", "persistentdw")
TESTER_SEVERITY = {"Minor": "Running", "Major": "TransientCondition", "Fatal": "Error"}
MOUNT_ROOT = "/mnt/nnf"


class DriverFailure(Exception):
    def __init__(self, message: str, status: str = "Error") -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class Controller:
    def __init__(self, store: Store, webhook: WorkflowWebhook, delay: float = 0.0) -> None:
        self.store = store
        self.webhook = webhook
        self.delay = delay
        self._queue: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="dws-controller", daemon=True)
        store.add_listener(self._on_event)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)

    def _on_event(self, event_type: str, plural: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        if plural == "workflows" and event_type != "DELETED":
            self._queue.put((meta.get("namespace", ""), meta["name"]))
        elif plural in ("computes", "servers") and LABEL_WF_NAME in (meta.get("labels") or {}):
            labels = meta["labels"]
            self._queue.put(
                (labels.get(LABEL_WF_NAMESPACE, meta.get("namespace", "")), labels[LABEL_WF_NAME])
            )

    def _run(self) -> None:
        while True:
            key = self._queue.get()
            if key is None:
                return
            if self.delay:
                time.sleep(self.delay)
            for _attempt in range(5):
                try:
                    self.reconcile(*key)
                    break
                except ApiError as exc:
                    if exc.code != 409:
                        log.error("reconcile %s/%s: %s", key[0], key[1], exc.message)
                        break
                except Exception:
                    log.exception("reconcile %s/%s crashed", key[0], key[1])
                    break

    # --- the workflow controller -----------------------------------------------------------
    def reconcile(self, namespace: str, name: str) -> None:
        wf = self.store.get("workflows", namespace, name)
        if wf is None:
            return
        meta = wf["metadata"]
        if meta.get("deletionTimestamp"):
            self._finalize(wf)
            return
        before = copy.deepcopy(wf)
        if DWS_FINALIZER not in (meta.get("finalizers") or []):
            meta.setdefault("finalizers", []).append(DWS_FINALIZER)
        status = wf.setdefault("status", {})
        directives = self._directives(wf)
        if "drivers" not in status:
            self._propose(wf, directives)
        desired = wf["spec"]["desiredState"]
        if status.get("state") != desired:
            self._enter_state(status, desired)
        entries = [d for d in status["drivers"] if d["watchState"] == desired]
        if desired == "PreRun" and status.get("status") != "Error" and not self._computes_listed(wf):
            status.update(
                ready=False,
                status="Error",
                message=f"Computes {name} lists no compute nodes: the WLM must fill it before PreRun",
            )
            entries = []
        for entry in entries:
            if entry.get("completed") or entry.get("status") != "Pending":
                continue
            self._drive(wf, directives, entry)
        if entries or status.get("status") != "Error":
            self._summarize(wf, entries)
        if wf != before:
            self.store.update("workflows", namespace, name, wf, "workflows.dataworkflowservices.github.io")

    def _computes_listed(self, wf: Obj) -> bool:
        computes = self.store.get("computes", wf["metadata"]["namespace"], wf["metadata"]["name"]) or {}
        return bool(computes.get("data"))

    def _directives(self, wf: Obj) -> list[Directive | None]:
        out: list[Directive | None] = []
        for text in wf["spec"].get("dwDirectives") or []:
            try:
                out.append(parse_directive(str(text)))
            except DirectiveError:
                out.append(None)
        return out

    def _propose(self, wf: Obj, directives: list[Directive | None]) -> None:
        """Creation: driver registration, env, Computes, and nnf-sos's breakdowns."""
        meta, status = wf["metadata"], wf["status"]
        ruleset = self.webhook.ruleset()
        drivers = []
        for index, directive in enumerate(directives):
            if directive is None:
                continue
            for driver_id, states in driver_rules(ruleset, directive.command):
                for state in states:
                    drivers.append(
                        {
                            "driverID": driver_id,
                            "taskID": "",
                            "dwdIndex": index,
                            "watchState": state,
                            "lastHB": 0,
                            "completed": False,
                            "status": "Pending",
                        }
                    )
        status.update(
            state=wf["spec"]["desiredState"],
            ready=False,
            status="DriverWait",
            message="",
            drivers=drivers,
            env={"DW_WORKFLOW_NAME": meta["name"], "DW_WORKFLOW_NAMESPACE": meta["namespace"]},
            desiredStateChange=now_rfc3339(),
            readyChange=now_rfc3339(),
        )
        computes = self._child(wf, "Computes")
        computes["data"] = []
        self._ensure("computes", computes)
        status["computes"] = _ref(computes)
        refs, requires = [], []
        for index, directive in enumerate(directives):
            if directive is None or directive.command not in STORAGE_COMMANDS:
                continue
            breakdown, servers = self._breakdown(wf, index, directive)
            self._ensure("directivebreakdowns", breakdown)
            if servers is not None:
                self._ensure("servers", servers)
            refs.append(_ref(breakdown))
            for need in (directive.get("requires") or "").split(","):
                word = {"copy-offload": "copy-offload", "user-container-auth": "container-auth"}.get(need)
                if word and word not in requires:
                    requires.append(word)
        if refs:
            status["directiveBreakdowns"] = refs
        if requires:
            status["requires"] = requires

    def _enter_state(self, status: Obj, state: str) -> None:
        if status.get("desiredStateChange"):
            started = datetime.datetime.fromisoformat(status["desiredStateChange"].replace("Z", "+00:00"))
            elapsed = datetime.datetime.now(datetime.UTC) - started
            status["elapsedTimeLastState"] = f"{elapsed.total_seconds():.3f}s"
        status.update(
            state=state, ready=False, status="DriverWait", message="", desiredStateChange=now_rfc3339()
        )

    def _summarize(self, wf: Obj, entries: list[Obj]) -> None:
        status = wf["status"]
        if wf["spec"].get("forceReady"):
            for entry in entries:
                if not entry.get("completed"):
                    _complete(entry)
        failed = [e for e in entries if e.get("status") == "Error"]
        transient = [e for e in entries if e.get("status") == "TransientCondition"]
        was_ready = status.get("ready")
        if failed:
            e = failed[0]
            status.update(
                ready=False, status="Error", message=f"DW Directive {e['dwdIndex']}: {e.get('message', '')}"
            )
        elif transient:
            e = transient[0]
            status.update(
                ready=False,
                status="TransientCondition",
                message=f"DW Directive {e['dwdIndex']}: {e.get('message', '')}",
            )
        elif all(e.get("completed") for e in entries):
            status.update(ready=True, status="Completed", message="")
        else:
            status.update(ready=False, status="DriverWait", message="")
        if status.get("ready") != was_ready:
            status["readyChange"] = now_rfc3339()

    def _finalize(self, wf: Obj) -> None:
        """Delete what belongs to the workflow, then let it go."""
        meta = wf["metadata"]
        ns, name = meta["namespace"], meta["name"]
        selector = f"{LABEL_WF_NAME}={name},{LABEL_WF_NAMESPACE}={ns}"
        for plural in ("computes", "directivebreakdowns", "servers", "secrets"):
            items, _rv = self.store.list(plural, ns, selector)
            for item in items:
                with contextlib.suppress(ApiError):
                    self.store.delete(plural, ns, item["metadata"]["name"], plural)
        finalizers = meta.get("finalizers") or []
        if DWS_FINALIZER in finalizers:
            meta["finalizers"] = [f for f in finalizers if f != DWS_FINALIZER]
            self.store.update("workflows", ns, name, wf, "workflows.dataworkflowservices.github.io")

    # --- drivers ---------------------------------------------------------------------------
    def _drive(self, wf: Obj, directives: list[Directive | None], entry: Obj) -> None:
        directive = directives[entry["dwdIndex"]]
        if directive is None:
            return
        try:
            if entry["driverID"] == "tester":
                if self._tester(directive, entry):
                    _complete(entry)
                return
            self._nnf(wf, directives, entry["dwdIndex"], directive, entry["watchState"])
            _complete(entry)
        except DriverFailure as exc:
            _fail(entry, exc.message, exc.status)

    def _tester(self, directive: Directive, entry: Obj) -> bool:
        action = directive.get("action") or "complete"
        if action == "complete":
            return True
        if action == "wait":
            entry["status"] = "DriverWait"
            return False
        if action == "error":
            severity = directive.get("severity") or "Fatal"
            message = directive.get("message") or f"test driver error in {entry['watchState']}"
            raise DriverFailure(message, TESTER_SEVERITY.get(severity, "Error"))
        raise DriverFailure(f"unknown test driver action {action!r}")

    def _nnf(
        self, wf: Obj, directives: list[Directive | None], index: int, directive: Directive, state: str
    ) -> None:
        if state == "Setup":
            if directive.command in ("jobdw", "create_persistent"):
                self._check_servers(wf, index)
            if wf["status"].get("requires") and not wf["status"].get("workflowToken"):
                self._mint_token(wf)
        elif state == "PreRun":
            computes = self.store.get("computes", wf["metadata"]["namespace"], wf["metadata"]["name"]) or {}
            wf["status"].setdefault("env", {}).update(self._job_env(wf, directives, computes))
        elif state == "Teardown":
            ns, name = wf["metadata"]["namespace"], wf["metadata"]["name"]
            for secret in (f"{name}-token", f"{name}-token-server"):
                with contextlib.suppress(ApiError):
                    self.store.delete("secrets", ns, secret, "secrets")

    def _check_servers(self, wf: Obj, index: int) -> None:
        ns, name = wf["metadata"]["namespace"], f"{wf['metadata']['name']}-{index}"
        servers = self.store.get("servers", ns, name) or {}
        sets = (servers.get("spec") or {}).get("allocationSets") or []
        if not sets:
            raise DriverFailure(f"Servers {name} has no allocation sets: the WLM must fill them before Setup")
        breakdown = self.store.get("directivebreakdowns", ns, name) or {}
        wanted = (((breakdown.get("status") or {}).get("storage") or {}).get("allocationSets")) or []
        rabbits = self._rabbits()
        for need in wanted:
            got = [s for s in sets if s.get("label") == need["label"]]
            total = sum(
                int(s["allocationSize"]) * int(x["allocationCount"]) for s in got for x in s["storage"]
            )
            if total < int(need["minimumCapacity"]):
                raise DriverFailure(
                    f"Servers {name}: {need['label']} allocations total {total} bytes, "
                    f"less than the {need['minimumCapacity']} the directive needs"
                )
            for s in got:
                for x in s["storage"]:
                    if x["name"] not in rabbits:
                        raise DriverFailure(f"Servers {name}: {x['name']} is not a Rabbit of this system")

    def _rabbits(self) -> set[str]:
        system = self.store.get("systemconfigurations", "default", "default") or {}
        return {n.get("name") for n in (system.get("spec") or {}).get("storageNodes") or []}

    def _mint_token(self, wf: Obj) -> None:
        from copyoffload.tokens import mint_token, new_workflow_key

        ns, name = wf["metadata"]["namespace"], wf["metadata"]["name"]
        key = new_workflow_key()
        token = mint_token(key, name)
        for secret_name, data in (
            (f"{name}-token", {"token": token.encode()}),
            (f"{name}-token-server", {"token.key": key}),
        ):
            secret = self._child(wf, "Secret", name=secret_name, api_version="v1")
            secret.update(
                type="Opaque",
                immutable=True,
                data={k: base64.b64encode(v).decode("ascii") for k, v in data.items()},
            )
            self._ensure("secrets", secret)
        wf["status"]["workflowToken"] = {"secretName": f"{name}-token", "secretNamespace": ns}

    def _job_env(self, wf: Obj, directives: list[Directive | None], computes: Obj) -> dict[str, str]:
        env: dict[str, str] = {}
        jobs, persistents = [], []
        uid = wf["metadata"]["uid"]
        for index, d in enumerate(directives):
            if d is None:
                continue
            if d.command == "jobdw" and d.name:
                path = f"{MOUNT_ROOT}/{uid}-{index}"
                env[job_env_name(d.name)] = path
                env.setdefault(f"DW_JOB_{str(d.get('type', '')).upper()}", path)
                jobs.append(f"{d.name}:{path}")
            elif d.command == "persistentdw" and d.name:
                path = f"{MOUNT_ROOT}/persistent/{d.name}"
                env[persistent_env_name(d.name)] = path
                persistents.append(f"{d.name}:{path}")
            elif d.command == "container":
                hosts = [c["name"] for c in computes.get("data") or []]
                env.update(
                    NNF_CONTAINER_LAUNCHER=hosts[0] if hosts else "",
                    NNF_CONTAINER_PORTS="5000",
                    NNF_CONTAINER_HOSTNAMES=",".join(hosts),
                    NNF_CONTAINER_DOMAIN=f"{wf['metadata']['name']}.{wf['metadata']['namespace']}.svc.cluster.local",
                    NNF_CONTAINER_SUBDOMAIN=wf["metadata"]["name"],
                )
        if jobs:
            env["DW_JOBS"] = ",".join(jobs)
        if persistents:
            env["DW_PERSISTENTS"] = ",".join(persistents)
        return env

    # --- objects nnf-sos owns ----------------------------------------------------------------
    def _breakdown(self, wf: Obj, index: int, directive: Directive) -> tuple[Obj, Obj | None]:
        name = f"{wf['metadata']['name']}-{index}"
        breakdown = self._child(wf, "DirectiveBreakdown", name=name)
        breakdown["spec"] = {"directive": directive.text, "userID": int(wf["spec"]["userID"])}
        status: Obj = {"ready": True}
        requires = [w for w in (directive.get("requires") or "").split(",") if w]
        if requires:
            status["requires"] = requires
        servers = None
        if directive.command in ("jobdw", "create_persistent"):
            servers = self._child(wf, "Servers", name=name)
            servers["spec"] = {}
            status["storage"] = {
                "lifetime": "job" if directive.command == "jobdw" else "persistent",
                "reference": _ref(servers),
                "allocationSets": _allocation_sets(directive),
            }
            status["compute"] = {
                "constraints": {
                    "location": [
                        {
                            "access": [{"priority": "mandatory", "type": "physical"}],
                            "reference": _ref(servers, field_path="servers.spec.allocationSets"),
                        }
                    ]
                }
            }
        breakdown["status"] = status
        return breakdown, servers

    def _child(self, wf: Obj, kind: str, *, name: str | None = None, api_version: str | None = None) -> Obj:
        meta = wf["metadata"]
        return {
            "apiVersion": api_version or f"{DWS_GROUP}/v1alpha7",
            "kind": kind,
            "metadata": {
                "name": name or meta["name"],
                "namespace": meta["namespace"],
                "labels": {LABEL_WF_NAME: meta["name"], LABEL_WF_NAMESPACE: meta["namespace"]},
                "ownerReferences": [
                    {
                        "apiVersion": wf.get("apiVersion", f"{DWS_GROUP}/v1alpha7"),
                        "kind": "Workflow",
                        "name": meta["name"],
                        "uid": meta.get("uid", ""),
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
        }

    def _ensure(self, plural: str, obj: Obj) -> None:
        meta = obj["metadata"]
        if self.store.get(plural, meta["namespace"], meta["name"]) is None:
            self.store.create(plural, meta["namespace"], obj, plural)


def _ref(obj: Obj, field_path: str = "") -> Obj:
    ref = {
        "apiVersion": obj.get("apiVersion", ""),
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "namespace": obj["metadata"]["namespace"],
    }
    if field_path:
        ref["fieldPath"] = field_path
    return ref


def _allocation_sets(directive: Directive) -> list[Obj]:
    capacity = parse_size(directive.get("capacity") or "1GiB")
    fs = directive.get("type") or "xfs"
    if fs == "lustre":
        return [
            {"label": "ost", "allocationStrategy": "AllocateAcrossServers", "minimumCapacity": capacity},
            {
                "label": "mgtmdt",
                "allocationStrategy": "AllocateSingleServer",
                "minimumCapacity": 1 << 30,
                "constraints": {"colocation": [{"type": "exclusive", "key": "lustre-mgt"}]},
            },
        ]
    return [{"label": fs, "allocationStrategy": "AllocatePerCompute", "minimumCapacity": capacity}]


def _complete(entry: Obj) -> None:
    entry.update(completed=True, status="Completed", completeTime=now_rfc3339(), lastHB=int(time.time()))
    entry.pop("error", None)
    entry["message"] = ""


def _fail(entry: Obj, message: str, status: str) -> None:
    entry.update(status=status, message=message, error=message, lastHB=int(time.time()))


def set_driver(
    store: Store, namespace: str, name: str, state: str, action: str, message: str = "", severity: str = ""
) -> Obj:
    """What a test (or an operator) does to a waiting driver entry: complete it, or make it fail."""
    wf = store.get("workflows", namespace, name)
    if wf is None:
        raise ApiError(404, "NotFound", f'workflows.dataworkflowservices.github.io "{name}" not found')
    touched = 0
    for entry in (wf.get("status") or {}).get("drivers") or []:
        if entry["watchState"] != state or entry.get("completed"):
            continue
        if action == "complete":
            _complete(entry)
        elif action == "error":
            _fail(entry, message or "failed by request", TESTER_SEVERITY.get(severity or "Fatal", "Error"))
        else:
            raise ApiError(400, "BadRequest", f"unknown action {action!r}: use complete or error")
        touched += 1
    if not touched:
        raise ApiError(409, "Conflict", f"workflow {name} has no open driver entry for {state}")
    return store.update("workflows", namespace, name, wf, "workflows.dataworkflowservices.github.io")


__all__ = ["Controller", "set_driver"]
