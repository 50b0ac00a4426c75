"""A watchdog in the launching process for the smoke test: when no training rank moves for a while, it says
which rank stalled, at which step, and where each rank is (in a collective or not).

It reads the progress each rank writes (step_audit.py). When no record has changed for `timeout_s`, it
collects every rank's Python stack (SIGUSR1 to a spawned rank, whose faulthandler dumps it; this process's
own stack directly), tells the ranks outside any collective (stalled: a kernel, the data, or a fault) from
those waiting inside one, and calls `on_stall(message, ranks)` once. Ending the run is the caller's choice.
"""

from __future__ import annotations

import faulthandler
import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from frcnn_pipeline.engine.step_audit import PHASES, STACK_SIGNAL, rank_record_path, rank_stack_path

POLL_S = 0.5
STACK_WAIT_S = 3.0
_THREAD_HEADER = re.compile(r"^(?:Current thread|Thread) 0x[0-9a-f]+")
_FRAME = re.compile(r'^\s+File "(.*)", line (\d+) in (.*)$')
# Where a rank waits for the others (its innermost frame): torch.distributed's collectives, DDP's broadcasts.
_COLLECTIVE_FILES = ("torch/distributed/", "torch/nn/parallel/distributed.py")
_BACKWARD_FILES = ("torch/autograd/", "torch/_tensor.py")
# Frames of the training thread (not of this watchdog's own thread, in the same process for one rank).
_TRAINING_FILES = ("frcnn_pipeline/engine/loop.py", "frcnn_pipeline/engine/trainer.py")


def read_records(folder: Path, world_size: int) -> dict[int, dict[str, Any]]:
    records = {}
    for rank in range(world_size):
        path = rank_record_path(folder, rank)
        if path.exists():
            records[rank] = json.loads(path.read_text(encoding="utf-8"))
    return records


class StallWatchdog:
    """A thread that calls `on_stall(message, ranks)` once no rank of `world_size` has recorded progress for
    `timeout_s` (counted from the first record: before it the process group's own timeout applies)."""

    def __init__(
        self,
        folder: Path,
        world_size: int,
        timeout_s: float,
        on_stall: Callable[[str, list[dict[str, Any]]], None],
    ):
        self.folder = Path(folder)
        self.world_size = world_size
        self.timeout_s = timeout_s
        self.on_stall = on_stall
        self.message: str | None = None
        self.ranks: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)

    def __enter__(self) -> StallWatchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _watch(self) -> None:
        seen, changed_at = None, time.monotonic()
        while not self._stop.wait(POLL_S):
            records = read_records(self.folder, self.world_size)
            progress = {rank: record["updates"] for rank, record in records.items()}
            if not records or progress != seen:
                seen, changed_at = progress, time.monotonic()
                continue
            idle = time.monotonic() - changed_at
            if idle >= self.timeout_s:
                self.ranks = [
                    rank_state(rank, records.get(rank), self.folder) for rank in range(self.world_size)
                ]
                self.message = describe_stall(self.ranks, idle)
                self.on_stall(self.message, self.ranks)
                return


def rank_state(rank: int, record: dict[str, Any] | None, folder: Path) -> dict[str, Any]:
    """Where a rank is: its last progress record and its training thread's stack, classified."""
    if record is None:
        return {"rank": rank, "state": "no progress recorded (it never built its model)", "stack": []}
    stack = _training_stack(_dump_stack(record["pid"], rank_stack_path(folder, rank)))
    state = {
        "rank": rank,
        "pid": record["pid"],
        "iteration": max(record["iteration"], 1),
        "phase": record["phase"],
        "stack": [f"{path}:{line} in {function}" for path, line, function in stack],
    }
    # The innermost frame tells: a rank blocked in a C call shows the Python frame that made it.
    innermost = stack[0][0] if stack else ""
    if any(part in innermost for part in _COLLECTIVE_FILES):
        state.update(state=f"waits in a collective: {_frame(stack[0])}", waiting=True)
    elif any(part in innermost for part in _BACKWARD_FILES):
        state.update(
            state=f"in backward, where DDP all-reduces the gradients: {_frame(stack[0])}", waiting=True
        )
    elif stack:
        state.update(state=f"outside any collective, in {_frame(stack[0])}", waiting=False)
    else:
        state.update(state="its stack could not be read", waiting=False)
    caller = next((frame for frame in stack if "frcnn_pipeline/" in frame[0] and frame != stack[0]), None)
    if caller is not None:
        state["state"] += f", called from {_frame(caller)}"
    return state


def describe_stall(ranks: list[dict[str, Any]], idle_s: float) -> str:
    """One paragraph: who stalled at which step, then where every rank is."""
    stalled = [state for state in ranks if not state.get("waiting")]
    waiting = [state for state in ranks if state.get("waiting")]
    if stalled and waiting:
        lead = (
            f"{_ranks_at(stalled)} stalled and never reached the collective that "
            f"{_names(waiting)} {'waits' if len(waiting) == 1 else 'wait'} in"
        )
    elif waiting:
        lead = (
            f"every rank waits in a collective that never returns ({_ranks_at(waiting)}): a broken "
            "HCCL/NCCL link, or ranks in different collectives"
        )
    else:
        lead = f"{_ranks_at(stalled)} stalled outside any collective (a device op or the data never returned)"
    details = "; ".join(f"rank {state['rank']}: {_where(state)}{state['state']}" for state in ranks)
    return f"no progress for {idle_s:.0f} s: {lead}. {details}"


def _ranks_at(states: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"rank {state['rank']} at iteration {state['iteration']} ({state['phase']})"
        if "iteration" in state
        else f"rank {state['rank']}"
        for state in states
    )


def _names(states: list[dict[str, Any]]) -> str:
    return ", ".join(f"rank {state['rank']}" for state in states)


def _where(state: dict[str, Any]) -> str:
    if "iteration" not in state:
        return ""
    return f"iteration {state['iteration']}, {PHASES[state['phase']]}; "


def _frame(frame: tuple[str, int, str]) -> str:
    path, line, function = frame
    return f"{function} ({'/'.join(Path(path).parts[-3:])}:{line})"


def _dump_stack(pid: int, path: Path) -> str:
    """Every Python thread's stack of process `pid`, as faulthandler writes it."""
    if pid == os.getpid():
        with path.open("w") as file:
            faulthandler.dump_traceback(file, all_threads=True)
        return path.read_text()
    start = path.stat().st_size if path.exists() else 0
    try:
        os.kill(pid, STACK_SIGNAL)
    except ProcessLookupError:
        return ""
    deadline = time.monotonic() + STACK_WAIT_S
    text = ""
    while time.monotonic() < deadline:
        time.sleep(0.2)
        with path.open() as file:
            file.seek(start)
            current = file.read()
        if current and current == text:  # stopped growing: the dump is complete
            break
        text = current
    return text


def _training_stack(dump: str) -> list[tuple[str, int, str]]:
    """The training thread's frames, innermost first (the thread in the training loop, else the longest)."""
    threads: list[list[tuple[str, int, str]]] = []
    for line in dump.splitlines():
        if _THREAD_HEADER.match(line):
            threads.append([])
        elif (frame := _FRAME.match(line)) and threads:
            threads[-1].append((frame.group(1), int(frame.group(2)), frame.group(3)))
    training = [frames for frames in threads if any(p in f[0] for f in frames for p in _TRAINING_FILES)]
    return max(training or threads or [[]], key=len)
