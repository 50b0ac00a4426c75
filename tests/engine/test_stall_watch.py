"""The stall watchdog: no progress for `timeout_s` -> one call naming each rank's step and where it is.

The real cases (a spawned rank that never enters the collective, a single rank that hangs) run end to end in
tests/benchmarks/test_smoke_accelerator.py."""

import json
import os
import re
import threading

from frcnn_pipeline.engine.stall_watch import StallWatchdog, describe_stall
from frcnn_pipeline.engine.step_audit import rank_record_path


def test_no_progress_calls_once_with_each_ranks_step_and_stack(tmp_path):
    record = {"rank": 0, "pid": os.getpid(), "iteration": 3, "phase": "forward", "updates": 7}
    rank_record_path(tmp_path, 0).write_text(json.dumps(record))
    calls, called = [], threading.Event()

    def on_stall(message, ranks):
        calls.append((message, ranks))
        called.set()

    with StallWatchdog(tmp_path, world_size=2, timeout_s=0.5, on_stall=on_stall):
        assert called.wait(30)  # this thread, "stalled" here
    [(message, (rank0, rank1))] = calls
    assert re.match(
        r"no progress for \d+ s: rank 0 at iteration 3 \(forward\), rank 1 stalled outside", message
    )
    assert rank0["iteration"] == 3 and not rank0["waiting"]
    assert rank0["state"].startswith("outside any collective, in wait (")  # threading.Event.wait
    assert any("test_stall_watch.py" in frame for frame in rank0["stack"])
    assert rank1 == {"rank": 1, "state": "no progress recorded (it never built its model)", "stack": []}


def test_ranks_waiting_in_collectives_are_told_from_the_one_that_stalled():
    waiting = {
        "rank": 0,
        "iteration": 2,
        "phase": "backward",
        "waiting": True,
        "state": "waits in a collective",
    }
    stalled = {
        "rank": 1,
        "iteration": 2,
        "phase": "forward",
        "waiting": False,
        "state": "outside any collective",
    }
    assert describe_stall([waiting, stalled], 120).startswith(
        "no progress for 120 s: rank 1 at iteration 2 (forward) stalled and never reached the collective "
        "that rank 0 waits in. rank 0: iteration 2, after the forward: loss all-reduce, backward"
    )
    both = describe_stall([waiting, {**stalled, "waiting": True}], 120)
    assert both.startswith("no progress for 120 s: every rank waits in a collective that never returns")
