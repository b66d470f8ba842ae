"""The object store of the stand-in API server: resourceVersions, finalizers, selectors, watch events.

One lock guards everything; a Condition wakes watchers. Objects are stored as JSON-shaped dicts and
handed out as deep copies, so no caller can change stored state behind the store's back.
"""

from __future__ import annotations

import copy
import datetime
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
Key = tuple[str, str, str]  # (plural, namespace, name); namespace "" for cluster-scoped
Listener = Callable[[str, str, Obj], None]  # (event type, plural, object)

HISTORY = 20000  # watch events kept; older resourceVersions get 410 Gone


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """An API answer other than success; becomes a `Status` body."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def not_found(resource: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource})


def conflict(resource: str, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        {"name": name, "kind": resource},
    )


@dataclass(frozen=True)
class Event:
    rv: int
    type: str
    plural: str
    namespace: str
    obj: Obj


def match_labels(obj: Obj, selector: str) -> bool:
    """Equality-based and set-based label selectors: a=b, a==b, a!=b, a, !a, a in (x,y), a notin (x)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in _split_selector(selector):
        term = term.strip()
        if not term:
            continue
        if " notin " in term or " in " in term:
            negate = " notin " in term
            key, _, values = term.partition(" notin " if negate else " in ")
            wanted = {v.strip() for v in values.strip().strip("()").split(",")}
            key = key.strip()
            has = key in labels and labels[key] in wanted
            if has == negate:
                return False
        elif "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _split_selector(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return terms


def match_fields(obj: Obj, selector: str) -> bool:
    """metadata.name / metadata.namespace field selectors (= and !=)."""
    meta = obj.get("metadata") or {}
    for term in selector.split(","):
        term = term.strip()
        if not term:
            continue
        negate = "!=" in term
        key, value = term.replace("==", "=").split("!=" if negate else "=", 1)
        field = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace")}.get(
            key.strip()
        )
        if (field == value.strip()) == negate:
            return False
    return True


