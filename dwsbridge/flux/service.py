"""The `dws.*` service: each request walks the job's Workflow (`fluxjob-<id>`) with the shared lifecycle.

One typed method per request (`create`, `setup`, `post_run`, `teardown`, `abort`), and `handle()` for
the RPC form: it reads the request, answers a malformed one at once with an error response, and
defers the work (inline by default; the in-memory job manager queues it, the real-Flux adapter runs it
on a worker). Replies are `{"success": bool, "errstr"?: str}`; `dws.setup` adds `variables`.

Unlike flux-coral2, teardown after a cancellation or an exception uses DWS's `hurry`: a hurry request
(`dws.teardown`, `dws.abort`, or a job that never ran) also stops a walk in progress between states.
"""

from __future__ import annotations

import errno
import logging
import pwd
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from dwsbridge.errors import Cancelled, DirectiveError, DwsBridgeError, WorkflowNotFound
from dwsbridge.flux import protocol
from dwsbridge.flux.protocol import MalformedRequest, Reply
from dwsbridge.workflow import DATA_IN, DATA_OUT, POST_RUN, PRE_RUN, SETUP, STATES, workflow_name

if TYPE_CHECKING:
    from dwsbridge.directives import Limits, RuleSet
    from dwsbridge.lifecycle import Lifecycle

WLM = "flux"
log = logging.getLogger("dwsbridge.flux")

Defer = Callable[[Callable[[], None]], None]
Respond = Callable[[Reply], None]


def run_now(work: Callable[[], None]) -> None:
    work()


def flux_directives(
    dw: Any,
    presets: Mapping[str, str] | None = None,
    ruleset: RuleSet | None = None,
    limits: Limits | None = None,
    backend: str | None = None,
) -> list[str]:
    """The job's `attributes.system.dw`, split and validated as DWS will receive it. Raises
    DirectiveError / ValidationFailed with the same text a Slurm user gets for the same lines."""
    from dwsbridge.directives import DEFAULT_LIMITS, split_flux, validate_job

    texts = split_flux(dw, presets)
    if not texts:
        raise DirectiveError('attributes.system.dw holds no #DW directives (e.g. -S dw="#DW jobdw ...")')
    directives = validate_job(
        texts, ruleset=ruleset, wlm=WLM, limits=limits or DEFAULT_LIMITS, backend=backend
    )
    return [d.text for d in directives]


