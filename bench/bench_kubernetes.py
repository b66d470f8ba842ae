"""The Kubernetes backend, hook by hook, against what the upstream Lua plugin spends on kubectl.

Against the DWS stand-in (testenv/dws-standin, TLS on loopback), measures:

  1. the fixed cost of a hook process: Python start, `import kubernetes` + CustomObjectsApi,
     loading the kubeconfig;
  2. in-process API calls: get, merge patch, a state advance waited for by watch;
  3. each Slurm hook as slurmctld runs it (`python -I -m dwsbridge.slurm <hook> ...`, backend
     kubernetes), for one workflow walked from setup to teardown;
  4. the same hooks handed to the bridge agent (`dwsbridge agent`, which imported the client and connected
     once), as burst_buffer.lua runs them when the agent runs (`python -I -S -c <launcher> <hook> ...`);
  5. `kubectl get workflows.dataworkflowservices.github.io <name> -o json` (discovery cache warm), times
     the number of kubectl calls the upstream plugin makes in that hook.

Run: `.venv/bin/python -m bench.bench_kubernetes [--repeat 5] [--no-write]`. Figures go into
BENCHMARKS.md, section "## Kubernetes backend" (other sections are left alone).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.markdown import write_section
from bench.usage import prog

REPO = Path(__file__).resolve().parent.parent
PYTHON = Path(sys.executable)
sys.path.insert(0, str(REPO / "testenv"))

# kubectl calls the upstream dws-slurm-bb-plugin makes per hook, at the least (its polling loops
# add one `get` per second of waiting): create+get+patch+get for setup, patch+get for the
# middle states (pre_run also patches the Computes), patch+get+delete for teardown, get for bbstat.
UPSTREAM_KUBECTL_CALLS = {
    "setup": 4,
    "data_in": 2,
    "pre_run": 3,
    "post_run": 2,
    "data_out": 2,
    "job_teardown": 3,
    "get_status": 1,
}


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median wall seconds of `fn`."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def run(*cmd: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=check, timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog=prog("bench.bench_kubernetes"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print, do not update BENCHMARKS.md")
    args = parser.parse_args()
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        sys.exit("kubectl is needed for the comparison (Debian package kubernetes-client)")

    from dws_standin import testing

    work = Path(tempfile.mkdtemp(prefix="dwsb-kbench-"))
    standin = testing.start(work / "standin")
    try:
        figures = measure(standin, work, kubectl, args.repeat)
    finally:
        testing.stop(work / "standin")
        shutil.rmtree(work, ignore_errors=True)
    section = render(figures, args.repeat)
    print(section)
    if not args.no_write:
        write_section(REPO / "BENCHMARKS.md", section)
        print(f"updated {REPO / 'BENCHMARKS.md'}")
    return 0


def measure(standin: object, work: Path, kubectl: str, repeat: int) -> dict[str, float]:
    from dwsbridge.config import Config
    from dwsbridge.lifecycle import Lifecycle

    kubeconfig = Path(getattr(standin, "kubeconfig"))  # noqa: B009
    config_file = work / "dwsbridge.yaml"
    config_file.write_text(f"backend: kubernetes\nkubeconfig: {kubeconfig}\nstate_timeout: 60\n")
    (work / "bin").mkdir()
    env = {
        "PATH": str(work / "bin"),  # no squeue: pre_run's node lookup fails at once, this host stands in
        "HOME": str(work),
        "DWSBRIDGE_CONFIG": str(config_file),
    }
    py = str(PYTHON)
    f: dict[str, float] = {}
    f["python_start"] = timed(lambda: run(py, "-I", "-c", "pass"), repeat)
    probe = (
        "import time; t0 = time.perf_counter();"
        "from kubernetes import client, config; client.CustomObjectsApi; t1 = time.perf_counter();"
        "from dwsbridge.config import Config; from dwsbridge.backends.kubernetes import _connect;"
        f"_connect(Config(kubeconfig='{kubeconfig}')); t2 = time.perf_counter();"
        "print(t1 - t0, t2 - t1)"
    )
    imports, connects = [], []
    for _ in range(repeat):
        a, b = run(py, "-I", "-c", probe).stdout.split()
        imports.append(float(a))
        connects.append(float(b))
    f["client_import"] = statistics.median(imports)
    f["connect"] = statistics.median(connects)

    lc = Lifecycle(Config(backend="kubernetes", kubeconfig=kubeconfig, state_timeout=60))
    backend = lc.backend
    name = lc.create(wlm="slurm", job_id=990000, uid=1000, gid=1000, directives=[])
    f["api_get"] = timed(lambda: backend.get(name), repeat * 4)
    from dwsbridge.backends.kubernetes import _WORKFLOWS

    counter = iter(range(1 << 30))
    f["api_patch"] = timed(
        lambda: backend._patch_object(  # type: ignore[attr-defined]
            _WORKFLOWS, name, {"metadata": {"annotations": {"bench": str(next(counter))}}}
        ),
        repeat * 4,
    )
    started = time.perf_counter()
    lc.walk(name, ["Setup", "DataIn", "PreRun", "PostRun", "DataOut"])
    f["api_walk_5_states"] = time.perf_counter() - started
    lc.teardown(name)

    # kubectl, discovery cache warm (as on a slurmctld host that has run it before)
    lc.create(wlm="slurm", job_id=990001, uid=1000, gid=1000, directives=[])
    get = [
        kubectl,
        "--kubeconfig",
        str(kubeconfig),
        "get",
        "workflows.dataworkflowservices.github.io",
        "bb990001",
    ]
    run(*get, "-o", "json", env=env)
    f["kubectl_get"] = timed(lambda: run(*get, "-o", "json", env=env), repeat)
    lc.teardown("bb990001")

    # the hooks, each a fresh process as burst_buffer.lua starts it
    script = work / "job.sh"
    script.write_text("#!/bin/sh\n#DW jobdw type=xfs capacity=1GiB name=scratch pool=dws\nhostname\n")
    hook_args = {
        "setup": ["1000", "1000", "dws", "1073741824", str(script)],
        "data_in": [str(script)],
        "pre_run": [str(script)],
        "post_run": [str(script)],
        "data_out": [str(script)],
        "get_status": [],
        "job_teardown": [str(script), "false"],
    }
    totals: dict[str, list[float]] = {hook: [] for hook in hook_args}
    for n in range(repeat):
        job = str(991000 + n)
        for hook in ("setup", "data_in", "pre_run", "get_status", "post_run", "data_out", "job_teardown"):
            extra = ["workflow", job] if hook == "get_status" else [job, *hook_args[hook]]
            start = time.perf_counter()
            out = run(py, "-I", "-m", "dwsbridge.slurm", hook, *extra, env=env)
            totals[hook].append(time.perf_counter() - start)
            if "rc=0" not in out.stdout:
                raise SystemExit(f"hook {hook} failed: {out.stdout}{out.stderr}")
    for hook, samples in totals.items():
        f[f"hook_{hook}"] = statistics.median(samples)

    # the same hooks through the bridge agent, as burst_buffer.lua starts them with an agent running
    from dwsbridge.cli.slurm import launcher_code

    sock = work / "run" / "agent.sock"
    agent = subprocess.Popen(
        [py, "-I", "-m", "dwsbridge", "agent", "--socket", str(sock), "--config", str(config_file)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(work / "agent.log", "wb"),  # noqa: SIM115 - the agent's, closed at exit
    )
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            if agent.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the agent did not start: {(work / 'agent.log').read_text()}")
            time.sleep(0.05)
        agent_env = dict(env, DWSBRIDGE_AGENT_SOCKET=str(sock))
        launcher = [py, "-I", "-S", "-c", launcher_code(str(REPO))]
        via_agent: dict[str, list[float]] = {hook: [] for hook in hook_args}
        for n in range(repeat):
            job = str(992000 + n)
            for hook in ("setup", "data_in", "pre_run", "get_status", "post_run", "data_out", "job_teardown"):
                extra = ["workflow", job] if hook == "get_status" else [job, *hook_args[hook]]
                start = time.perf_counter()
                out = run(*launcher, hook, *extra, env=agent_env)
                via_agent[hook].append(time.perf_counter() - start)
                if "rc=0" not in out.stdout:
                    raise SystemExit(f"hook {hook} via the agent failed: {out.stdout}{out.stderr}")
        f["agent_relay"] = timed(lambda: run(*launcher, "get_status", "workflow", "x", env=agent_env), repeat)
    finally:
        agent.terminate()
        agent.wait(timeout=60)
    if "hook=setup" not in (work / "agent.log").read_text():
        raise SystemExit("the agent served no hook: the figures would be in-process ones")
    for hook, samples in via_agent.items():
        f[f"agent_{hook}"] = statistics.median(samples)
    return f


def render(f: dict[str, float], repeat: int) -> str:
    ms = lambda seconds: f"{seconds * 1000:.0f} ms"  # noqa: E731
    rows = []
    for hook, calls in UPSTREAM_KUBECTL_CALLS.items():
        ours, alone, theirs = f[f"agent_{hook}"], f[f"hook_{hook}"], calls * f["kubectl_get"]
        verdict = "yes" if ours <= theirs / 2 else "no"
        kubectl = f"{calls} x {ms(f['kubectl_get'])} = {ms(theirs)}"
        rows.append(f"| {hook} | {ms(ours)} | {ms(alone)} | {kubectl} | {ours / theirs:.2f} | {verdict} |")
    table = "\n".join(rows)
    met = sum(1 for row in rows if row.endswith("| yes |"))
    goal = "met by every hook" if met == len(rows) else f"met by {met} of {len(rows)} hooks"
    floor = f["python_start"] + f["client_import"]
    return f"""## Kubernetes backend

