"""dws-jobtap's job-manager side: which dependency, prolog, epilog, events and exceptions a `dw` job gets,
and when each `dws.*` request is sent. Written against the `JobManager` protocol, so the same logic runs
on the in-memory job manager of the tests and documents what the real-Flux adapter reproduces.

Per-job state lives in the job's aux (as a jobtap plugin keeps it) and is rebuilt from the job's eventlog
when the plugin is reloaded mid-job: `dws-create` removed means the workflow exists, an unfinished
`dws-setup` prolog or `dws-epilog` epilog means a request was in flight and is sent again (the service
is idempotent), `dws_environment` means the job ran.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dwsbridge.flux import protocol
from dwsbridge.flux.protocol import Reply

log = logging.getLogger("dwsbridge.flux.jobtap")

AUX_KEY = "dws"
DEPEND, RUN, CLEANUP = "DEPEND", "RUN", "CLEANUP"


class Timer(Protocol):
    def cancel(self) -> None: ...


class Job(Protocol):
    """What a jobtap callback sees of a job."""

    @property
    def id(self) -> int: ...

    @property
    def userid(self) -> int: ...

    @property
    def state(self) -> str: ...

    @property
    def jobspec(self) -> dict[str, Any]: ...

    @property
    def R(self) -> dict[str, Any] | None: ...

    @property
    def eventlog(self) -> Sequence[Mapping[str, Any]]: ...

    @property
    def aux(self) -> dict[str, Any]:
        """The plugin's per-job data; gone when the plugin is unloaded."""
        ...


class JobManager(Protocol):
    """The job-manager calls dws-jobtap makes (flux_jobtap_* and flux_rpc in the C plugin)."""

    def job(self, jobid: int) -> Job | None:
        """The active job, or None once it is inactive."""
        ...

    def dependency_add(self, jobid: int, description: str) -> None: ...

    def dependency_remove(self, jobid: int, description: str) -> None: ...

    def prolog_start(self, jobid: int, description: str) -> None: ...

    def prolog_finish(self, jobid: int, description: str, status: int) -> None: ...

    def epilog_start(self, jobid: int, description: str) -> None: ...

    def epilog_finish(self, jobid: int, description: str, status: int) -> None: ...

    def post_event(self, jobid: int, name: str, context: dict[str, Any]) -> None: ...

    def raise_exception(self, jobid: int, type: str, severity: int, note: str) -> None:
        """Asynchronous, as flux_job_raise() from a jobtap plugin is."""
        ...

    def send_rpc(self, topic: str, payload: dict[str, Any], on_reply: Callable[[Reply], None]) -> None:
        """Send a request to the service; `on_reply` gets its response (or error) later."""
        ...

    def start_timer(self, seconds: float, callback: Callable[[], None]) -> Timer: ...


@dataclass
class DwsJobState:
    """Where one `dw` job stands with its workflow (the plugin's aux for the job)."""

    create_pending: bool = False
    created: bool = False
    prolog_active: bool = False
    run_started: bool = False
    epilog_started: bool = False
    epilog_active: bool = False
    epilog_owner: str = ""  # the request whose reply finishes the epilog
    post_run_deferred: bool = False  # the job reached cleanup while dws.create was in flight
    teardown_requested: bool = False
    timer: Timer | None = None

    @classmethod
    def from_eventlog(cls, eventlog: Sequence[Mapping[str, Any]], state: str) -> DwsJobState:
        st = cls()
        for entry in eventlog:
            name, context = entry.get("name"), entry.get("context") or {}
            description = context.get("description")
            if name == "dependency-add" and description == protocol.CREATE_DEPENDENCY:
                st.create_pending = True
            elif name == "dependency-remove" and description == protocol.CREATE_DEPENDENCY:
                st.create_pending, st.created = False, True
            elif name == "prolog-start" and description == protocol.SETUP_PROLOG:
                st.prolog_active = True
            elif name == "prolog-finish" and description == protocol.SETUP_PROLOG:
                st.prolog_active = False
            elif name == protocol.ENVIRONMENT_EVENT:
                st.run_started = True
            elif name == "epilog-start" and description == protocol.EPILOG:
                st.epilog_started = st.epilog_active = True
                st.epilog_owner = protocol.POST_RUN
            elif name == "epilog-finish" and description == protocol.EPILOG:
                st.epilog_active = False
            elif name == "exception" and context.get("severity") == 0 and st.epilog_active:
                st.epilog_owner = protocol.TEARDOWN
        if st.create_pending and state != DEPEND:
            st.create_pending = False  # the dependency went with a fatal exception
        return st