class DwsService:
    """What flux-coral2's coral2_dws does, on the shared lifecycle, for either backend."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        *,
        defer: Defer | None = None,
        default_gid: int | None = None,
        ruleset: RuleSet | None = None,
        per_thread: Callable[[], Lifecycle] | None = None,
    ) -> None:
        self.config = lifecycle.config
        self._lifecycle = lifecycle
        self._owner = threading.get_ident()
        self._per_thread = per_thread
        self._local = threading.local()
        self._defer = defer or run_now
        self._default_gid = default_gid
        self._ruleset = ruleset
        self._lock = threading.Lock()
        self._hurry: dict[int, threading.Event] = {}
        self._teardowns: dict[int, threading.Lock] = {}

    @property
    def lifecycle(self) -> Lifecycle:
        """The lifecycle for the calling thread: workers get their own when `per_thread` is given
        (the local backend's SQLite connection belongs to the thread that opened it)."""
        if self._per_thread is None or threading.get_ident() == self._owner:
            return self._lifecycle
        lifecycle: Lifecycle | None = getattr(self._local, "lifecycle", None)
        if lifecycle is None:
            lifecycle = self._local.lifecycle = self._per_thread()
        return lifecycle

    @property
    def ruleset(self) -> RuleSet:
        if self._ruleset is None:
            from dwsbridge.directives import RuleSet

            self._ruleset = RuleSet.load(self.config.ruleset)
        return self._ruleset

    # --- hurry ---------------------------------------------------------------------------------
    def request_hurry(self, jobid: int) -> None:
        """Mark the job cancelled at once: a walk in progress stops at its next state."""
        self._hurry_event(jobid).set()

    def in_hurry(self, jobid: int) -> bool:
        with self._lock:
            event = self._hurry.get(jobid)
        return event is not None and event.is_set()

    def _hurry_event(self, jobid: int) -> threading.Event:
        with self._lock:
            return self._hurry.setdefault(jobid, threading.Event())

    def _forget(self, jobid: int) -> None:
        with self._lock:
            self._hurry.pop(jobid, None)

    # --- the requests, typed ---------------------------------------------------------------------
    def create(
        self, jobid: int, userid: int, dw: Any, *, failure_tolerance: Any = None, resources: Any = None
    ) -> str:
        """Validate the directives, create the Workflow and see Proposal through."""
        if failure_tolerance is not None:
            try:
                protocol.parse_failure_tolerance(failure_tolerance)
            except ValueError as exc:
                raise DwsBridgeError(str(exc)) from None
        directives = flux_directives(
            dw, self.config.flux_presets, self.ruleset, self.config.directive_limits, self.config.backend
        )
        name = workflow_name(WLM, jobid)
        lc = self.lifecycle
        if lc.exists(name):
            current = lc.status(name)
            if current.uid == userid and current.status != "Error" and current.desired != "Teardown":
                log.info("workflow=%s job=%s create: exists already, reusing it", name, jobid)
                return name
            raise DwsBridgeError(f"workflow {name} already exists (uid {current.uid}, {current.desired})")
        gid = self.gid_of(userid)
        lc.create(wlm=WLM, job_id=jobid, uid=userid, gid=gid, directives=directives)  # logs "created"
        return name

    def gid_of(self, uid: int) -> int:
        try:
            return pwd.getpwuid(uid).pw_gid
        except KeyError:
            if self._default_gid is not None:
                return self._default_gid
            raise DwsBridgeError(
                f"user id {uid} has no passwd entry on the service's host, so the job's group is unknown"
            ) from None

    def setup(self, jobid: int, R: Any = None) -> dict[str, str]:
        """Setup, DataIn, PreRun; return the job's environment (status.env + DW_WORKFLOW_TOKEN)."""
        name = self._existing(jobid, "setup")
        hosts = protocol.hosts_of(R)
        if hosts:
            self.lifecycle.set_computes(name, hosts)
        self._walk(jobid, name, (SETUP, DATA_IN, PRE_RUN))
        env = self.lifecycle.environment(name)
        log.info("workflow=%s job=%s setup: %d variable(s) for the job", name, jobid, len(env))
        return env

    def post_run(self, jobid: int, run_started: bool) -> None:
        """PostRun, DataOut, Teardown; straight to a hurried Teardown for a job that never ran."""
        name = workflow_name(WLM, jobid)
        lc = self.lifecycle
        if not lc.exists(name):
            log.info("workflow=%s job=%s post_run: no workflow (already torn down)", name, jobid)
            self._forget(jobid)
            return
        if not run_started:
            self._teardown(jobid, name, hurry=True)
            return
        try:
            self._walk(jobid, name, (POST_RUN, DATA_OUT))
        except DwsBridgeError:
            if self.in_hurry(jobid):  # a dws.teardown overtook the walk: its teardown stands
                self._teardown(jobid, name, hurry=True)
                return
            lc.teardown(name, hurry=True, quiet=True)
            self._forget(jobid)
            raise
        self._teardown(jobid, name, hurry=self.in_hurry(jobid))

    def teardown(self, jobid: int) -> None:
        """A job exception: tear down now, in a hurry (stops data movement in flight)."""
        self.request_hurry(jobid)
        self._teardown(jobid, workflow_name(WLM, jobid), hurry=True)

    def abort(self, jobid: int) -> None:
        """The epilog timed out: the job is released without waiting; tear down in a hurry."""
        log.warning("job=%s dws-epilog timed out: tearing the workflow down in a hurry", jobid)
        self.teardown(jobid)

    # --- helpers -------------------------------------------------------------------------------
    def _existing(self, jobid: int, what: str) -> str:
        name = workflow_name(WLM, jobid)
        if self.in_hurry(jobid):
            raise Cancelled(f"workflow {name}: {what} not started, the job was cancelled")
        if not self.lifecycle.exists(name):
            raise WorkflowNotFound(f"workflow {name} does not exist (did dws.create fail?)")
        return name

    def _walk(self, jobid: int, name: str, states: tuple[str, ...]) -> None:
        cancel = self._hurry_event(jobid)
        reached = STATES.index(self.lifecycle.status(name).desired)
        for state in states:
            if STATES.index(state) < reached:
                continue  # a repeated request (the plugin was reloaded): this state is behind us
            if cancel.is_set():
                raise Cancelled(f"workflow {name}: stopped before {state}, the job was cancelled")
            self.lifecycle.advance_to(name, state, cancel=cancel)

    def _teardown(self, jobid: int, name: str, *, hurry: bool) -> None:
        """One teardown of a job at a time: a hurried one running beside the step it overtook and
        that step's own cleanup do not both walk the workflow (the second finds it gone)."""
        with self._lock:
            lock = self._teardowns.setdefault(jobid, threading.Lock())
        with lock:
            if not self.lifecycle.exists(name):
                self._forget(jobid)
                return
            try:
                self.lifecycle.teardown(name, hurry=hurry)
            finally:
                self._forget(jobid)
        with self._lock:
            if not lock.locked():
                self._teardowns.pop(jobid, None)
        log.info("workflow=%s job=%s torn down hurry=%s", name, jobid, hurry)

    # --- the RPC form ----------------------------------------------------------------------------
    def handle(self, topic: str, payload: Any, respond: Respond) -> None:
        """Answer one `dws.*` request; malformed requests get an error response (EPROTO) at once."""
        try:
            jobid, work = self._decode(topic, payload)
        except MalformedRequest as exc:
            log.error("%s", exc)
            respond(Reply.error(errno.EPROTO, str(exc)))
            return
        except LookupError:
            respond(protocol.no_service(topic))
            return
        if topic in (protocol.TEARDOWN, protocol.ABORT):
            self.request_hurry(jobid)
        self._defer(lambda: respond(Reply(self._answer(topic, jobid, work))))

    def _decode(self, topic: str, payload: Any) -> tuple[int, Callable[[], dict[str, Any] | None]]:
        if topic not in protocol.TOPICS:
            raise LookupError(topic)
        jobid = protocol.request_jobid(payload, topic)
        field = protocol.request_field
        if topic == protocol.CREATE:
            userid = field(payload, "userid", int, topic)
            if "dw_directives" not in payload:
                raise MalformedRequest(f"malformed {topic} request: 'dw_directives' is missing")
            dw = payload["dw_directives"]
            tolerance = payload.get("failure_tolerance")
            return jobid, lambda: _none(self.create(jobid, userid, dw, failure_tolerance=tolerance))
        if topic == protocol.SETUP:
            R = payload.get("R")
            if R is not None and not isinstance(R, Mapping):
                raise MalformedRequest(f"malformed {topic} request: 'R' must be an object")
            return jobid, lambda: {"variables": self.setup(jobid, R)}
        if topic == protocol.POST_RUN:
            run_started = field(payload, "run_started", bool, topic)
            return jobid, lambda: self.post_run(jobid, run_started)
        if topic == protocol.TEARDOWN:
            return jobid, lambda: self.teardown(jobid)
        return jobid, lambda: self.abort(jobid)

    def _answer(self, topic: str, jobid: int, work: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
        try:
            extra = work() or {}
        except DwsBridgeError as exc:
            log.error("%s job=%s failed: %s", topic, jobid, exc)
            return protocol.failure(str(exc))
        except Exception as exc:
            log.exception("%s job=%s crashed", topic, jobid)
            return protocol.failure(f"dwsbridge internal error in {topic}: {type(exc).__name__}: {exc}")
        return protocol.success(**extra)


def _none(_: object) -> None:
    return None
