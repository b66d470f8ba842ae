"""The resource types the stand-in serves, built from the DWS CRD YAML at run time.

Each CRD gives its served versions, its openAPIV3Schema (enforced with jsonschema, with defaults
applied and unknown fields pruned, as the API server does) and its printer columns (for kubectl's
Table output). Core `secrets` and `namespaces` are added by hand.
"""

from __future__ import annotations

import copy
import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .store import ApiError, Obj

DWS_GROUP = "dataworkflowservices.github.io"
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass
class Resource:
    group: str  # "" for the core API
    kind: str
    plural: str
    singular: str
    versions: tuple[str, ...]  # served, preferred first
    namespaced: bool = True
    schemas: dict[str, Obj] = field(default_factory=dict)
    columns: dict[str, list[Obj]] = field(default_factory=dict)
    status_subresource: bool = False
    short_names: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """How messages name the type: `workflows.dataworkflowservices.github.io`, `secrets`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version


def load_resources(crd_dir: Path) -> dict[tuple[str, str], Resource]:
    """(group, plural) -> Resource for every served CRD in crd_dir, plus core secrets/namespaces."""
    import yaml

    out: dict[tuple[str, str], Resource] = {}
    for path in sorted(crd_dir.glob(f"{DWS_GROUP}_*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            resource = _from_crd(doc)
            if resource is not None:
                out[(resource.group, resource.plural)] = resource
    if not any(plural == "workflows" for (_g, plural) in out):
        raise SystemExit(f"dws-standin: no Workflow CRD found in {crd_dir}")
    # DWS ships a SystemConfiguration CRD we do not have as YAML here: serve it schema-less.
    out.setdefault(
        (DWS_GROUP, "systemconfigurations"),
        Resource(
            DWS_GROUP,
            "SystemConfiguration",
            "systemconfigurations",
            "systemconfiguration",
            ("v1alpha7", "v1alpha6"),
        ),
    )
    out[("", "secrets")] = Resource("", "Secret", "secrets", "secret", ("v1",))
    out[("", "namespaces")] = Resource("", "Namespace", "namespaces", "namespace", ("v1",), namespaced=False)
    return out


def _from_crd(doc: Obj) -> Resource | None:
    spec = doc["spec"]
    names = spec["names"]
    served = [v for v in spec["versions"] if v.get("served")]
    if not served:
        return None
    served.sort(key=lambda v: (not v.get("storage"), v["name"]))
    resource = Resource(
        group=spec["group"],
        kind=names["kind"],
        plural=names["plural"],
        singular=names.get("singular", names["plural"]),
        versions=tuple(v["name"] for v in served),
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        short_names=tuple(names.get("shortNames") or ()),
    )
    for version in served:
        schema = ((version.get("schema") or {}).get("openAPIV3Schema")) or {}
        resource.schemas[version["name"]] = schema
        resource.columns[version["name"]] = list(version.get("additionalPrinterColumns") or [])
        if "status" in (version.get("subresources") or {}):
            resource.status_subresource = True
    return resource


# --- schema enforcement ------------------------------------------------------------------------


def admit_schema(resource: Resource, version: str, obj: Obj) -> None:
    """Apply defaults, prune unknown fields, then validate; a bad object is a 422 Invalid."""
    schema = resource.schemas.get(version)
    if not schema:
        return
    _apply_defaults(schema, obj)
    _prune(schema, obj, top=True)
    from jsonschema import Draft7Validator

    errors = sorted(Draft7Validator(schema).iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return
    name = (obj.get("metadata") or {}).get("name", "")
    causes = [_describe(e) for e in errors]
    raise ApiError(
        422,
        "Invalid",
        f'{resource.qualified_kind} "{name}" is invalid: ' + ", ".join(c[1] for c in causes),
        {
            "name": name,
            "group": resource.group,
            "kind": resource.kind,
            "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes],
        },
    )


def _path(error: Any) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: Any) -> tuple[str, str]:
    path = _path(error)
    value = json.dumps(error.instance)
    if error.validator == "required":
        missing = str(error.message).split("'")[1] if "'" in str(error.message) else "?"
        where = f"{path}.{missing}" if path else missing
        return where, f"{where}: Required value"
    if error.validator == "enum":
        supported = ", ".join(json.dumps(v) for v in error.validator_value)
        return path, f"{path}: Unsupported value: {value}: supported values: {supported}"
    if error.validator == "type":
        kind = json.dumps(_type_name(error.instance))
        must = f"{path} in body must be of type {error.validator_value}"
        return path, f"{path}: Invalid value: {kind}: {must}: {value}"
    return path, f"{path}: Invalid value: {value}: {error.message}"


def _type_name(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), "null")


def _apply_defaults(schema: Obj, value: Any) -> None:
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _apply_defaults(sub, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for item in value.values():
                _apply_defaults(extra, item)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _apply_defaults(schema["items"], item)


def _prune(schema: Obj, value: Any, top: bool = False) -> None:
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is not None and not schema.get("x-kubernetes-preserve-unknown-fields") and not extra:
            for key in list(value):
                if key not in props and not (top and key in ("apiVersion", "kind", "metadata")):
                    del value[key]
        for key, item in value.items():
            if props and key in props:
                if key != "metadata" or not top:
                    _prune(props[key], item)
            elif isinstance(extra, dict):
                _prune(extra, item)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _prune(schema["items"], item)


# --- discovery ---------------------------------------------------------------------------------


def api_group_list(resources: dict[tuple[str, str], Resource]) -> Obj:
    groups: dict[str, list[str]] = {}
    for resource in resources.values():
        if resource.group:
            known = groups.setdefault(resource.group, [])
            known += [v for v in resource.versions if v not in known]
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(g, v) for g, v in sorted(groups.items())],
    }


def api_group(resources: dict[tuple[str, str], Resource], group: str) -> Obj | None:
    versions: list[str] = []
    for resource in resources.values():
        if resource.group == group:
            versions += [v for v in resource.versions if v not in versions]
    return dict(_group(group, versions), kind="APIGroup", apiVersion="v1") if versions else None


def _group(name: str, versions: list[str]) -> Obj:
    ordered = sorted(versions, reverse=True)
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in ordered]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def api_resource_list(resources: dict[tuple[str, str], Resource], group: str, version: str) -> Obj | None:
    listed = []
    for resource in sorted(resources.values(), key=lambda r: r.plural):
        if resource.group != group or version not in resource.versions:
            continue
        entry: Obj = {
            "name": resource.plural,
            "singularName": resource.singular,
            "namespaced": resource.namespaced,
            "kind": resource.kind,
            "verbs": VERBS,
        }
        if resource.short_names:
            entry["shortNames"] = list(resource.short_names)
        listed.append(entry)
        if resource.status_subresource:
            listed.append(
                {
                    "name": f"{resource.plural}/status",
                    "singularName": "",
                    "namespaced": resource.namespaced,
                    "kind": resource.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    if not listed:
        return None
    group_version = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": listed}


# --- kubectl's Table output --------------------------------------------------------------------


def as_table(resource: Resource, version: str, items: list[Obj], resource_version: str) -> Obj:
    columns = [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}]
    custom = resource.columns.get(version) or [
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    ]
    for col in custom:
        columns.append(
            {
                "name": col["name"],
                "type": "string" if col.get("type") == "date" else col.get("type", "string"),
                "format": "",
                "description": col.get("description", ""),
                "priority": int(col.get("priority", 0)),
            }
        )
    rows = []
    for obj in items:
        cells: list[Any] = [obj["metadata"]["name"]]
        for col in custom:
            value = _json_path(obj, col.get("jsonPath", ""))
            if col.get("type") == "date":
                value = _age(value) if value else "<unknown>"
            cells.append(value)
        meta = {k: v for k, v in obj["metadata"].items() if k != "managedFields"}
        rows.append(
            {
                "cells": cells,
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta},
            }
        )
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns,
        "rows": rows,
    }


def _json_path(obj: Obj, path: str) -> Any:
    value: Any = obj
    for part in path.strip(".").split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _age(timestamp: str) -> str:
    try:
        then = datetime.datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        return str(timestamp)
    from dwsbridge.display import format_age

    return format_age((datetime.datetime.now(datetime.UTC) - then).total_seconds())