Command: `.venv/bin/python -m bench.bench_kubernetes --repeat {repeat}` (median of {repeat}; DWS stand-in on
loopback over TLS, {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores).

Fixed cost of one hook process:

| what | time |
| --- | --- |
| Python start (`python -I -c pass`) | {ms(f["python_start"])} |
| `import kubernetes` + CustomObjectsApi | {ms(f["client_import"])} |
| loading the kubeconfig, building the ApiClient (+ dwsbridge.config) | {ms(f["connect"])} |

In-process API calls (one connection, reused): get {ms(f["api_get"])}, merge patch {ms(f["api_patch"])};
advancing through five states, each waited for by watch: {ms(f["api_walk_5_states"])} in all.

Each Slurm hook as slurmctld runs it, backend kubernetes, a `jobdw` workflow: through the bridge agent
(`dwsbridge agent` running; the hook process is `python -I -S -c <launcher> HOOK ...`, which relays to
it: {ms(f["agent_relay"])} for a hook with no API call) and, for comparison, with no agent (`python -I -m
dwsbridge.slurm HOOK ...` in-process: Python start, `import kubernetes`, kubeconfig, API calls),
against the kubectl calls the upstream Lua plugin makes in that hook, at the least (`kubectl get
workflows.dataworkflowservices.github.io NAME -o json`, discovery cache warm: {ms(f["kubectl_get"])} each;
upstream's polling adds a call per second of waiting, not counted):

| hook | dwsbridge via agent | in-process (no agent) | upstream kubectl | ratio (agent) | at most half? |
| --- | --- | --- | --- | --- | --- |
{table}

With the agent the goal (each hook at most half the kubectl time it replaces) is {goal}. The agent
imported the client and connected once; a hook costs the relay process plus its API calls (a few ms
each; a state advance also waits for DWS, through a watch). Without an agent, Python start plus
`import kubernetes` ({ms(floor)}) is the floor of every hook that talks to Kubernetes, above half of
one kubectl call ({ms(f["kubectl_get"] / 2)}). Upstream's one-second polling, not counted above, is where
both gain most (a watch returns as soon as DWS is done).

Not measured here: job_process, pools and paths, which never touch Kubernetes (pools reports the
configured pool without importing the client); see docs/kubernetes.md.
"""


if __name__ == "__main__":
    sys.exit(main())
