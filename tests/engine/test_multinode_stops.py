"""Multinode runs that do not finish: a killed worker, SIGTERM to `kedro run` (SLURM's stop) and the
resubmitted job that resumes, Ctrl-C on one node of two, a lost node. Each stops every node within a bound,
names why and where, keeps the last checkpoint and leaves no worker running (multinode_runs.py says how the
nodes run)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from multinode_runs import (
    RUN_BOUND_S,
    finish,
    free_port,
    kedro_run,
    trained_versions,
    training_run,
    two_nodes,
)

from frcnn_pipeline.engine.checkpoint import CheckpointManager, load_checkpoint

# The bound for a stop signal: checkpoint, message and exit within 30 s.
SIGNAL_EXIT_BOUND_S = 30


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _spawned_workers(pid: int) -> list[int]:
    """The training workers spawned by a Kedro process (not multiprocessing's resource tracker)."""
    workers = []
    for child in _children(pid):
        command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"spawn_main" in command and b"resource_tracker" not in command:
            workers.append(child)
    return workers


def _running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may never reap orphans)."""
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _wait_until(condition, what: str, timeout: float = RUN_BOUND_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _long_run(checkpoint_period: int) -> str:
    return f"train.solver.max_iter=100000,train.checkpoint.period={checkpoint_period}"


def test_a_killed_worker_stops_the_other_node_naming_it_and_keeps_the_last_checkpoint(project):
    checkpoints = CheckpointManager(project / "data" / "06_models" / "checkpoints" / "tiny")
    port = free_port()
    nodes = [kedro_run(project, "train", two_nodes(rank, port) + "," + _long_run(checkpoint_period=2))
             for rank in (0, 1)]  # fmt: skip
    _wait_until(lambda: len(checkpoints.checkpoints()) >= 2, "two checkpoints")
    (worker,) = _spawned_workers(nodes[1].pid)
    os.kill(worker, signal.SIGKILL)
    outputs = [process.communicate(timeout=RUN_BOUND_S)[0] for process in nodes]

    assert all(process.returncode != 0 for process in nodes)
    named = "Rank 1 (node 1, "
    assert named in outputs[0] and "failed first: worker exited with signal SIGKILL" in outputs[0], outputs[
        0
    ][-4000:]
    assert named in outputs[1]
    last = checkpoints.latest()
    state = load_checkpoint(last)
    assert state["iteration"] == int(last.stem.split("_")[1]) >= 2
    assert not trained_versions(project), "an unfinished run saves no model"


# SLURM's SIGTERM; Ctrl-C: to one node of two below, and to two workers in test_loader_workers.py.
def test_sigterm_to_kedro_saves_the_iteration_stops_the_workers_and_the_resubmitted_job_resumes(project):
    log = project / "data" / "08_reporting" / "train_logs" / "tiny.jsonl"
    run = kedro_run(project, "train", "runtime.nproc_per_node=2," + _long_run(checkpoint_period=1000))
    _wait_until(lambda: log.is_file() and len(log.read_text().splitlines()) >= 2, "two iterations")
    workers = _spawned_workers(run.pid)
    assert len(workers) == 2
    os.kill(run.pid, signal.SIGTERM)
    output = run.communicate(timeout=RUN_BOUND_S)[0]

    assert run.returncode != 0
    message = next(line for line in output.splitlines() if "Training stopped by" in line)
    assert "Training stopped by SIGTERM after iteration" in message, output[-4000:]
    iteration = int(message.split("after iteration ")[1].split()[0])
    checkpoint = project / "data" / "06_models" / "checkpoints" / "tiny" / f"model_{iteration:07d}.pth"
    assert checkpoint.is_file() and load_checkpoint(checkpoint)["iteration"] == iteration
    assert not any(_running(pid) for pid in workers), "no worker is left training"
    assert re.search(r"train: [\d,]+/100,000 it .*\(stopped\)", output), "rank 0's progress, on the console"
    # The resubmitted job continues from there, here on 1 worker × 2 images: the same total batch. (The
    # shorter schedule, to end the test soon, is a solver change that must be allowed.)
    resume = (
        f"train.images_per_device=2,train.solver.max_iter={iteration + 1},"
        "train.checkpoint.allow_solver_change=true"
    )
    (resumed,) = finish(kedro_run(project, "train", resume))
    record = training_run(project)
    assert record["resumed_from_iteration"] == iteration and record["total_batch"] == 2, resumed[-3000:]
    assert [entry["change"] for entry in record["resume_changes"]] == [
        "world size 2 -> 1 with the same total batch 2: the schedule is unchanged; per-rank random "
        "streams are reseeded",
        f"solver.max_iter 100000 -> {iteration + 1}",
    ]


def test_ctrl_c_on_one_node_stops_both_after_the_same_iteration_with_its_checkpoint(project):
    """Ctrl-C in node 1's terminal: the stop travels with the losses, so node 0 (which writes the checkpoints)
    saves that iteration and both nodes end within the bound, naming why."""
    log = project / "data" / "08_reporting" / "train_logs" / "tiny.jsonl"
    port = free_port()
    nodes = [kedro_run(project, "train", two_nodes(rank, port) + "," + _long_run(checkpoint_period=1000))
             for rank in (0, 1)]  # fmt: skip
    _wait_until(lambda: log.is_file() and len(log.read_text().splitlines()) >= 2, "two iterations")
    workers = [worker for node in nodes for worker in _spawned_workers(node.pid)]
    sent = time.monotonic()
    os.kill(nodes[1].pid, signal.SIGINT)
    outputs = [process.communicate(timeout=RUN_BOUND_S)[0] for process in nodes]
    took = time.monotonic() - sent

    assert all(process.returncode != 0 for process in nodes)
    assert took < SIGNAL_EXIT_BOUND_S, f"the nodes exited {took:.0f} s after Ctrl-C"
    stopped = [next(x for x in output.splitlines() if "Training stopped by" in x) for output in outputs]
    other_rank = "Training stopped by a stop signal on another rank after iteration"
    assert other_rank in stopped[0], outputs[0][-3000:]
    assert "Training stopped by SIGINT after iteration" in stopped[1], outputs[1][-3000:]
    iterations = {int(line.split("after iteration ")[1].split()[0]) for line in stopped}
    (iteration,) = iterations
    checkpoint = project / "data" / "06_models" / "checkpoints" / "tiny" / f"model_{iteration:07d}.pth"
    assert load_checkpoint(checkpoint)["iteration"] == iteration
    assert not any(_running(pid) for pid in workers), "no worker is left training"
    print(f"both nodes stopped {took:.1f} s after Ctrl-C on node 1, at iteration {iteration}")


class _Lines:
    """A process's output lines as they come, read by a thread: what came after a moment can be told apart."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def join(self) -> list[str]:
        self._reader.join(RUN_BOUND_S)
        return self.lines


