"""The real-Flux adapter, on what Python can use on a running Flux (DESIGN Part 4): Flux cannot load a
Python jobtap plugin, so this service follows the job-manager journal instead and reaches the same
outcome as dws-jobtap with the same event names:

- `submit` of a job with `attributes.system.dw` -> create the Workflow (Proposal); failure raises a
  `dws` exception (flux-python cannot hold a job in DEPEND; the `dws-setup` prolog below holds it).
- `alloc` -> Setup, DataIn, PreRun, then post `dws_environment {variables}`. The perilog prolog
  (`jobtap_plugin.py prolog`) waits for that event; the Lua shell plugin (flux/dws-env.lua) exports it.
- `finish` -> PostRun, DataOut, Teardown, then post `dws_epilog_done {status, errstr?}`, which the
  perilog epilog (`jobtap_plugin.py epilog`) waits for.
- a fatal exception before the job started or after it finished (a cancel during stage-in or
  stage-out), one of type `dws-hurry` at any time, and `clean` of a job whose workflow is still there
  -> Teardown with hurry; `dws-epilog-timeout` -> abort. A cancel of a running job stages out.

Events go through `job-manager.post-event.post`, exceptions through `flux.job.job_raise`. Flux calls
happen on the thread that reads the journal; workflow walks run on a worker per job (in order); a
hurried teardown runs at once beside them (it stops their copies). No state is kept that the journal
and the cluster do not hold: on restart the journal's history and the workflows left in the backend
rebuild it, and only active jobs are acted on.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dwsbridge.errors import DwsBridgeError
from dwsbridge.flux import protocol
from dwsbridge.flux.service import WLM, DwsService

log = logging.getLogger("dwsbridge.flux.realflux")

POST_EVENT_TOPIC = "job-manager.post-event.post"
EPILOG_DONE_EVENT = "dws_epilog_done"
JobRaise = Callable[[Any, int, str, int, str], Any]


def flux_python(module: str = "flux") -> Any:
    """A flux-python module, imported only when a real Flux is being used."""
    import importlib

    try:
        found = importlib.import_module(module)
    except ImportError:
        found = None
    if found is None or getattr(found, "__file__", None) is None:  # a namespace (e.g. a checkout's flux/)
        raise DwsBridgeError(f"flux-python ({module}) is not installed here: run this with `flux python`")
    return found


def flux_job_raise(handle: Any, jobid: int, type: str, severity: int, note: str) -> Any:
    return flux_python("flux.job").job_raise(handle, jobid, type, severity, note)


@dataclass
class TrackedJob:
    """What the journal has told us about one `dw` job."""

    jobid: int
    userid: int
    jobspec: dict[str, Any]
    allocated: bool = False
    R: Any = None
    started: bool = False
    finished: bool = False
    torn_down: bool = False
    hurried: bool = False
    aborted: bool = False
    env_posted: bool = False
    epilog_done: bool = False


class PerJobWorkers:
    """Runs each job's work in submission order, jobs in parallel; `None` pool runs work inline.
    `urgent` work (a hurried teardown) does not queue: it runs at once beside the job's running step."""

    def __init__(self, pool: ThreadPoolExecutor | None) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self._queues: dict[int, deque[Callable[[], None]]] = {}

    def submit(self, jobid: int, work: Callable[[], None]) -> None:
        if self._pool is None:
            work()
            return
        with self._lock:
            pending = self._queues.get(jobid)
            if pending is not None:
                pending.append(work)
                return
            self._queues[jobid] = deque([work])
        self._pool.submit(self._drain, jobid)

    def urgent(self, jobid: int, work: Callable[[], None]) -> None:
        if self._pool is None:
            work()
            return
        threading.Thread(target=self._run, args=(jobid, work), name=f"dws-hurry-{jobid}", daemon=True).start()

    def _drain(self, jobid: int) -> None:
        while True:
            with self._lock:
                pending = self._queues[jobid]
                if not pending:
                    del self._queues[jobid]
                    return
                work = pending.popleft()
            self._run(jobid, work)

    @staticmethod
    def _run(jobid: int, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception:
            log.exception("job=%s work crashed", jobid)


@dataclass
class JournalFollower:
    """Turns journal events into lifecycle work and its results into Flux events and exceptions.

    The journal first replays the history of every job, active or inactive, then a sentinel, then live
    events. History only rebuilds what we know; at the sentinel each active job's work resumes where
    it stands (a step it passed is never redone, a posted event never posted again); inactive jobs are
    never acted on, and workflows no active job owns are torn down."""

    service: DwsService
    handle: Any
    job_raise: JobRaise = flux_job_raise
    workers: PerJobWorkers = field(default_factory=lambda: PerJobWorkers(None))
    jobs: dict[int, TrackedJob] = field(default_factory=dict)
    live: bool = True  # False while a full journal replays its history (run_service)
    _results: queue.SimpleQueue[Callable[[], None]] = field(default_factory=queue.SimpleQueue)

    # --- the journal ---------------------------------------------------------------------------
    def handle_event(self, event: Any) -> None:
        jobid = int(getattr(event, "jobid", -1))
        if jobid < 0:
            self.history_done()
            return
        name = event.name
        context = getattr(event, "context", None) or {}
        if name == "submit":
            self._submitted(jobid, context, getattr(event, "jobspec", None))
            return
        job = self.jobs.get(jobid)
        if job is None:
            return
        if name == "clean":
            if self.live and not job.torn_down:
                self._teardown(job, abort=False)
            self.jobs.pop(jobid, None)
        elif not self.live:
            self._remember(job, name, context, event)
        elif name == "alloc":
            job.allocated, job.R = True, getattr(event, "R", None)
            self._setup(job)
        elif name == "start":
            job.started = True
        elif name == "finish":
            job.finished = True
            self._post_run(job)
        elif name == "exception" and context.get("severity") == 0:
            self._exception(job, str(context.get("type", "")))

    def _remember(self, job: TrackedJob, name: str, context: dict[str, Any], event: Any) -> None:
        """A history event: note where the job stands, act on nothing yet."""
        if name == "alloc":
            job.allocated, job.R = True, getattr(event, "R", None)
        elif name == "start":
            job.started = True
        elif name == "finish":
            job.finished = True
        elif name == protocol.ENVIRONMENT_EVENT:
            job.env_posted = True
        elif name == EPILOG_DONE_EVENT:
            job.epilog_done = True
        elif name == "exception" and context.get("severity") == 0:
            kind = str(context.get("type", ""))
            if kind == protocol.EPILOG_TIMEOUT_TYPE:
                job.aborted = True
            elif self._hurries(job, kind):
                job.hurried = True

    def history_done(self) -> None:
        """At the sentinel: resume each active job where it stands; tear down workflows of jobs Flux
        no longer has (they ended while the service was down)."""
        self.live = True
        for job in list(self.jobs.values()):
            if job.epilog_done:
                job.torn_down = True
            elif job.aborted or job.hurried:
                self._teardown(job, abort=job.aborted)
            elif job.finished:
                self._post_run(job)
            elif job.allocated and not job.env_posted:
                self._create(job)
                self._setup(job)
            elif not job.allocated:
                self._create(job)
        for status in self.service.lifecycle.list():
            if status.wlm != WLM or not status.job_id.isdigit():
                continue
            if int(status.job_id) not in self.jobs:
                log.warning("workflow=%s belongs to no active job: tearing it down", status.name)
                orphan = TrackedJob(int(status.job_id), status.uid, {})
                self._teardown(orphan, abort=False)
        log.info("journal history replayed: %d active dw job(s)", len(self.jobs))

    def _submitted(self, jobid: int, context: dict[str, Any], jobspec: Any) -> None:
        if protocol.dw_attribute(jobspec) is None:
            return
        userid = int(context.get("userid", -1))
        job = self.jobs.setdefault(jobid, TrackedJob(jobid, userid, jobspec))
        if self.live:
            self._create(job)

    def _create(self, job: TrackedJob) -> None:
        dw = protocol.dw_attribute(job.jobspec)
        tolerance = protocol.system_attributes(job.jobspec).get(protocol.TOLERANCE_ATTRIBUTE)

        def create() -> None:
            if job.hurried:
                return
            try:
                self.service.create(job.jobid, job.userid, dw, failure_tolerance=tolerance)
            except DwsBridgeError as exc:
                message = str(exc)
                if not job.hurried:
                    self._later(lambda: self._raise(job, message))
                return
            if job.hurried:  # cancelled while Proposal ran: the teardown may have missed it
                self.service.teardown(job.jobid)

        self.workers.submit(job.jobid, create)

    def _setup(self, job: TrackedJob) -> None:
        def setup() -> None:
            if job.hurried:
                return
            try:
                env = self.service.setup(job.jobid, job.R)
            except DwsBridgeError as exc:
                message = str(exc)
                if not job.hurried:
                    self._later(lambda: self._raise(job, message))
                return
            self._later(lambda: self._post_environment(job, env))

        self.workers.submit(job.jobid, setup)

    def _post_environment(self, job: TrackedJob, env: dict[str, str]) -> None:
        if not job.hurried and not job.env_posted:
            job.env_posted = True
            self._post(job, protocol.ENVIRONMENT_EVENT, {"variables": env})

    def _post_run(self, job: TrackedJob) -> None:
        def post_run() -> None:
            try:
                self.service.post_run(job.jobid, run_started=job.started and not job.hurried)
            except DwsBridgeError as exc:
                message = str(exc)
                if not job.hurried:  # else the hurried teardown reports
                    self._later(lambda: self._epilog_done(job, 1, message))
                return
            self._later(lambda: self._epilog_done(job, 0))

        job.torn_down = True
        self.workers.submit(job.jobid, post_run)

    @staticmethod
    def _hurries(job: TrackedJob, exc_type: str) -> bool:
        """`dws-hurry` always; any other fatal exception before the job started or once it finished
        (a cancel during stage-in or stage-out). A cancel of a running job stages out, like scancel."""
        return exc_type == protocol.HURRY_TYPE or not job.started or job.finished

    def _exception(self, job: TrackedJob, exc_type: str) -> None:
        if exc_type == protocol.EPILOG_TIMEOUT_TYPE:
            self._teardown(job, abort=True)
        elif self._hurries(job, exc_type):
            self._teardown(job, abort=False)

    def _teardown(self, job: TrackedJob, *, abort: bool) -> None:
        """Hurry: at once, beside whatever step runs (its copies are stopped), then the workflow goes."""
        if job.hurried and job.torn_down and not abort:
            return
        job.hurried = job.torn_down = True
        self.service.request_hurry(job.jobid)

        def teardown() -> None:
            try:
                (self.service.abort if abort else self.service.teardown)(job.jobid)
            except DwsBridgeError as exc:
                message = str(exc)
                self._later(lambda: self._epilog_done(job, 1, message))
                return
            self._later(lambda: self._epilog_done(job, 0))

        self.workers.urgent(job.jobid, teardown)

    # --- results, on the journal's thread ------------------------------------------------------
    def _later(self, action: Callable[[], None]) -> None:
        self._results.put(action)

    def drain_results(self) -> None:
        while True:
            try:
                action = self._results.get_nowait()
            except queue.Empty:
                return
            try:
                action()
            except Exception:
                log.exception("posting a result to Flux failed")

    def _epilog_done(self, job: TrackedJob, status: int, errstr: str = "") -> None:
        if job.epilog_done:
            return
        job.epilog_done = True
        context: dict[str, Any] = {"status": status}
        if errstr:
            context["errstr"] = errstr
            self._raise(job, errstr)
        self._post(job, EPILOG_DONE_EVENT, context)

    def _post(self, job: TrackedJob, name: str, context: dict[str, Any]) -> None:
        try:
            self.handle.rpc(POST_EVENT_TOPIC, {"id": job.jobid, "name": name, "context": context}).get()
        except OSError as exc:  # the job went inactive meanwhile: nothing waits for the event
            log.info("job=%s cannot post %s: %s", job.jobid, name, exc)

    def _raise(self, job: TrackedJob, errstr: str) -> None:
        note = protocol.exception_note(errstr)
        try:
            self.job_raise(self.handle, job.jobid, protocol.EXCEPTION_TYPE, 0, note)
        except OSError as exc:
            log.info("job=%s cannot raise an exception: %s", job.jobid, exc)

    # --- the loop ------------------------------------------------------------------------------
    def follow(
        self, consumer: Any, *, poll_interval: float = 0.5, stop: threading.Event | None = None
    ) -> None:
        """Read the journal until it ends (or `stop` is set), handing results back to Flux as they come."""
        consumer.start()
        while stop is None or not stop.is_set():
            try:
                event = consumer.poll(timeout=poll_interval)
            except TimeoutError:
                event = False
            if event is None:
                break
            if event is not False:
                self.handle_event(event)
            self.drain_results()
        self.drain_results()


def run_service(config_path: str | None = None, *, threads: int = 8) -> int:
    """`flux python flux/jobtap_plugin.py service`: run as root beside the broker (docs/flux.md)."""
    from dwsbridge.config import load_config
    from dwsbridge.lifecycle import Lifecycle

    config = load_config(config_path)
    handle = flux_python().Flux()
    service = DwsService(Lifecycle(config), per_thread=lambda: Lifecycle(config))
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dws") as pool:
        follower = JournalFollower(service, handle, workers=PerJobWorkers(pool), live=False)
        consumer = flux_python("flux.job").JournalConsumer(handle, full=True, include_sentinel=True)
        log.info("following the job-manager journal (backend %s)", config.backend)
        follower.follow(consumer)
    return 0


# --- perilog commands: hold the job while the service works ---------------------------------------

Run = Callable[..., Any]


def _flux_json(run: Run, *args: str, timeout: float | None = None) -> Any:
    import json
    import subprocess

    result = run(["flux", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, ["flux", *args], result.stdout, result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else None


def job_has_dw(jobid: str, run: Run) -> bool:
    return protocol.dw_attribute(_flux_json(run, "job", "info", jobid, "jobspec")) is not None


def perilog_prolog(jobid: str, timeout: float, run: Run) -> int:
    """Hold a `dw` job until the service has walked Setup, DataIn, PreRun and posted dws_environment.
    A fatal exception (the service's, or a cancel) makes perilog stop this command."""
    import subprocess

    if not job_has_dw(jobid, run):
        return 0
    try:
        _flux_json(
            run, "job", "wait-event", "-f", "json", "-t", f"{timeout:g}", jobid, protocol.ENVIRONMENT_EVENT
        )
    except subprocess.CalledProcessError as exc:
        log.error("job=%s no %s within %gs: %s", jobid, protocol.ENVIRONMENT_EVENT, timeout, exc.stderr)
        return 1
    return 0


def perilog_epilog(jobid: str, timeout: float, run: Run) -> int:
    """Hold a `dw` job until PostRun, DataOut and Teardown are done (dws_epilog_done); on timeout raise
    dws-epilog-timeout, which makes the service abort (tear down in a hurry) and releases the job."""
    import subprocess

    if not job_has_dw(jobid, run):
        return 0
    try:
        entry = _flux_json(
            run, "job", "wait-event", "-f", "json", "-t", f"{timeout:g}", jobid, EPILOG_DONE_EVENT
        )
    except subprocess.CalledProcessError:
        note = protocol.exception_note(f"{protocol.EPILOG} did not finish within {timeout:g}s")
        run(
            ["flux", "job", "raise", f"--type={protocol.EPILOG_TIMEOUT_TYPE}", "--severity=0", jobid, note],
            check=False,
        )
        return 1
    context = (entry or {}).get("context") or {}
    return 0 if context.get("status", 1) == 0 else 1