class Store:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rv = 1
        self._objects: dict[Key, Obj] = {}
        self._events: deque[Event] = deque(maxlen=HISTORY)
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    # --- reads -----------------------------------------------------------------------------
    def get(self, plural: str, namespace: str, name: str) -> Obj | None:
        with self._cond:
            obj = self._objects.get((plural, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(
        self, plural: str, namespace: str | None, labels: str = "", fields: str = ""
    ) -> tuple[list[Obj], int]:
        with self._cond:
            items = [
                copy.deepcopy(obj)
                for (p, ns, _n), obj in sorted(self._objects.items())
                if p == plural
                and (namespace is None or ns == namespace)
                and match_labels(obj, labels)
                and match_fields(obj, fields)
            ]
            return items, self._rv

    # --- writes ----------------------------------------------------------------------------
    def create(self, plural: str, namespace: str, obj: Obj, resource: str) -> Obj:
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name and meta.get("generateName"):
            name = meta["generateName"] + uuid.uuid4().hex[:5]
            meta["name"] = name
        if not name:
            raise ApiError(422, "Invalid", f"{resource}: metadata.name: Required value")
        with self._cond:
            key = (plural, namespace, name)
            if key in self._objects:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{resource} "{name}" already exists',
                    {"name": name, "kind": resource},
                )
            if namespace:
                meta["namespace"] = namespace
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            meta["generation"] = 1
            meta.pop("deletionTimestamp", None)
            return self._commit(key, obj, "ADDED")

    def update(self, plural: str, namespace: str, name: str, obj: Obj, resource: str) -> Obj:
        """Replace an object; a resourceVersion in `obj` must match (409 otherwise)."""
        with self._cond:
            key = (plural, namespace, name)
            old = self._objects.get(key)
            if old is None:
                raise not_found(resource, name)
            meta = obj.setdefault("metadata", {})
            wanted = meta.get("resourceVersion")
            if wanted and str(wanted) != old["metadata"]["resourceVersion"]:
                raise conflict(resource, name)
            for fixed in ("uid", "creationTimestamp", "name", "namespace", "deletionTimestamp"):
                if fixed in old["metadata"]:
                    meta[fixed] = old["metadata"][fixed]
                else:
                    meta.pop(fixed, None)
            if obj.get("spec") != old.get("spec"):
                meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
            else:
                meta["generation"] = old["metadata"].get("generation", 1)
            if old["metadata"].get("deletionTimestamp") and not meta.get("finalizers"):
                self._remove(key)
                return copy.deepcopy(obj)
            if _same(old, obj):
                return copy.deepcopy(old)
            return self._commit(key, obj, "MODIFIED")

    def delete(self, plural: str, namespace: str, name: str, resource: str) -> Obj:
        with self._cond:
            key = (plural, namespace, name)
            old = self._objects.get(key)
            if old is None:
                raise not_found(resource, name)
            if old["metadata"].get("finalizers"):
                if not old["metadata"].get("deletionTimestamp"):
                    new = copy.deepcopy(old)
                    new["metadata"]["deletionTimestamp"] = now_rfc3339()
                    new["metadata"]["deletionGracePeriodSeconds"] = 0
                    return self._commit(key, new, "MODIFIED")
                return copy.deepcopy(old)
            return self._remove(key)

    def touch(self, plural: str, namespace: str, name: str) -> None:
        """Bump an object's resourceVersion, as a concurrent writer would."""
        with self._cond:
            old = self._objects.get((plural, namespace, name))
            if old is None:
                return
            new = copy.deepcopy(old)
            annotations = new["metadata"].setdefault("annotations", {})
            annotations["standin.dws/touched"] = str(int(annotations.get("standin.dws/touched", "0")) + 1)
            self._commit((plural, namespace, name), new, "MODIFIED")

    def _commit(self, key: Key, obj: Obj, event_type: str) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._objects[key] = copy.deepcopy(obj)
        self._events.append(Event(self._rv, event_type, key[0], key[1], copy.deepcopy(obj)))
        self._cond.notify_all()
        self._notify(event_type, key[0], obj)
        return copy.deepcopy(obj)

    def _remove(self, key: Key) -> Obj:
        old = self._objects.pop(key)
        self._rv += 1
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self._rv)
        self._events.append(Event(self._rv, "DELETED", key[0], key[1], copy.deepcopy(gone)))
        self._cond.notify_all()
        self._notify("DELETED", key[0], gone)
        return gone

    def _notify(self, event_type: str, plural: str, obj: Obj) -> None:
        for listener in self._listeners:
            listener(event_type, plural, copy.deepcopy(obj))

    # --- watch -----------------------------------------------------------------------------
    def watch(
        self,
        plural: str,
        namespace: str | None,
        since: int | None,
        labels: str,
        fields: str,
        timeout: float,
        stop: threading.Event,
    ) -> Iterator[Event | None]:
        """Events after `since` (None: synthetic ADDED for what exists now, then new events). Yields
        None about every second when idle, so the caller can notice a closed connection."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if since is None:
                items, since = self.list(plural, namespace, labels, fields)
                initial = [Event(since, "ADDED", plural, namespace or "", o) for o in items]
            else:
                full = len(self._events) == self._events.maxlen
                oldest = self._events[0].rv if self._events else self._rv
                if full and since < oldest - 1:
                    raise ApiError(410, "Expired", f"too old resource version: {since} ({oldest - 1})")
                initial = []
        yield from initial
        cursor = since
        while not stop.is_set():
            with self._cond:
                pending = [e for e in self._events if e.rv > cursor]
                if not pending:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    self._cond.wait(min(remaining, 1.0))
                    pending = [e for e in self._events if e.rv > cursor]
            if not pending:
                if time.monotonic() >= deadline:
                    return
                yield None
                continue
            for event in pending:
                cursor = event.rv
                if event.plural != plural or (namespace is not None and event.namespace != namespace):
                    continue
                if match_labels(event.obj, labels) and match_fields(event.obj, fields):
                    yield Event(event.rv, event.type, event.plural, event.namespace, copy.deepcopy(event.obj))


def _same(old: Obj, new: Obj) -> bool:
    a, b = copy.deepcopy(old), copy.deepcopy(new)
    for obj in (a, b):
        obj.get("metadata", {}).pop("resourceVersion", None)
        obj.get("metadata", {}).pop("generation", None)
    return a == b
