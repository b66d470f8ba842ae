"""Driving a running stand-in from tests: start/stop it as a process, and its /standin/ endpoints."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parent / "dws-standin"


@dataclass
class RunningStandIn:
    directory: Path
    kubeconfig: Path
    url: str
    token: str
    ca: Path

    # --- plain HTTPS, independent of the kubernetes client ------------------------------------
    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", content_type)
        context = ssl.create_default_context(cafile=str(self.ca))
        try:
            with urllib.request.urlopen(req, context=context, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise StandInError(exc.code, json.loads(exc.read() or b"{}")) from None
        return json.loads(raw) if raw else None

    def requests(self) -> list[dict[str, Any]]:
        """Every non-GET API request so far: method, path, contentType, body, code."""
        return list(self.request("GET", "/standin/requests"))

    def clear_requests(self) -> None:
        self.request("DELETE", "/standin/requests")

    def drive(
        self, name: str, state: str, action: str = "complete", *, namespace: str = "default", **extra: str
    ) -> None:
        """Complete (or fail) the open driver entries of `state`, as a driver would."""
        self.request("POST", f"/standin/drivers/{namespace}/{name}", dict(extra, state=state, action=action))

    def conflict_after_next_get(
        self, plural: str, name: str, *, namespace: str = "default", count: int = 1
    ) -> None:
        """The next `count` GETs of the object are each followed by a concurrent write."""
        self.request(
            "POST", "/standin/faults", {"touchAfterGet": f"{plural}/{namespace}/{name}", "count": count}
        )

    def workflow(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        try:
            return dict(
                self.request(
                    "GET",
                    f"/apis/dataworkflowservices.github.io/v1alpha7/namespaces/{namespace}/workflows/{name}",
                )
            )
        except StandInError as exc:
            if exc.code == 404:
                return None
            raise


class StandInError(Exception):
    def __init__(self, code: int, status: dict[str, Any]) -> None:
        super().__init__(f"HTTP {code}: {status.get('message', status)}")
        self.code = code
        self.status = status


def start(directory: Path, *extra: str) -> RunningStandIn:
    """Run `testenv/dws-standin start` in `directory` (a free loopback port) and return a handle."""
    out = subprocess.run(
        [str(SCRIPT), "start", "--dir", str(directory), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"dws-standin start failed: {out.stderr}{out.stdout}")
    kubeconfig = Path(out.stdout.strip().splitlines()[-1])
    config = yaml.safe_load(kubeconfig.read_text())
    return RunningStandIn(
        directory=directory,
        kubeconfig=kubeconfig,
        url=config["clusters"][0]["cluster"]["server"],
        token=config["users"][0]["user"]["token"],
        ca=directory / "ca.crt",
    )


def stop(directory: Path) -> None:
    subprocess.run([str(SCRIPT), "stop", "--dir", str(directory)], timeout=60, check=False)


__all__ = ["RunningStandIn", "StandInError", "start", "stop"]
