"""The real-Flux adapter, driven by a fake handle and a fake journal: journal events in, lifecycle work,
then events posted through job-manager.post-event.post and exceptions through job_raise."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from dwsbridge.config import Config
from dwsbridge.flux import protocol, realflux
from dwsbridge.flux.realflux import EPILOG_DONE_EVENT, POST_EVENT_TOPIC, JournalFollower, PerJobWorkers
from dwsbridge.flux.service import DwsService
from tests.flux_support import RecordingLifecycle

UID = os.getuid()
JOBDW = "#DW jobdw type=xfs capacity=1GiB name=data"
R = {"version": 1, "execution": {"R_lite": [], "nodelist": ["node[1-2]"]}}


class FakeFuture:
    def __init__(self, error: OSError | None = None) -> None:
        self.error = error

    def get(self) -> dict[str, Any]:
        if self.error:
            raise self.error
        return {}


@dataclass
class FakeHandle:
    rpcs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    raised: list[tuple[int, str, int, str]] = field(default_factory=list)
    inactive: set[int] = field(default_factory=set)

    def rpc(self, topic: str, payload: dict[str, Any]) -> FakeFuture:
        self.rpcs.append((topic, json.loads(json.dumps(payload))))
        if payload.get("id") in self.inactive:
            return FakeFuture(OSError(2, "job is inactive"))
        return FakeFuture()

    def job_raise(self, handle: Any, jobid: int, type: str, severity: int, note: str) -> None:
        assert handle is self
        self.raised.append((jobid, type, severity, note))

    def posted(self, jobid: int) -> list[tuple[str, dict[str, Any]]]:
        return [(p["name"], p["context"]) for t, p in self.rpcs if t == POST_EVENT_TOPIC and p["id"] == jobid]


def event(jobid: int, name: str, context: dict[str, Any] | None = None) -> SimpleNamespace:
    return SimpleNamespace(jobid=jobid, name=name, context=context or {}, jobspec=None, R=None)


def submit(jobid: int, dw: Any = JOBDW, **system: Any) -> SimpleNamespace:
    jobspec = (
        {"attributes": {"system": {"dw": dw, **system}}} if dw is not None else {"attributes": {"system": {}}}
    )
    e = event(jobid, "submit", {"userid": UID, "urgency": 16})
    e.jobspec = jobspec
    return e


def alloc(jobid: int) -> SimpleNamespace:
    e = event(jobid, "alloc")
    e.R = R
    return e


@pytest.fixture
def follower(local_config: Config) -> JournalFollower:
    handle = FakeHandle()
    return JournalFollower(DwsService(RecordingLifecycle(local_config)), handle, job_raise=handle.job_raise)


def feed(follower: JournalFollower, *events: SimpleNamespace) -> None:
    for e in events:
        follower.handle_event(e)
        follower.drain_results()


def lifecycle(follower: JournalFollower) -> RecordingLifecycle:
    lc = follower.service.lifecycle
    assert isinstance(lc, RecordingLifecycle)
    return lc


def test_normal_job_gets_its_environment_then_its_epilog_done(follower: JournalFollower) -> None:
    handle = follower.handle
    feed(follower, submit(7), alloc(7))
    [(name, context)] = handle.posted(7)
    assert name == protocol.ENVIRONMENT_EVENT
    assert context["variables"]["DW_WORKFLOW_NAME"] == "fluxjob-7"
    assert "DW_JOB_data" in context["variables"]
    assert lifecycle(follower).backend.get("fluxjob-7")["status"]["computes"]["data"] == [
        {"name": "node1"},
        {"name": "node2"},
    ]
    feed(follower, event(7, "start"), event(7, "finish", {"status": 0}))
    assert handle.posted(7)[-1] == (EPILOG_DONE_EVENT, {"status": 0})
    feed(follower, event(7, "clean"))
    assert lifecycle(follower).teardowns == [("fluxjob-7", False)]
    assert lifecycle(follower).list() == []
    assert handle.raised == []


def test_jobs_without_dw_are_ignored(follower: JournalFollower) -> None:
    feed(follower, submit(8, dw=None), alloc(8), event(8, "start"), event(8, "finish"), event(8, "clean"))
    assert follower.handle.rpcs == []
    assert follower.jobs == {}


def test_bad_directives_raise_a_dws_exception(follower: JournalFollower) -> None:
    feed(follower, submit(9, dw="#DW jobdw type=bogus capacity=1GiB name=data"))
    [(jobid, type, severity, note)] = follower.handle.raised
    assert (jobid, type, severity) == (9, "dws", 0)
    assert note.startswith(protocol.NOTE_PREFIX + "#DW jobdw type=bogus")
    assert lifecycle(follower).list() == []


def test_bad_failure_tolerance_raises_a_dws_exception(follower: JournalFollower) -> None:
    feed(follower, submit(10, dw_failure_tolerance=-2))
    assert follower.handle.raised == [
        (10, "dws", 0, protocol.NOTE_PREFIX + "dw_failure_tolerance must be a non-negative integer, not -2")
    ]


def test_cancelled_before_it_ran_is_torn_down_in_a_hurry(follower: JournalFollower) -> None:
    feed(follower, submit(11), event(11, "exception", {"type": "cancel", "severity": 0}))
    assert lifecycle(follower).teardowns == [("fluxjob-11", True)]
    follower.handle.inactive.add(11)
    feed(follower, event(11, "clean"))
    assert lifecycle(follower).list() == []
    assert follower.jobs == {}


def test_cancelled_during_setup_is_torn_down_in_a_hurry(follower: JournalFollower) -> None:
    feed(follower, submit(12), alloc(12), event(12, "exception", {"type": "cancel", "severity": 0}))
    assert lifecycle(follower).teardowns == [("fluxjob-12", True)]
    assert follower.handle.posted(12)[-1] == (EPILOG_DONE_EVENT, {"status": 0})


def test_exception_while_running_lets_the_epilog_stage_out(follower: JournalFollower) -> None:
    feed(
        follower,
        submit(13),
        alloc(13),
        event(13, "start"),
        event(13, "exception", {"type": "timeout", "severity": 0}),
    )
    assert lifecycle(follower).teardowns == []
    feed(follower, event(13, "finish", {"status": 36608}))
    assert lifecycle(follower).teardowns == [("fluxjob-13", False)]


def test_exception_during_the_epilog_hurries(local_config: Config) -> None:
    """A walk running on a worker stops at its next state once the exception is seen."""
    handle = FakeHandle()
    main = RecordingLifecycle(local_config)
    gate, reached = threading.Event(), threading.Event()

    class SlowLifecycle(RecordingLifecycle):
        def advance_to(self, name: str, state: str, **kwargs: Any) -> Any:
            if state == "PostRun":
                reached.set()
                assert gate.wait(30)
            return super().advance_to(name, state, **kwargs)

    service = DwsService(main, per_thread=lambda: SlowLifecycle(local_config, main.teardowns))
    with ThreadPoolExecutor(max_workers=2) as pool:
        follower = JournalFollower(service, handle, job_raise=handle.job_raise, workers=PerJobWorkers(pool))
        feed(follower, submit(14), alloc(14), event(14, "start"), event(14, "finish"))
        assert reached.wait(30)
        feed(follower, event(14, "exception", {"type": "cancel", "severity": 0}))
        gate.set()
    follower.drain_results()
    lc = main
    assert lc.teardowns == [("fluxjob-14", True)]
    assert lc.list() == []
    assert [name for name, _ in handle.posted(14)].count(EPILOG_DONE_EVENT) == 1


def test_epilog_timeout_aborts(follower: JournalFollower) -> None:
    feed(follower, submit(15), alloc(15), event(15, "start"))
    feed(follower, event(15, "exception", {"type": "dws-epilog-timeout", "severity": 0}))
    assert lifecycle(follower).teardowns == [("fluxjob-15", True)]


def test_setup_failure_raises_and_posts_no_environment(follower: JournalFollower, tmp_path: Any) -> None:
    dw = f"{JOBDW} #DW copy_in source={tmp_path}/missing destination=$DW_JOB_data/"
    feed(follower, submit(16, dw=dw), alloc(16))
    [(_, type, _, note)] = follower.handle.raised
    assert type == "dws" and "DataIn failed" in note
    assert protocol.ENVIRONMENT_EVENT not in [name for name, _ in follower.handle.posted(16)]
    feed(follower, event(16, "exception", {"type": "dws", "severity": 0, "note": note}))
    assert lifecycle(follower).list() == []


def test_workflows_of_jobs_flux_no_longer_has_are_torn_down_after_the_history(
    follower: JournalFollower,
) -> None:
    lc = lifecycle(follower)
    lc.create(wlm="flux", job_id=99, uid=UID, gid=os.getgid(), directives=[JOBDW])
    lc.create(wlm="flux", job_id=17, uid=UID, gid=os.getgid(), directives=[JOBDW])
    feed(follower, submit(17), event(-1, "sentinel"))
    assert lc.teardowns == [("fluxjob-99", True)]
    assert [s.name for s in lc.list()] == ["fluxjob-17"]


def replaying(follower: JournalFollower) -> JournalFollower:
    follower.live = False  # as run_service starts: the journal's history comes first
    return follower


def test_replayed_history_never_acts_on_inactive_jobs_nor_reposts(follower: JournalFollower) -> None:
    lc = lifecycle(replaying(follower))
    lc.create(wlm="flux", job_id=21, uid=UID, gid=os.getgid(), directives=[JOBDW])
    done = [submit(20), alloc(20), event(20, "start"), event(20, "finish"), event(20, EPILOG_DONE_EVENT)]
    running = [submit(21), alloc(21), event(21, protocol.ENVIRONMENT_EVENT), event(21, "start")]
    feed(follower, *done, event(20, "clean"), *running, event(-1, "sentinel"))
    assert follower.handle.rpcs == [] and follower.handle.raised == []
    assert [s.name for s in lc.list()] == ["fluxjob-21"]
    assert lc.teardowns == []
    feed(follower, event(21, "finish"), event(21, "clean"))
    assert [name for name, _ in follower.handle.posted(21)] == [EPILOG_DONE_EVENT]
    assert lc.list() == []


def test_replay_resumes_each_active_job_where_it_stands(follower: JournalFollower) -> None:
    lc = lifecycle(replaying(follower))
    lc.create(wlm="flux", job_id=23, uid=UID, gid=os.getgid(), directives=[JOBDW])
    held = [submit(22)]  # submitted while the service was down: created at the sentinel
    prolog = [submit(23), alloc(23)]  # its setup had not finished
    cancelled = [submit(24), event(24, "exception", {"type": "cancel", "severity": 0})]
    feed(follower, *held, *prolog, *cancelled, event(-1, "sentinel"))
    assert sorted(s.name for s in lc.list()) == ["fluxjob-22", "fluxjob-23"]
    assert [name for name, _ in follower.handle.posted(23)] == [protocol.ENVIRONMENT_EVENT]
    assert follower.handle.posted(22) == []
    assert follower.handle.posted(24) == [(EPILOG_DONE_EVENT, {"status": 0})]


def test_dws_hurry_while_running_skips_stage_out(follower: JournalFollower) -> None:
    feed(follower, submit(25), alloc(25), event(25, "start"))
    feed(follower, event(25, "exception", {"type": protocol.HURRY_TYPE, "severity": 0}))
    assert lifecycle(follower).teardowns == [("fluxjob-25", True)]
    feed(follower, event(25, "finish"), event(25, "clean"))
    assert lifecycle(follower).teardowns == [("fluxjob-25", True)]
    assert [name for name, _ in follower.handle.posted(25)].count(EPILOG_DONE_EVENT) == 1


def test_hurried_teardown_does_not_wait_behind_the_running_step(local_config: Config) -> None:
    """A cancel during a long DataIn tears down at once, beside the step (which then stops)."""
    handle = FakeHandle()
    main = RecordingLifecycle(local_config)
    gate, reached = threading.Event(), threading.Event()

    class SlowLifecycle(RecordingLifecycle):
        def advance_to(self, name: str, state: str, **kwargs: Any) -> Any:
            if state == "DataIn":
                reached.set()
                gate.wait(30)
            return super().advance_to(name, state, **kwargs)

    service = DwsService(main, per_thread=lambda: SlowLifecycle(local_config, main.teardowns))
    with ThreadPoolExecutor(max_workers=2) as pool:
        follower = JournalFollower(service, handle, job_raise=handle.job_raise, workers=PerJobWorkers(pool))
        feed(follower, submit(26), alloc(26))
        assert reached.wait(30)
        feed(follower, event(26, "exception", {"type": "cancel", "severity": 0}))
        deadline = time.monotonic() + 10
        while not main.teardowns and time.monotonic() < deadline:
            time.sleep(0.02)
        torn_down_before_the_step_ended = list(main.teardowns)
        gate.set()
    deadline = time.monotonic() + 10  # the hurried teardown's thread reports when it is done
    while EPILOG_DONE_EVENT not in [name for name, _ in handle.posted(26)] and time.monotonic() < deadline:
        follower.drain_results()
        time.sleep(0.02)
    assert torn_down_before_the_step_ended == [("fluxjob-26", True)]
    assert handle.posted(26) == [(EPILOG_DONE_EVENT, {"status": 0})]
    assert protocol.ENVIRONMENT_EVENT not in [name for name, _ in handle.posted(26)]
    assert main.list() == []


class FakeJournal:
    def __init__(self, events: list[Any]) -> None:
        self.events = list(events)
        self.started = False

    def start(self) -> FakeJournal:
        self.started = True
        return self

    def poll(self, timeout: float = -1.0) -> Any:
        if not self.events:
            return None
        item = self.events.pop(0)
        if item is TimeoutError:
            raise TimeoutError
        return item


def test_follow_reads_the_journal_until_it_ends(follower: JournalFollower) -> None:
    journal = FakeJournal([submit(18), TimeoutError, alloc(18), event(18, "start"), event(18, "finish")])
    follower.follow(journal, poll_interval=0.01)
    assert journal.started
    assert [name for name, _ in follower.handle.posted(18)] == [protocol.ENVIRONMENT_EVENT, EPILOG_DONE_EVENT]


def test_per_job_workers_keep_each_jobs_order() -> None:
    done: list[tuple[int, int]] = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        workers = PerJobWorkers(pool)
        for step in range(20):
            for job in (1, 2):
                workers.submit(job, functools.partial(done.append, (job, step)))
    for job in (1, 2):
        assert [s for j, s in done if j == job] == list(range(20))


def fake_flux(responses: dict[str, subprocess.CompletedProcess[str]], calls: list[list[str]]) -> Any:
    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return responses.get(argv[2], subprocess.CompletedProcess(argv, 0, "", ""))

    return run


def done(argv: str, stdout: Any, rc: int = 0) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(
        [argv], rc, json.dumps(stdout) if stdout is not None else "", "timeout"
    )


def test_prolog_waits_for_dws_environment_only_for_dw_jobs() -> None:
    calls: list[list[str]] = []
    plain = fake_flux({"info": done("info", {"attributes": {"system": {}}})}, calls)
    assert realflux.perilog_prolog("ƒ1", 60, plain) == 0
    assert len(calls) == 1
    dw = fake_flux(
        {
            "info": done("info", {"attributes": {"system": {"dw": JOBDW}}}),
            "wait-event": done("w", {"name": "x"}),
        },
        calls,
    )
    assert realflux.perilog_prolog("ƒ2", 60, dw) == 0
    assert calls[-1] == ["flux", "job", "wait-event", "-f", "json", "-t", "60", "ƒ2", "dws_environment"]


def test_epilog_exits_with_the_posted_status_and_raises_on_timeout() -> None:
    calls: list[list[str]] = []
    info = done("info", {"attributes": {"system": {"dw": JOBDW}}})
    ok = fake_flux(
        {"info": info, "wait-event": done("w", {"name": EPILOG_DONE_EVENT, "context": {"status": 0}})}, calls
    )
    assert realflux.perilog_epilog("ƒ3", 60, ok) == 0
    failed = fake_flux(
        {"info": info, "wait-event": done("w", {"context": {"status": 1, "errstr": "x"}})}, calls
    )
    assert realflux.perilog_epilog("ƒ3", 60, failed) == 1
    timeout = fake_flux({"info": info, "wait-event": done("w", None, rc=1)}, calls)
    assert realflux.perilog_epilog("ƒ3", 60, timeout) == 1
    assert calls[-1][:5] == ["flux", "job", "raise", "--type=dws-epilog-timeout", "--severity=0"]
    assert calls[-1][-1] == protocol.NOTE_PREFIX + "dws-epilog did not finish within 60s"
