"""An in-memory Flux job manager for tests: jobs go through the RFC 21 states and record RFC 21 eventlog
entries (`{"timestamp", "name", "context"}`), a jobtap plugin is called where flux-core calls one
(job.state.depend, job.state.run, job.state.cleanup, job.event.exception, and on load for active jobs),
and the `dws` service answers requests, or is absent, or never answers a topic.

Everything runs on one deterministic task queue: the scheduler's alloc, the exec system's start and
finish, asynchronous exception raising, RPC responses and the service's deferred work are tasks, and
timers fire in virtual time once the queue is empty. Hooks run an action (cancel, reload the plugin,
...) as a task when a given event is posted, so a test can act "during the prolog" exactly.

Test infrastructure only: product code never imports this module.
"""

from __future__ import annotations

import copy
import json
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from dwsbridge.flux.protocol import ENVIRONMENT_EVENT, Reply, no_service

NEW, DEPEND, PRIORITY, SCHED, RUN, CLEANUP, INACTIVE = (
    "NEW",
    "DEPEND",
    "PRIORITY",
    "SCHED",
    "RUN",
    "CLEANUP",
    "INACTIVE",
)
KILLED_STATUS = 15  # wait status of a task killed by SIGTERM


class Plugin(Protocol):
    def job_depend(self, job: Any) -> None: ...
    def job_run(self, job: Any) -> None: ...
    def job_cleanup(self, job: Any) -> None: ...
    def job_exception(self, job: Any, entry: Mapping[str, Any]) -> None: ...
    def recover(self, job: Any) -> None: ...


class Service(Protocol):
    def handle(self, topic: str, payload: Any, respond: Callable[[Reply], None]) -> None: ...


Task = Callable[[dict[str, str]], int]  # the job's work: gets its environment, returns its exit status


@dataclass
class MemoryJob:
    id: int
    userid: int
    jobspec: dict[str, Any]
    task: Task | None = None
    state: str = NEW
    R: dict[str, Any] | None = None
    eventlog: list[dict[str, Any]] = field(default_factory=list)
    aux: dict[str, Any] = field(default_factory=dict)
    dependencies: set[str] = field(default_factory=set)
    prologs: dict[str, int | None] = field(default_factory=dict)  # description -> status, None = running
    epilogs: dict[str, int | None] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    fatal: bool = False
    started: bool = False
    finished: bool = False
    start_queued: bool = False
    kill_queued: bool = False
    depend_called: bool = False
    clean_queued: bool = False
    cleanup_called: bool = False

    def names(self) -> list[str]:
        return [entry["name"] for entry in self.eventlog]

    def entries(self, name: str) -> list[dict[str, Any]]:
        return [entry for entry in self.eventlog if entry["name"] == name]

    def context(self, name: str) -> dict[str, Any]:
        """The context of the only (or last) `name` event."""
        found = self.entries(name)
        assert found, f"job {self.id} has no {name} event; eventlog: {self.names()}"
        return found[-1]["context"]


@dataclass
class MemoryTimer:
    deadline: float
    callback: Callable[[], None]
    generation: int
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Hook:
    name: str
    action: Callable[[MemoryJob], None]
    description: str | None
    once: bool
    fired: bool = False


