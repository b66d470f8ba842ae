"""What the job-manager side and the service say to each other: names, topics, replies, requests.

The names are flux-coral2's (dws-jobtap v0.36), so sites and their tooling see the same eventlog.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dwsbridge.errors import DwsBridgeError

CREATE_DEPENDENCY = "dws-create"
SETUP_PROLOG = "dws-setup"
EPILOG = "dws-epilog"
ENVIRONMENT_EVENT = "dws_environment"
EXCEPTION_TYPE = "dws"
EPILOG_TIMEOUT_TYPE = "dws-epilog-timeout"
# `flux job raise --type=dws-hurry JOBID`: tear down in a hurry now, skipping stage-out (scancel --hurry).
HURRY_TYPE = "dws-hurry"
NOTE_PREFIX = "DWS workflow interactions failed: "

SERVICE = "dws"
CREATE, SETUP, POST_RUN, TEARDOWN, ABORT = (
    f"{SERVICE}.create",
    f"{SERVICE}.setup",
    f"{SERVICE}.post_run",
    f"{SERVICE}.teardown",
    f"{SERVICE}.abort",
)
TOPICS = (CREATE, SETUP, POST_RUN, TEARDOWN, ABORT)

DW_ATTRIBUTE = "dw"
TOLERANCE_ATTRIBUTE = "dw_failure_tolerance"


class MalformedRequest(DwsBridgeError):
    """A dws.* request the service cannot read; answered with an error reply (EPROTO)."""


@dataclass(frozen=True)
class Reply:
    """One RPC response: a payload, or an error (errno and text) as Flux's error responses carry."""

    payload: dict[str, Any] | None = None
    errnum: int = 0
    errstr: str = ""

    @property
    def is_error(self) -> bool:
        return self.errnum != 0

    @classmethod
    def error(cls, errnum: int, errstr: str) -> Reply:
        return cls(None, errnum, errstr)


def success(**extra: Any) -> dict[str, Any]:
    return {"success": True, **extra}


def failure(errstr: str) -> dict[str, Any]:
    return {"success": False, "errstr": errstr}


def no_service(topic: str) -> Reply:
    """What Flux answers when nothing is registered for a topic."""
    return Reply.error(errno.ENOSYS, f"No service matching {topic} is registered")


def exception_note(errstr: str | None) -> str:
    """dws-jobtap's note for every exception it raises."""
    return NOTE_PREFIX + (errstr or "<no error string provided>")


# --- requests ---------------------------------------------------------------------------------


def request_jobid(payload: Any, topic: str) -> int:
    """The `jobid` every dws.* request carries: a non-negative integer (a Flux job ID)."""
    if not isinstance(payload, Mapping):
        raise MalformedRequest(f"malformed {topic} request: payload must be a JSON object")
    jobid = payload.get("jobid")
    if isinstance(jobid, bool) or not isinstance(jobid, int) or jobid < 0:
        raise MalformedRequest(f"malformed {topic} request: 'jobid' must be a non-negative integer")
    return jobid


def request_field(payload: Mapping[str, Any], key: str, kind: type | tuple[type, ...], topic: str) -> Any:
    value = payload.get(key)
    wants_bool = kind is bool or (isinstance(kind, tuple) and bool in kind)
    if key not in payload or not isinstance(value, kind) or (isinstance(value, bool) and not wants_bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise MalformedRequest(f"malformed {topic} request: '{key}' must be {_article(names)} {names}")
    return value


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def parse_failure_tolerance(value: Any) -> int:
    """`-S dw_failure_tolerance=N`: a non-negative integer (flux turns "3" into 3; accept both)."""
    if isinstance(value, bool):
        raise ValueError(f"dw_failure_tolerance must be a non-negative integer, not {value!r}")
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, int) and value >= 0:
        return value
    raise ValueError(f"dw_failure_tolerance must be a non-negative integer, not {value!r}")


# --- jobspec and R ----------------------------------------------------------------------------


def system_attributes(jobspec: Any) -> Mapping[str, Any]:
    """jobspec.attributes.system, or {} when the jobspec has none."""
    if not isinstance(jobspec, Mapping):
        return {}
    attributes = jobspec.get("attributes")
    system = attributes.get("system") if isinstance(attributes, Mapping) else None
    return system if isinstance(system, Mapping) else {}


def dw_attribute(jobspec: Any) -> Any:
    """`attributes.system.dw` (a string or a list of strings), or None for a job without one."""
    return system_attributes(jobspec).get(DW_ATTRIBUTE)


_RANGE = re.compile(r"^(?P<prefix>[^\[\]]*)\[(?P<ranges>[^\]]+)\](?P<suffix>[^\[\]]*)$")


def expand_hostlist(expr: str) -> list[str]:
    """RFC 29 hostlists as R uses them (`node[1-3,7],login1`) as host names; one bracket per host."""
    hosts: list[str] = []
    for part in _split_top(expr):
        match = _RANGE.match(part)
        if not match:
            if part:
                hosts.append(part)
            continue
        for item in match["ranges"].split(","):
            low, _, high = item.partition("-")
            if not high:
                hosts.append(f"{match['prefix']}{low}{match['suffix']}")
                continue
            width = len(low) if low.startswith("0") else 0
            for number in range(int(low), int(high) + 1):
                hosts.append(f"{match['prefix']}{number:0{width}d}{match['suffix']}")
    return hosts


def _split_top(expr: str) -> list[str]:
    """Split on commas outside brackets."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(expr):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(expr[start:index].strip())
            start = index + 1
    parts.append(expr[start:].strip())
    return parts


def hosts_of(R: Any) -> list[str]:
    """The job's compute hosts from R (RFC 20: execution.nodelist, a list of hostlists)."""
    execution = R.get("execution") if isinstance(R, Mapping) else None
    nodelist = execution.get("nodelist") if isinstance(execution, Mapping) else None
    if isinstance(nodelist, str):
        nodelist = [nodelist]
    if not isinstance(nodelist, list):
        return []
    hosts: list[str] = []
    for entry in nodelist:
        if isinstance(entry, str):
            hosts += [h for h in expand_hostlist(entry) if h not in hosts]
    return hosts
