"""bench_slurm's account of where a #DW job's time goes, read from slurmctld's log lines (the shapes
Slurm 22.05 writes with DebugFlags=BurstBuffer, copied from the test cluster's log)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_slurm import Bench, where_it_goes

LOG = """\
[2026-12-01T12:46:48.351] _slurm_rpc_submit_batch_job: JobId=5687 InitPrio=4294901757 usec=2138
[2026-12-01T12:46:48.540] burst_buffer/lua: _alloc_job_bb: BURST_BUF: start job allocate JobId=5687
[2026-12-01T12:46:48.622] burst_buffer/lua: _start_stage_in: BURST_BUF: Setup/stage-in complete for JobId=5687
[2026-12-01T12:46:49.064] sched/backfill: _start_job: Started JobId=5687 in debug on dwsbnode
[2026-12-01T12:46:49.085] prolog_running_decr: Configuration for JobId=5687 is complete
[2026-12-01T12:46:49.116] _job_complete: JobId=5687 WEXITSTATUS 0
[2026-12-01T12:46:49.116] _job_complete: JobId=5687 done
[2026-12-01T12:46:49.208] burst_buffer/lua: bb_set_job_bb_state: BURST_BUF: Modify JobId=5687 burst buffer \
state from teardown to complete
[2026-12-01T12:46:50.060] _slurm_rpc_submit_batch_job: JobId=5688 InitPrio=4294901756 usec=1050
[2026-12-01T12:46:50.269] sched: Allocate JobId=5688 NodeList=dwsbnode #CPUs=1 Partition=debug
[2026-12-01T12:46:50.293] _job_complete: JobId=5688 done
[2026-12-01T12:46:50.300] _slurm_rpc_submit_batch_job: JobId=5689 InitPrio=4294901755 usec=1000
"""


def test_the_parts_of_a_dw_jobs_wall_time_come_from_slurmctlds_log(tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "slurmctld.log").write_text(LOG)
    bench = Bench(tmp_path)
    dw, plain = bench.timelines(["5687"]), bench.timelines(["5688"])
    assert set(dw["5687"]) == {"submit", "stage_in", "staged_in", "start", "launched", "end", "torn_down"}
    parts = where_it_goes(dw, plain)
    expected = {
        "first_pass_dw": 0.189,
        "first_pass_plain": 0.209,
        "stage_in": 0.082,
        "next_pass": 0.442,
        "pre_run": 0.021,
        "stage_out": 0.092,
    }
    assert parts == pytest.approx(expected, abs=1e-6)