class InMemoryJobManager:
    """Implements dwsbridge.flux.jobtap.JobManager for the plugin, and a small `flux`-like API for tests."""

    def __init__(
        self,
        plugin_factory: Callable[[InMemoryJobManager], Plugin] | None = None,
        *,
        service: Service | None = None,
        nodelist: tuple[str, ...] = ("localhost",),
        first_jobid: int = 101,
    ) -> None:
        self.service = service
        self.nodelist = list(nodelist)
        self.clock = 1_700_000_000.0
        self.generation = 0
        self.jobs: dict[int, MemoryJob] = {}
        self.rpcs: list[tuple[str, dict[str, Any]]] = []
        self.hung_topics: set[str] = set()
        self._next_id = first_jobid
        self._tasks: deque[Callable[[], None]] = deque()
        self._timers: list[MemoryTimer] = []
        self._hooks: list[Hook] = []
        self._advancing = False
        self._dirty = False
        self._factory = plugin_factory
        self.plugin: Plugin | None = plugin_factory(self) if plugin_factory else None

    # --- test API ------------------------------------------------------------------------------
    def submit(
        self,
        *,
        userid: int,
        dw: Any = None,
        system: Mapping[str, Any] | None = None,
        task: Task | None = None,
    ) -> int:
        """Submit a one-task job; `dw` becomes attributes.system.dw, `system` adds more attributes."""
        attributes: dict[str, Any] = {"duration": 0}
        if dw is not None:
            attributes["dw"] = dw
        attributes.update(system or {})
        jobspec = {
            "version": 1,
            "resources": [
                {"type": "slot", "count": 1, "label": "task", "with": [{"type": "core", "count": 1}]}
            ],
            "tasks": [{"command": ["true"], "slot": "task", "count": {"per_slot": 1}}],
            "attributes": {"system": attributes},
        }
        jobid = self._next_id
        self._next_id += 1
        job = MemoryJob(jobid, userid, jobspec, task=task)
        self.jobs[jobid] = job
        self._post(job, "submit", {"userid": userid, "urgency": 16, "flags": 0, "version": 1})
        job.state = DEPEND
        self._advance()
        return jobid

    def job_record(self, jobid: int) -> MemoryJob:
        """The job, active or inactive."""
        return self.jobs[jobid]

    def cancel(self, jobid: int, note: str = "") -> None:
        """`flux cancel`: a severity-0 exception of type cancel."""
        self.raise_now(jobid, "cancel", note)

    def raise_now(self, jobid: int, type: str, note: str = "", severity: int = 0) -> None:
        """`flux job raise --type=TYPE`, by a user, at once (raise_exception is the plugin's, queued)."""
        self._exception(self.jobs[jobid], type, severity, note)

    def at(
        self,
        name: str,
        action: Callable[[MemoryJob], None],
        *,
        description: str | None = None,
        once: bool = True,
    ) -> None:
        """When an event `name` (with this context description, if given) is posted, run `action(job)`
        as the next task."""
        self._hooks.append(Hook(name, action, description, once))

    def hang(self, topic: str) -> None:
        """The service receives `topic` requests but never answers them."""
        self.hung_topics.add(topic)

    def reload_plugin(self) -> None:
        """`flux jobtap remove` + `flux jobtap load`: the old instance, its aux data, timers and pending
        responses are gone; the new instance is shown every active job."""
        self.generation += 1
        for timer in self._timers:
            timer.cancel()
        for job in self.active_jobs():
            job.aux.clear()
        self.plugin = self._factory(self) if self._factory else None
        if self.plugin is not None:
            for job in self.active_jobs():
                self.plugin.recover(job)
        self._advance()

    def defer(self, work: Callable[[], None]) -> None:
        """For the service: run `work` later, as a task."""
        self._tasks.append(work)

    def run(self, max_steps: int = 10_000) -> None:
        """Run tasks, then due timers in virtual time, until nothing is left."""
        for _ in range(max_steps):
            if self._tasks:
                self._tasks.popleft()()
                self._advance()
                continue
            timers = sorted((t for t in self._timers if not t.cancelled), key=lambda t: t.deadline)
            if not timers:
                return
            timer = timers[0]
            self._timers.remove(timer)
            self.clock = max(self.clock, timer.deadline)
            if timer.generation == self.generation:
                timer.callback()
                self._advance()
        raise RuntimeError(f"the in-memory job manager did not settle within {max_steps} steps")

    def active_jobs(self) -> list[MemoryJob]:
        return [job for job in self.jobs.values() if job.state != INACTIVE]

    # --- JobManager, for the plugin --------------------------------------------------------------
    def job(self, jobid: int) -> MemoryJob | None:
        job = self.jobs.get(jobid)
        return job if job is not None and job.state != INACTIVE else None

    def dependency_add(self, jobid: int, description: str) -> None:
        job = self._active(jobid)
        if job.state != DEPEND:
            raise RuntimeError(f"job {jobid}: dependency-add outside DEPEND ({job.state})")
        job.dependencies.add(description)
        self._post(job, "dependency-add", {"description": description})

    def dependency_remove(self, jobid: int, description: str) -> None:
        job = self._active(jobid)
        if description not in job.dependencies:
            raise RuntimeError(f"job {jobid}: no dependency {description!r}")
        job.dependencies.discard(description)
        self._post(job, "dependency-remove", {"description": description})
        self._advance()

    def prolog_start(self, jobid: int, description: str) -> None:
        job = self._active(jobid)
        if job.state != RUN or job.started:
            raise RuntimeError(f"job {jobid}: prolog-start outside RUN before start ({job.state})")
        job.prologs[description] = None
        self._post(job, "prolog-start", {"description": description})

    def prolog_finish(self, jobid: int, description: str, status: int) -> None:
        job = self._active(jobid)
        if job.prologs.get(description, 0) is not None:
            raise RuntimeError(f"job {jobid}: prolog {description!r} is not running")
        job.prologs[description] = status
        self._post(job, "prolog-finish", {"description": description, "status": status})
        self._advance()

    def epilog_start(self, jobid: int, description: str) -> None:
        job = self._active(jobid)
        if job.state != CLEANUP:
            raise RuntimeError(f"job {jobid}: epilog-start outside CLEANUP ({job.state})")
        if description in job.epilogs:
            raise RuntimeError(f"job {jobid}: epilog {description!r} started twice")
        job.epilogs[description] = None
        self._post(job, "epilog-start", {"description": description})

    def epilog_finish(self, jobid: int, description: str, status: int) -> None:
        job = self._active(jobid)
        if job.epilogs.get(description, 0) is not None:
            raise RuntimeError(f"job {jobid}: epilog {description!r} is not running")
        job.epilogs[description] = status
        self._post(job, "epilog-finish", {"description": description, "status": status})
        self._advance()

    def post_event(self, jobid: int, name: str, context: dict[str, Any]) -> None:
        job = self._active(jobid)
        self._post(job, name, _wire(context))
        if name == ENVIRONMENT_EVENT:
            job.environment = dict(context.get("variables") or {})

    def raise_exception(self, jobid: int, type: str, severity: int, note: str) -> None:
        def raise_it() -> None:
            job = self.job(jobid)
            if job is not None:
                self._exception(job, type, severity, note)

        self._tasks.append(raise_it)

    def send_rpc(self, topic: str, payload: dict[str, Any], on_reply: Callable[[Reply], None]) -> None:
        request = _wire(payload)
        self.rpcs.append((topic, request))
        generation = self.generation

        def respond(reply: Reply) -> None:
            def deliver() -> None:
                if generation == self.generation:  # an unloaded plugin's callbacks are gone
                    on_reply(Reply(_wire(reply.payload), reply.errnum, reply.errstr))

            self._tasks.append(deliver)

        if self.service is None:
            respond(no_service(topic))
        elif topic not in self.hung_topics:
            self.service.handle(topic, request, respond)

    def start_timer(self, seconds: float, callback: Callable[[], None]) -> MemoryTimer:
        timer = MemoryTimer(self.clock + seconds, callback, self.generation)
        self._timers.append(timer)
        return timer

    # --- the RFC 21 state machine ----------------------------------------------------------------
    def _active(self, jobid: int) -> MemoryJob:
        job = self.job(jobid)
        if job is None:
            raise RuntimeError(f"job {jobid} is not active")
        return job

    def _post(self, job: MemoryJob, name: str, context: dict[str, Any]) -> None:
        self.clock += 0.001
        entry = {"timestamp": round(self.clock, 6), "name": name, "context": context}
        job.eventlog.append(entry)
        for hook in self._hooks:
            if hook.name != name or (hook.once and hook.fired):
                continue
            if hook.description is not None and context.get("description") != hook.description:
                continue
            hook.fired = True
            self._tasks.append(_bind(hook.action, job))

    def _exception(self, job: MemoryJob, type: str, severity: int, note: str) -> None:
        if job.state == INACTIVE:
            return
        context = {"type": type, "severity": severity, "note": note, "userid": job.userid}
        self._post(job, "exception", context)
        if severity == 0:
            job.fatal = True
        if self.plugin is not None:
            self.plugin.job_exception(job, job.eventlog[-1])
        self._advance()

    def _advance(self) -> None:
        """Apply every state transition now possible (re-entrant calls just ask for another pass)."""
        if self._advancing:
            self._dirty = True
            return
        self._advancing = True
        try:
            self._dirty = True
            while self._dirty:
                self._dirty = False
                for job in self.active_jobs():
                    self._step(job)
        finally:
            self._advancing = False

    def _step(self, job: MemoryJob) -> None:
        if job.state == DEPEND:
            if not job.depend_called:
                job.depend_called = True
                if self.plugin is not None:
                    self.plugin.job_depend(job)
            if job.fatal:
                self._enter_cleanup(job)
            elif not job.dependencies:
                self._post(job, "depend", {})
                job.state = PRIORITY
                self._post(job, "priority", {"priority": 16})
                job.state = SCHED
                self._tasks.append(lambda: self._alloc(job))
        elif job.state in (PRIORITY, SCHED):
            if job.fatal:
                self._enter_cleanup(job)
        elif job.state == RUN:
            if any(status is None for status in job.prologs.values()):
                return
            if job.started:
                if job.fatal and not job.finished and not job.kill_queued:
                    job.kill_queued = True
                    self._tasks.append(lambda: self._finish(job))
                return
            if job.fatal:
                self._enter_cleanup(job)
            elif all(status == 0 for status in job.prologs.values()) and not job.start_queued:
                job.start_queued = True
                self._tasks.append(lambda: self._start(job))
        elif job.state == CLEANUP:
            if any(status is None for status in job.epilogs.values()) or job.clean_queued:
                return
            job.clean_queued = True  # a round trip to the scheduler: the free request, then its answer
            self._tasks.append(lambda: self._tasks.append(lambda: self._free_and_clean(job)))

    def _free_and_clean(self, job: MemoryJob) -> None:
        if any(status is None for status in job.epilogs.values()):  # a reloaded plugin restarted one
            job.clean_queued = False
            return
        if job.R is not None:
            self._post(job, "free", {})
        self._post(job, "clean", {})
        job.state = INACTIVE

    def _alloc(self, job: MemoryJob) -> None:
        if job.state != SCHED:
            return
        job.R = {
            "version": 1,
            "execution": {
                "R_lite": [{"rank": "0", "children": {"core": "0"}}],
                "nodelist": list(self.nodelist),
                "starttime": self.clock,
                "expiration": 0.0,
            },
        }
        self._post(job, "alloc", {})
        job.state = RUN
        if self.plugin is not None:
            self.plugin.job_run(job)

    def _start(self, job: MemoryJob) -> None:
        if job.state != RUN or job.fatal or any(s is None for s in job.prologs.values()):
            job.start_queued = False
            return
        self._post(job, "start", {})
        job.started = True
        self._tasks.append(lambda: self._finish(job))

    def _finish(self, job: MemoryJob) -> None:
        if job.finished:
            return
        status = KILLED_STATUS if job.fatal else (job.task(dict(job.environment)) if job.task else 0)
        job.finished = True
        self._post(job, "finish", {"status": status})
        self._enter_cleanup(job)
        self._post(job, "release", {"ranks": "all", "final": True})

    def _enter_cleanup(self, job: MemoryJob) -> None:
        job.state = CLEANUP
        if not job.cleanup_called and self.plugin is not None:
            job.cleanup_called = True
            self.plugin.job_cleanup(job)
        self._dirty = True


def _bind(action: Callable[[MemoryJob], None], job: MemoryJob) -> Callable[[], None]:
    return lambda: action(job)


def _wire(payload: Any) -> Any:
    """What crosses a Flux message: JSON, so no shared objects between sender and receiver."""
    return None if payload is None else json.loads(json.dumps(copy.deepcopy(payload)))