# A lost node's peers stop within seconds (a closed connection, or a heartbeat still for 5 s); the bound
# leaves room for a loaded machine.
LOST_NODE_BOUND_S = 60
# What a surviving node may print once the other is gone: the error, where the traceback is, Kedro's lines.
FAILURE_LINES = 15


@pytest.mark.parametrize("lost", [0, 1])
def test_a_lost_node_is_named_in_a_few_lines_on_the_other_which_stops_at_once(project, lost):
    log = project / "data" / "08_reporting" / "train_logs" / "tiny.jsonl"
    port = free_port()
    nodes = [kedro_run(project, "train", two_nodes(rank, port) + "," + _long_run(checkpoint_period=1000))
             for rank in (0, 1)]  # fmt: skip
    outputs = [_Lines(process) for process in nodes]

    def trained_an_iteration() -> bool:
        if any(process.poll() is not None for process in nodes):
            pytest.fail(
                "a node stopped early:\n" + "\n".join(outputs[0].lines[-40:] + outputs[1].lines[-40:])
            )
        return log.is_file() and bool(log.read_text().strip())

    _wait_until(trained_an_iteration, "an iteration")
    survivor = 1 - lost
    before = len(outputs[survivor].lines)
    nodes[lost].kill()  # SIGKILL of that node's Kedro process (its workers die with it)
    killed = time.monotonic()
    nodes[survivor].wait(timeout=LOST_NODE_BOUND_S)
    took = time.monotonic() - killed
    nodes[lost].wait()
    failure = outputs[survivor].join()[before:]
    text = "\n".join(failure)

    assert nodes[survivor].returncode != 0, text
    assert len(failure) <= FAILURE_LINES, text
    error = next(line for line in failure if line.startswith("Error: "))
    assert f"Error: Node {lost} " in error and " was lost: " in error, text
    assert "start every node's command again" in error and "--pipeline train --env tiny" in error, text
    assert "Traceback" not in text
    log_name = next(line for line in failure if line.startswith("Full traceback: ")).split()[2]
    assert "Traceback (most recent call last)" in (project / log_name).read_text()
    print(f"node {survivor} stopped {took:.1f} s after node {lost} was killed, printing {len(failure)} lines")