class DwsJobtap:
    """The callbacks dws-jobtap registers: job.state.depend, job.state.run, job.state.cleanup,
    job.event.exception, and `recover` for each active job when the plugin is (re)loaded."""

    def __init__(self, jm: JobManager, *, epilog_timeout: float = 0.0) -> None:
        self.jm = jm
        self.epilog_timeout = epilog_timeout

    # --- state ---------------------------------------------------------------------------------
    def state_of(self, job: Job) -> DwsJobState:
        st = job.aux.get(AUX_KEY)
        if not isinstance(st, DwsJobState):
            st = DwsJobState.from_eventlog(job.eventlog, job.state)
            job.aux[AUX_KEY] = st
        return st

    @staticmethod
    def wants_dws(job: Job) -> bool:
        return protocol.dw_attribute(job.jobspec) is not None

    # --- job.state.depend ------------------------------------------------------------------------
    def job_depend(self, job: Job) -> None:
        if not self.wants_dws(job):
            return
        st = self.state_of(job)
        self.jm.dependency_add(job.id, protocol.CREATE_DEPENDENCY)
        st.create_pending = True
        self._send_create(job)

    def _send_create(self, job: Job) -> None:
        system = protocol.system_attributes(job.jobspec)
        payload: dict[str, Any] = {
            "dw_directives": system.get(protocol.DW_ATTRIBUTE),
            "jobid": job.id,
            "resources": job.jobspec.get("resources"),
            "userid": job.userid,
        }
        if protocol.TOLERANCE_ATTRIBUTE in system:
            payload["failure_tolerance"] = system[protocol.TOLERANCE_ATTRIBUTE]
        self.jm.send_rpc(protocol.CREATE, payload, lambda reply: self._create_reply(job.id, reply))

    def _create_reply(self, jobid: int, reply: Reply) -> None:
        job = self.jm.job(jobid)
        if job is None:
            return
        st = self.state_of(job)
        st.create_pending = False
        ok, errstr, _ = outcome(reply, protocol.CREATE)
        if ok:
            st.created = True
            if job.state == DEPEND:
                self.jm.dependency_remove(jobid, protocol.CREATE_DEPENDENCY)
        else:
            self._raise(jobid, errstr)
        if st.post_run_deferred:
            st.post_run_deferred = False
            if ok:
                self._send_post_run(job, st)
            else:
                self._finish_epilog(job, st, 0)

    # --- job.state.run ---------------------------------------------------------------------------
    def job_run(self, job: Job) -> None:
        if not self.wants_dws(job):
            return
        st = self.state_of(job)
        self.jm.prolog_start(job.id, protocol.SETUP_PROLOG)
        st.prolog_active = True
        self._send_setup(job)

    def _send_setup(self, job: Job) -> None:
        payload = {"jobid": job.id, "R": job.R or {}}
        self.jm.send_rpc(protocol.SETUP, payload, lambda reply: self._setup_reply(job.id, reply))

    def _setup_reply(self, jobid: int, reply: Reply) -> None:
        job = self.jm.job(jobid)
        if job is None:
            return
        st = self.state_of(job)
        if not st.prolog_active:
            log.info("job=%s dws.setup answered after the prolog ended; ignored", jobid)
            return
        ok, errstr, payload = outcome(reply, protocol.SETUP)
        variables = payload.get("variables") if payload else None
        if ok and not _is_environment(variables):
            ok, errstr = False, "malformed dws.setup reply: 'variables' must map names to strings"
        st.prolog_active = False
        if not ok:
            self.jm.prolog_finish(jobid, protocol.SETUP_PROLOG, 1)
            self._raise(jobid, errstr)
            return
        assert isinstance(variables, dict)
        self.jm.post_event(jobid, protocol.ENVIRONMENT_EVENT, {"variables": dict(variables)})
        st.run_started = True
        self.jm.prolog_finish(jobid, protocol.SETUP_PROLOG, 0)

    # --- job.state.cleanup -----------------------------------------------------------------------
    def job_cleanup(self, job: Job) -> None:
        if not self.wants_dws(job):
            return
        st = self.state_of(job)
        if st.epilog_started or not (st.created or st.create_pending):
            return  # at most one epilog; none when no workflow was ever made
        self._start_epilog(job, st)
        if st.create_pending:
            st.post_run_deferred = True
            return
        self._send_post_run(job, st)

    def _start_epilog(self, job: Job, st: DwsJobState) -> None:
        self.jm.epilog_start(job.id, protocol.EPILOG)
        st.epilog_started = st.epilog_active = True
        self._arm_timer(job.id, st)

    def _arm_timer(self, jobid: int, st: DwsJobState) -> None:
        if self.epilog_timeout > 0:
            st.timer = self.jm.start_timer(self.epilog_timeout, lambda: self._epilog_timed_out(jobid))

    def _send_post_run(self, job: Job, st: DwsJobState) -> None:
        st.epilog_owner = protocol.POST_RUN
        payload = {"jobid": job.id, "run_started": st.run_started}
        self.jm.send_rpc(
            protocol.POST_RUN, payload, lambda reply: self._epilog_reply(job.id, protocol.POST_RUN, reply)
        )

    def _send_teardown(self, job: Job, st: DwsJobState, *, owns_epilog: bool) -> None:
        st.teardown_requested = True
        if owns_epilog:
            st.epilog_owner = protocol.TEARDOWN
        self.jm.send_rpc(
            protocol.TEARDOWN,
            {"jobid": job.id},
            lambda reply: self._epilog_reply(job.id, protocol.TEARDOWN, reply),
        )

    def _epilog_reply(self, jobid: int, topic: str, reply: Reply) -> None:
        job = self.jm.job(jobid)
        ok, errstr, _ = outcome(reply, topic)
        if job is None:
            return
        st = self.state_of(job)
        if not st.epilog_active or st.epilog_owner != topic:
            if not ok:
                log.warning("job=%s %s failed: %s", jobid, topic, errstr)
            return
        self._finish_epilog(job, st, 0 if ok else 1)
        if not ok:
            self._raise(jobid, errstr)

    def _finish_epilog(self, job: Job, st: DwsJobState, status: int) -> None:
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None
        st.epilog_active = False
        self.jm.epilog_finish(job.id, protocol.EPILOG, status)

    def _epilog_timed_out(self, jobid: int) -> None:
        job = self.jm.job(jobid)
        if job is None:
            return
        st = self.state_of(job)
        st.timer = None
        if st.epilog_active:
            note = protocol.exception_note(
                f"{protocol.EPILOG} did not finish within {self.epilog_timeout:g}s"
            )
            self.jm.raise_exception(jobid, protocol.EPILOG_TIMEOUT_TYPE, 0, note)

    # --- job.event.exception ---------------------------------------------------------------------
    def job_exception(self, job: Job, entry: Mapping[str, Any]) -> None:
        context = entry.get("context") or {}
        if context.get("severity") != 0 or not self.wants_dws(job):
            return
        st = self.state_of(job)
        if context.get("type") == protocol.EPILOG_TIMEOUT_TYPE:
            if st.epilog_active:
                st.epilog_owner = protocol.ABORT
                self._finish_epilog(job, st, 1)
                self.jm.send_rpc(
                    protocol.ABORT,
                    {"jobid": job.id},
                    lambda reply: self._log_reply(job.id, protocol.ABORT, reply),
                )
            return
        if context.get("type") == protocol.HURRY_TYPE and not st.epilog_started:
            st.run_started = False  # dws-hurry: once the job ends, straight to a hurried Teardown
        if st.prolog_active:
            st.prolog_active = False
            if not st.teardown_requested:  # stop the setup walk; the job will not run
                self._send_teardown(job, st, owns_epilog=False)
            self.jm.prolog_finish(job.id, protocol.SETUP_PROLOG, 1)
        elif st.epilog_active and st.epilog_owner == protocol.POST_RUN:
            self._send_teardown(job, st, owns_epilog=True)

    def _log_reply(self, jobid: int, topic: str, reply: Reply) -> None:
        ok, errstr, _ = outcome(reply, topic)
        if not ok:
            log.warning("job=%s %s failed: %s", jobid, topic, errstr)

    # --- plugin (re)load -------------------------------------------------------------------------
    def recover(self, job: Job) -> None:
        """The plugin was loaded while `job` was active: pick up where the last instance stopped."""
        if not self.wants_dws(job):
            return
        st = self.state_of(job)
        if st.create_pending:
            self._send_create(job)
        if st.prolog_active:
            self._send_setup(job)
        if st.epilog_active:
            self._arm_timer(job.id, st)
            if st.epilog_owner == protocol.TEARDOWN:
                self._send_teardown(job, st, owns_epilog=True)
            else:
                self._send_post_run(job, st)
        elif job.state == CLEANUP and not st.epilog_started and st.created:
            self.job_cleanup(job)

    def _raise(self, jobid: int, errstr: str) -> None:
        self.jm.raise_exception(jobid, protocol.EXCEPTION_TYPE, 0, protocol.exception_note(errstr))


def outcome(reply: Reply, topic: str) -> tuple[bool, str, dict[str, Any] | None]:
    """(success, errstr, payload) of a dws.* response; error responses and bad payloads are failures."""
    if reply.is_error:
        hint = " (is the dwsbridge Flux service running?)" if "No service matching" in reply.errstr else ""
        return False, f"{topic}: {reply.errstr}{hint}", None
    payload = reply.payload
    if not isinstance(payload, dict) or not isinstance(payload.get("success"), bool):
        return False, f"malformed {topic} reply: expected {{'success': bool, 'errstr'?: str}}", None
    errstr = payload.get("errstr")
    if payload["success"]:
        return True, "", payload
    if not isinstance(errstr, str) or not errstr:
        errstr = f"{topic} RPC returned failure"
    return False, errstr, payload


def _is_environment(variables: Any) -> bool:
    return isinstance(variables, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in variables.items()
    )
