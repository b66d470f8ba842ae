"""The Kubernetes backend, through the real `kubernetes` client, against the DWS stand-in.

One stand-in process serves the module (testenv/dws-standin on a free loopback port, over TLS); each
test uses its own job id, so tests do not see each other's workflows.
"""

from __future__ import annotations

import base64
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from dwsbridge.config import Config
from dwsbridge.errors import AdmissionError, WorkflowFailed
from dwsbridge.lifecycle import Lifecycle
from dwsbridge.workflow import STATES, TEARDOWN, build_workflow, finalizer

if TYPE_CHECKING:
    from tests.standin_support import RunningStandIn

pytest.importorskip("kubernetes")

JOBDW = "#DW jobdw type=xfs capacity=1GiB name=scratch requires=copy-offload"
_job_ids = itertools.count(7000)


def make_config(standin: RunningStandIn, **overrides: Any) -> Config:
    values: dict[str, Any] = dict(
        backend="kubernetes", kubeconfig=standin.kubeconfig, state_timeout=30.0, transient_timeout=30.0
    )
    values.update(overrides)
    return Config(**values)


@pytest.fixture
def lc(standin: RunningStandIn) -> Lifecycle:
    return Lifecycle(make_config(standin))


def new_job() -> str:
    return str(next(_job_ids))


def create(lc: Lifecycle, *directives: str) -> str:
    return lc.create(wlm="slurm", job_id=new_job(), uid=1000, gid=1000, directives=list(directives))


