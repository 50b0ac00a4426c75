"""Every way out of training ends the process promptly, with DataLoader workers and without: an error in the
step, Ctrl-C and SIGTERM, on one worker and on two. Each case runs a real training process (exit_path_run.py)
and asserts its exit status, how long it took to exit and that no process of it is left behind."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from frcnn_pipeline.engine.checkpoint import load_checkpoint
from frcnn_pipeline.runtime.loader_workers import stop_processes, worker_count

HERE = Path(__file__).parent
# The bound: exit within 30 s of the error or the signal.
EXIT_BOUND_S = 30
START_BOUND_S = 240  # start-up and the first iterations, on two busy cores


def _start(folder: Path, mode: str, nproc: int, num_workers: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(HERE / "exit_path_run.py"), str(folder), mode, str(nproc), str(num_workers)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a signal to the test's group must not reach it
    )


def _descendants(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        children = Path(f"/proc/{pending.pop()}/task")
        for task in children.glob("*/children") if children.exists() else []:
            for child in map(int, task.read_text().split()):
                found.append(child)
                pending.append(child)
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may never reap orphans)."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _assert_none_left(processes: list[int]) -> None:
    """No loader or training worker outlives the run (multiprocessing's resource tracker gets a moment to
    read its end of file)."""
    deadline = time.monotonic() + 5
    while (left := [pid for pid in processes if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    commands = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:200] for pid in left]
    assert not left, f"left running: {commands}"


def _wait_for(condition, what: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_BOUND_S
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended before {what}:\n{process.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _finish(process: subprocess.Popen, since: float) -> tuple[str, float]:
    try:
        output = process.communicate(timeout=EXIT_BOUND_S + 30)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"the run did not exit:\n{process.communicate()[0][-3000:]}")
    return output, time.time() - since


@pytest.mark.parametrize(("nproc", "num_workers"), [(1, 2), (2, 1)], ids=["1 worker", "2 workers"])
def test_an_error_in_a_step_ends_the_run_within_30_s_and_no_process_is_left(tmp_path, nproc, num_workers):
    run = _start(tmp_path, "error", nproc, num_workers)
    error_time = tmp_path / "error_time"
    _wait_for(error_time.is_file, "the error", run)
    processes = _descendants(run.pid)
    output, _ = _finish(run, since=time.time())
    elapsed = time.time() - float(error_time.read_text())

    assert run.returncode != 0
    assert "simulated: out of memory at the third step" in output, output[-3000:]
    assert elapsed < EXIT_BOUND_S, f"exited {elapsed:.0f} s after the error"
    _assert_none_left(processes)


# Ctrl-C on two workers (cpu2p), SLURM's SIGTERM on one (engine/test_multinode_stops sends SIGTERM to `kedro
# run` with two workers, and Ctrl-C to one node of two); SIGTERM in the static-shape mode (batches made on the
# host).
@pytest.mark.parametrize(
    ("stop", "mode", "nproc", "num_workers"),
    [(signal.SIGINT, "run", 2, 1), (signal.SIGTERM, "run", 1, 2), (signal.SIGTERM, "static", 1, 1)],
    ids=["Ctrl-C, 2 workers", "SIGTERM, 1 worker", "SIGTERM, static shapes"],
)
def test_a_stop_signal_saves_a_checkpoint_and_ends_the_run_within_30_s(
    tmp_path, stop, mode, nproc, num_workers
):
    run = _start(tmp_path, mode, nproc, num_workers)
    metrics = tmp_path / "reporting" / "test.jsonl"
    _wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 2, "two iterations", run)
    processes = _descendants(run.pid)
    assert processes, "the run has loader (and training) workers"
    # Ctrl-C reaches the whole foreground group; SLURM signals every process of the step.
    sent = time.time()
    os.killpg(run.pid, stop)
    output, elapsed = _finish(run, since=sent)

    assert run.returncode != 0
    message = next((line for line in output.splitlines() if "Training stopped by" in line), None)
    assert message and f"Training stopped by {stop.name} after iteration" in message, output[-3000:]
    iteration = int(message.split("after iteration ")[1].split()[0])
    checkpoint = tmp_path / "checkpoints" / "test" / f"model_{iteration:07d}.pth"
    assert load_checkpoint(checkpoint)["iteration"] == iteration
    assert elapsed < EXIT_BOUND_S, f"exited {elapsed:.0f} s after {stop.name}"
    _assert_none_left(processes)


def test_loader_workers_are_sized_from_the_cores_left_to_each_training_worker(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert worker_count(4, training_workers_per_node=1) == 2
    assert worker_count(4, training_workers_per_node=2) == 1
    assert worker_count(4, training_workers_per_node=8) == 1
    assert worker_count(0, training_workers_per_node=1) == 0


def _deaf_to_sigterm(ready) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    time.sleep(600)


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(caplog):
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    stuck = context.Process(target=_deaf_to_sigterm, args=(ready,), daemon=True)
    stuck.start()
    assert ready.wait(60)
    stop_processes([stuck], grace_s=0.5)
    assert not stuck.is_alive() and stuck.exitcode == -signal.SIGKILL
    assert f"DataLoader worker {stuck.pid} did not stop within" in caplog.text