def wait_until(predicate: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def workflow_patches(standin: RunningStandIn, name: str) -> list[dict[str, Any]]:
    return [
        r
        for r in standin.requests()
        if r["method"] == "PATCH" and r["path"].endswith(f"/workflows/{name}") and r["code"] == 200
    ]


# --- the lifecycle -------------------------------------------------------------------------------


def test_full_seven_state_walk_ends_with_the_workflow_deleted(lc: Lifecycle, standin: RunningStandIn) -> None:
    name = create(lc, JOBDW)
    seen = []
    for state in STATES[1:-1]:
        obj = lc.advance_to(name, state)
        seen.append((obj["spec"]["desiredState"], obj["status"]["state"], obj["status"]["ready"]))
    assert seen == [(s, s, True) for s in STATES[1:-1]]
    lc.teardown(name)
    assert standin.workflow(name) is None
    assert not lc.exists(name)


def test_created_workflow_carries_our_finalizer_and_labels(lc: Lifecycle, standin: RunningStandIn) -> None:
    name = create(lc)
    obj = standin.workflow(name)
    assert obj is not None
    assert finalizer("slurm") in obj["metadata"]["finalizers"]
    assert [s.name for s in lc.list() if s.name == name] == [name]
    lc.teardown(name)


def test_environment_has_job_paths_and_a_token_the_workflow_key_verifies(
    lc: Lifecycle, standin: RunningStandIn
) -> None:
    from copyoffload.tokens import verify_token

    name = create(lc, JOBDW)
    lc.walk(name, ["Setup", "DataIn", "PreRun"])
    env = lc.environment(name)
    assert env["DW_WORKFLOW_NAME"] == name
    assert env["DW_WORKFLOW_NAMESPACE"] == "default"
    assert env["DW_JOB_scratch"].startswith("/mnt/nnf/")
    assert env["DW_JOBS"] == f"scratch:{env['DW_JOB_scratch']}"
    server_secret = standin.request("GET", f"/api/v1/namespaces/default/secrets/{name}-token-server")
    key = base64.b64decode(server_secret["data"]["token.key"])
    claims = verify_token(env["DW_WORKFLOW_TOKEN"], key, name)
    assert claims["sub"] == "user-container"
    lc.teardown(name)


def test_environment_without_copy_offload_has_no_token(lc: Lifecycle) -> None:
    name = create(lc, "#DW jobdw type=xfs capacity=1GiB name=plain")
    lc.walk(name, ["Setup", "DataIn", "PreRun"])
    assert "DW_WORKFLOW_TOKEN" not in lc.environment(name)
    lc.teardown(name)


def test_servers_are_filled_from_the_system_configuration_before_setup(
    lc: Lifecycle, standin: RunningStandIn
) -> None:
    name = create(lc, JOBDW)
    lc.set_computes(name, ["compute-1", "compute-2"])
    lc.advance_to(name, "Setup")
    servers = standin.request(
        "GET", f"/apis/dataworkflowservices.github.io/v1alpha7/namespaces/default/servers/{name}-0"
    )
    assert servers["spec"]["allocationSets"] == [
        {"label": "xfs", "allocationSize": 1 << 30, "storage": [{"name": "rabbit-1", "allocationCount": 2}]}
    ]
    lc.teardown(name)


def test_computes_set_by_the_wlm_reach_dws(lc: Lifecycle, standin: RunningStandIn) -> None:
    name = create(lc)
    lc.set_computes(name, ["compute-1"])
    computes = standin.request(
        "GET", f"/apis/dataworkflowservices.github.io/v1alpha7/namespaces/default/computes/{name}"
    )
    assert computes["data"] == [{"name": "compute-1"}]
    lc.teardown(name)


@pytest.mark.parametrize("state", STATES)
def test_error_in_any_state_ends_in_teardown_with_the_drivers_message(
    lc: Lifecycle, standin: RunningStandIn, state: str
) -> None:
    message = f"injected-{state.lower()}-failure"
    directive = f"#DW {state} action=error message={message} severity=Fatal"
    job = new_job()
    name = f"bb{job}"
    with pytest.raises(WorkflowFailed) as failed:
        lc.create(wlm="slurm", job_id=job, uid=1000, gid=1000, directives=[directive])
        lc.walk(name, [s for s in STATES[1:] if s != TEARDOWN])
        lc.teardown(name)
    assert failed.value.state == state
    assert message in str(failed.value)
    lc.teardown(name, hurry=True, quiet=True)  # what the WLM does after a failed state
    assert standin.workflow(name) is None
    if state != TEARDOWN:
        teardowns = [
            p for p in workflow_patches(standin, name) if p["body"]["spec"].get("desiredState") == TEARDOWN
        ]
        assert teardowns, "the failed workflow was not walked to Teardown"


def test_transient_condition_that_clears_lets_the_state_complete(
    lc: Lifecycle, standin: RunningStandIn
) -> None:
    name = create(lc, "#DW DataIn action=error message=rabbit-busy severity=Major")
    lc.advance_to(name, "Setup")
    outcome: dict[str, Any] = {}

    def advance() -> None:
        try:
            outcome["obj"] = lc.advance_to(name, "DataIn")
        except Exception as exc:
            outcome["error"] = exc

    waiter = threading.Thread(target=advance)
    waiter.start()
    wait_until(
        lambda: (standin.workflow(name) or {}).get("status", {}).get("status") == "TransientCondition",
        "the TransientCondition",
    )
    standin.drive(name, "DataIn", "complete")
    waiter.join(30)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["obj"]["status"]["status"] == "Completed"
    lc.teardown(name)


def test_transient_condition_that_outlives_its_limit_fails_the_state(standin: RunningStandIn) -> None:
    lc = Lifecycle(make_config(standin, transient_timeout=0.2))
    name = create(lc, "#DW Setup action=error message=rabbit-still-busy severity=Major")
    with pytest.raises(WorkflowFailed) as failed:
        lc.advance_to(name, "Setup")
    assert "rabbit-still-busy" in str(failed.value)
    assert "TransientCondition" in str(failed.value)
    lc.teardown(name, hurry=True, quiet=True)
    assert standin.workflow(name) is None


def test_refused_create_shows_the_webhooks_message_unchanged(lc: Lifecycle, standin: RunningStandIn) -> None:
    job = new_job()
    with pytest.raises(AdmissionError) as refused:
        lc.create(
            wlm="slurm",
            job_id=job,
            uid=1000,
            gid=1000,
            directives=["#DW jobdw type=bogus capacity=1GiB name=x"],
        )
    text = str(refused.value)
    assert text.startswith('admission webhook "vworkflow.kb.io" denied the request: ')
    assert "bogus" in text or "type" in text
    assert standin.workflow(f"bb{job}") is None


def test_refused_advance_shows_the_webhooks_message(lc: Lifecycle) -> None:
    name = create(lc)
    with pytest.raises(AdmissionError, match="states cannot be skipped"):
        lc.backend.update_desired_state(name, "PreRun")
    lc.teardown(name)


def test_hurried_teardown_sets_hurry_and_teardown_in_one_update(
    lc: Lifecycle, standin: RunningStandIn
) -> None:
    name = create(lc, JOBDW)
    lc.walk(name, ["Setup", "DataIn"])
    standin.clear_requests()
    lc.teardown(name, hurry=True)
    patches = workflow_patches(standin, name)
    touching = [
        p
        for p in patches
        if "desiredState" in p["body"].get("spec", {}) or "hurry" in p["body"].get("spec", {})
    ]
    assert [p["body"]["spec"] for p in touching] == [{"desiredState": "Teardown", "hurry": True}]
    assert standin.workflow(name) is None


def test_finalizer_removal_rereads_after_a_conflicting_update(lc: Lifecycle, standin: RunningStandIn) -> None:
    name = create(lc)
    lc.backend.update_desired_state(name, TEARDOWN)
    lc.backend.wait_for(name, TEARDOWN, timeout=30)
    standin.clear_requests()
    standin.conflict_after_next_get("workflows", name)
    lc.backend.delete(name)
    puts = [(r["method"], r["code"]) for r in standin.requests() if r["path"].endswith(f"/workflows/{name}")]
    assert puts[:2] == [("PUT", 409), ("PUT", 200)]
    assert standin.workflow(name) is None


def test_crd_schema_is_enforced_with_422(lc: Lifecycle) -> None:
    obj = build_workflow(wlm="slurm", job_id=new_job(), uid=1000, gid=1000, directives=[])
    obj["spec"]["userID"] = "not-a-number"
    with pytest.raises(AdmissionError, match=r"is invalid: spec\.userID"):
        lc.backend.create(obj)
    backend: Any = lc.backend
    from kubernetes.client.exceptions import ApiException

    obj["spec"]["userID"] = 1000
    obj["spec"]["desiredState"] = "Bogus"
    with pytest.raises(ApiException) as raw:
        backend._custom.create_namespaced_custom_object(
            "dataworkflowservices.github.io", "v1alpha7", "default", "workflows", obj
        )
    assert raw.value.status == 422


def test_waiting_falls_back_to_polling_when_watch_fails(
    lc: Lifecycle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dwsbridge.errors import DwsBridgeError

    backend: Any = lc.backend

    def broken_watch(*_args: Any, **_kwargs: Any) -> Any:
        raise DwsBridgeError("watch not allowed")

    name = create(lc)
    monkeypatch.setattr(backend, "_watch", broken_watch)
    assert lc.advance_to(name, "Setup")["status"]["ready"] is True
    lc.teardown(name)


def test_restarted_bridge_rebuilds_from_the_cluster_and_finishes(
    standin: RunningStandIn, tmp_path: Path
) -> None:
    lc = Lifecycle(make_config(standin))
    name = create(lc, "#DW DataIn action=wait")
    lc.advance_to(name, "Setup")
    proc = _admin_cli(standin, tmp_path, "advance", name, "DataIn")
    try:
        wait_until(
            lambda: (standin.workflow(name) or {}).get("spec", {}).get("desiredState") == "DataIn", "DataIn"
        )
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    standin.drive(name, "DataIn", "complete")
    restarted = Lifecycle(make_config(standin))  # a new process' view: nothing carried over
    assert restarted.advance_to(name, "DataIn")["status"]["ready"] is True
    restarted.walk(name, ["PreRun", "PostRun", "DataOut"])
    restarted.teardown(name)
    assert standin.workflow(name) is None


def test_restarted_bridge_can_tear_down_a_stuck_workflow(standin: RunningStandIn, tmp_path: Path) -> None:
    lc = Lifecycle(make_config(standin))
    name = create(lc, "#DW Setup action=wait")
    proc = _admin_cli(standin, tmp_path, "advance", name, "Setup")
    try:
        wait_until(
            lambda: (standin.workflow(name) or {}).get("spec", {}).get("desiredState") == "Setup", "Setup"
        )
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    Lifecycle(make_config(standin)).teardown(name, hurry=True)
    assert standin.workflow(name) is None


def _admin_cli(standin: RunningStandIn, tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """`dwsbridge <args>` in its own process, configured by a config file (backend, kubeconfig)."""
    config = tmp_path / "dwsbridge.yaml"
    config.write_text(f"backend: kubernetes\nkubeconfig: {standin.kubeconfig}\nstate_timeout: 60\n")
    env = dict(os.environ, DWSBRIDGE_CONFIG=str(config))
    return subprocess.Popen(
        [sys.executable, "-m", "dwsbridge", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


# --- outside views: kubectl, the admin CLI ------------------------------------------------------


def test_kubectl_lists_a_running_workflow(lc: Lifecycle, standin: RunningStandIn) -> None:
    import shutil

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (Debian package kubernetes-client)")
    name = create(lc)
    lc.advance_to(name, "Setup")
    out = subprocess.run(
        [
            kubectl,
            "--kubeconfig",
            str(standin.kubeconfig),
            "get",
            "workflows.dataworkflowservices.github.io",
            "-A",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, HOME=str(standin.directory)),
    )
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split()[:5] == ["NAMESPACE", "NAME", "STATE", "READY", "STATUS"]
    assert any(row.split()[:5] == ["default", name, "Setup", "true", "Completed"] for row in rows), out.stdout
    lc.teardown(name)


def test_admin_cli_drives_the_kubernetes_backend(
    lc: Lifecycle, standin: RunningStandIn, tmp_path: Path
) -> None:
    name = create(lc, JOBDW)
    config = tmp_path / "local.yaml"
    config.write_text("backend: local\n")  # the command-line flags must win over the file

    def cli(*args: str) -> str:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "dwsbridge",
                *args,
                "--backend",
                "kubernetes",
                "--kubeconfig",
                str(standin.kubeconfig),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, DWSBRIDGE_CONFIG=str(config), DWSBRIDGE_ROOT=str(tmp_path / "root")),
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    for state in ("Setup", "DataIn", "PreRun"):
        assert cli("advance", name, state).strip() == f"{name}: {state} Completed"
    assert name in cli("status")
    env_lines = cli("env", name).splitlines()
    assert f"DW_WORKFLOW_NAME={name}" in env_lines
    assert any(line.startswith("DW_WORKFLOW_TOKEN=") for line in env_lines)
    assert cli("teardown", name, "--hurry").strip() == f"{name}: torn down"
    assert standin.workflow(name) is None


def test_module_import_does_not_load_the_kubernetes_client() -> None:
    code = (
        "import sys, dwsbridge.backends.kubernetes as k;"
        "print('kubernetes' in sys.modules, k.KubernetesBackend.env_known_at)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "PreRun"]


def test_pools_need_no_cluster_and_no_client_import() -> None:
    code = (
        "import sys; from dwsbridge.config import Config; from dwsbridge.lifecycle import Lifecycle;"
        "lc = Lifecycle(Config(backend='kubernetes', kubeconfig='/nonexistent', pool_size=5 << 40));"
        "print([(p.name, p.quantity) for p in lc.pools()], 'kubernetes' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == f"[('dws', {5 << 40})] False"
