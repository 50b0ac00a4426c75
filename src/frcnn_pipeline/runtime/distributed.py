"""Worker processes and collectives on torch.distributed; shared by training and distributed inference.

`launch(fn, world, *args)` runs `fn(context, *args)` on every worker of the world and returns rank 0's result
in every launching process (each node's Kedro process gets the same outputs; only the main one saves them):
- world size 1: in this process;
- torchrun: this process is one worker; the process group is made once and kept for the life of the process;
- otherwise (by hand, SLURM): this process spawns its node's workers, after meeting the other nodes' launchers
  (`rendezvous.check_in`). While they run it replays their log records, forwards SIGTERM/SIGINT to them (they
  save a checkpoint and stop), and stops them as soon as a rank anywhere posts a failure, naming that rank, or
  a node is lost (node 0's store unreachable, or another launcher's heartbeat stopped), naming that node.
"""

from __future__ import annotations

import atexit
import datetime
import itertools
import logging
import os
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessContext, ProcessException, ProcessExitedException

from frcnn_pipeline.errors import UserFacingError
from frcnn_pipeline.runtime import devices, failure_board, rendezvous, worker_logs
from frcnn_pipeline.runtime.failure_board import Failure, FailureBoard
from frcnn_pipeline.runtime.signals import StopSignals, TrainingStopped, die_with_the_parent
from frcnn_pipeline.runtime.world import WorldConfig, this_command

log = logging.getLogger(__name__)

POLL_S = 0.5
# After a failure: how long the other local workers get to exit by themselves before they are killed.
GRACE_S = 3.0
# Error texts of a collective whose peer went away (gloo raises plain RuntimeErrors).
_LOST_PEER_TEXTS = ("connection reset by peer", "connection closed by peer", "broken pipe", "gloo/transport")

# The n-th distributed launch of this process; every node runs the same pipeline, so the numbers match.
_launches = itertools.count(1)


class WorkerFailedError(UserFacingError, RuntimeError):
    """A worker of this job failed or died elsewhere; the message names the rank that failed first (its
    traceback is on its own node) and how to go on."""


class NodeLostError(WorkerFailedError):
    """A node's launcher went away mid-run (killed, out of memory, its machine or network down)."""


@dataclass(frozen=True)
class WorkerContext:
    """What a worker knows about itself."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    world: WorldConfig

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch(fn: Callable[..., Any], world: WorldConfig, *args: Any) -> Any:
    """Run `fn(context, *args)` on every worker of `world`; return rank 0's result in every launching process.

    A local worker's exception is re-raised here with its original type (e.g. a non-finite loss), unless
    another rank failed first: then a WorkerFailedError names that rank and its error.
    """
    kind = devices.resolve_device_kind(world.device)
    world = replace(world, device=kind)
    if world.launcher == "torchrun":
        return _run_as_torchrun_worker(fn, world, args)
    devices.check_device_count(kind, world.nproc_per_node)
    if not world.spawns_workers:
        return fn(WorkerContext(0, 0, 1, devices.setup_device(kind, 0), world), *args)
    return _spawn_node_workers(fn, world, args)


def _run_as_torchrun_worker(fn: Callable[..., Any], world: WorldConfig, args: tuple) -> Any:
    devices.check_device_count(world.device, world.nproc_per_node)
    device = devices.setup_device(world.device, world.local_rank)
    if not dist.is_initialized():
        # env://: torchrun's MASTER_ADDR/MASTER_PORT (its agent's store), RANK and WORLD_SIZE.
        dist.init_process_group(
            devices.dist_backend(world.device),
            timeout=datetime.timedelta(minutes=world.timeout_minutes),
        )
        atexit.register(dist.destroy_process_group)
        log.info(
            "Joined torchrun's %s process group: %s", devices.dist_backend(world.device), world.summary()
        )
    context = WorkerContext(world.process_rank, world.local_rank, world.world_size, device, world)
    return _share_main_result(fn(context, *args))


def _share_main_result(result: Any) -> Any:
    """Rank 0's result on every rank, so every node's Kedro process has the real outputs."""
    holder = [result if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def _spawn_node_workers(fn: Callable[..., Any], world: WorldConfig, args: tuple) -> Any:
    generation = next(_launches)
    if world.node_rank == 0:
        store = rendezvous.host_store(world)
        world = replace(world, master_port=store.port)
    else:
        store = rendezvous.connect_store(world, f"Node {world.node_rank}")
    job_store = rendezvous.launch_store(store, generation)
    rendezvous.check_in(job_store, world, fn.__qualname__)
    log.info("Spawning %s workers: %s", devices.dist_backend(world.device), world.summary())
    spawn = mp.get_context("spawn")
    errors, log_queue = spawn.SimpleQueue(), spawn.Queue()
    with (
        tempfile.TemporaryDirectory(prefix="frcnn_launch_") as tmp,
        worker_logs.replay_worker_logs(log_queue),
        StopSignals() as stop,
    ):
        result_path = Path(tmp) / "result.pt"
        processes = mp.start_processes(
            _worker_entry,
            args=(fn, world, generation, args, errors, log_queue, worker_logs.levels(), str(result_path)),
            nprocs=world.nproc_per_node,
            join=False,
            start_method="spawn",
        )
        # Node 0 hosts the store; the other nodes' launchers are its clients.
        board = FailureBoard(
            job_store, None if world.node_rank == 0 else (world.master_addr, world.master_port)
        )
        try:
            _supervise(processes, world, board, stop, errors)
        except BaseException as error:
            _kill(processes)
            if not isinstance(error, TrainingStopped | KeyboardInterrupt):
                _leave_after_a_failure(board, world)
            raise
        board.leave(world.node_rank)
        # weights_only: the result holds tensors, numbers, strings, lists and dicts only.
        return torch.load(result_path, weights_only=True)


def _supervise(
    processes: ProcessContext, world: WorldConfig, board: FailureBoard, stop: StopSignals, errors
) -> None:
    """Wait for the local workers; forward a stop request; stop early when another node's rank failed."""
    local_ranks = range(world.node_rank * world.nproc_per_node, (world.node_rank + 1) * world.nproc_per_node)
    forwarded = False
    # Node 0 watches the other launchers (which watch node 0 through its store): workers on NCCL or HCCL
    # may wait for a lost peer until runtime.timeout_minutes, not fail.
    heartbeats = failure_board.Heartbeats(board, world) if world.node_rank == 0 else None
    while True:
        try:
            if processes.join(timeout=POLL_S, grace_period=GRACE_S):
                return
            if stop.requested and not forwarded:
                log.warning(
                    "%s: the workers finish their iteration, save a checkpoint and stop "
                    "(press Ctrl-C again to stop at once)",
                    stop.requested,
                )
                _signal_alive(processes, signal.SIGTERM)
                forwarded = True
            board.beat(world.node_rank)
            if heartbeats is not None and (lost := heartbeats.lost()):
                board.report_lost(lost)
            remote = board.cause()
            # Another node's rank failed, or node 0 is gone (its store is unreachable): the local workers get
            # a moment to fail on their own (their error keeps its type), then they are stopped.
            elsewhere = (remote is not None and remote.rank not in local_ranks) or not board.reachable
            if elsewhere and not processes.join(timeout=GRACE_S, grace_period=GRACE_S):
                _kill(processes)
                raise _failed_elsewhere(remote, world)
        except ProcessException as error:
            # Chained: the log file gets the worker's traceback (the terminal, a UserFacingError's message).
            raise _failure(error, world, board, stop, errors, heartbeats) from error


def _failure(  # noqa: PLR0917 (the supervision's state)
    error: ProcessException,
    world: WorldConfig,
    board: FailureBoard,
    stop: StopSignals,
    errors,
    heartbeats: failure_board.Heartbeats | None,
) -> BaseException:
    """The exception that tells the user what happened, for a local worker that failed."""
    failed_rank = world.node_rank * world.nproc_per_node + error.error_index
    local_errors: list[tuple[int, BaseException, bool]] = []
    while not errors.empty():
        local_errors.append(errors.get())
    stopped = [exc for _, exc, _ in local_errors if isinstance(exc, TrainingStopped)]
    if stopped:
        # The workers saw the SIGTERM this launcher forwarded; the user sent `stop.requested`.
        first = stopped[0]
        return TrainingStopped(
            first.iteration, first.max_iter, first.checkpoint, stop.requested or first.reason
        )
    if isinstance(error, ProcessExitedException):
        how = f"signal {error.signal_name}" if error.signal_name else f"exit code {error.exit_code}"
        died = f"worker exited with {how}"
        if stop.requested:
            board.post(Failure(None, rendezvous.where(world), f"stopped by {stop.requested}"))
            return WorkerFailedError(f"Stopped by {stop.requested} outside the training loop ({died})")
        board.post(Failure(failed_rank, rendezvous.where(world, error.error_index), died))
    causes = {rank: exc for rank, exc, is_cause in local_errors if is_cause}
    # Only lost peers here: wait for the cause, or find the node that was lost.
    wait_s = failure_board.FAILURE_REPORT_WAIT_S
    first = board.first() if causes else failure_board.await_cause(board, world, wait_s, heartbeats)
    if first is not None and first.rank in causes:
        return causes[first.rank]
    if first is None and causes:
        return next(iter(causes.values()))
    if first is not None or not board.reachable:
        return _failed_elsewhere(first, world)
    detail = _summary(local_errors[0][1] if local_errors else error)
    return WorkerFailedError(f"Rank {failed_rank} ({rendezvous.where(world)}) failed: {detail}")


def _failed_elsewhere(failure: Failure | None, world: WorldConfig) -> WorkerFailedError:
    """The error for a failure posted by another rank, or (None) for node 0's store gone unreachable."""
    if failure is None:
        what = (
            f"Node 0 ({world.master_addr}:{world.master_port}, the rendezvous host) was lost: its connection "
            "closed mid-run (killed, out of memory, or its machine or network went down)"
        )
    else:
        what = failure.describe()
    error_type = NodeLostError if failure is None or failure.lost_nodes else WorkerFailedError
    again = f"every node's command again (this node's: `{this_command()}`)"
    if world.num_nodes == 1:
        again = f"`{this_command()}` again"
    return error_type(
        f"{what}. This node's workers were stopped; once that is dealt with, start {again}: a training "
        "resumes from its last checkpoint."
    )


def _leave_after_a_failure(board: FailureBoard, world: WorldConfig) -> None:
    """Node 0, which hosts the board, waits for the other nodes to leave first: else they would find the
    store gone before reading the failure, and name node 0 as lost."""
    board.leave(world.node_rank)
    if world.node_rank == 0:
        cause = board.cause()
        board.wait_until_left(world.num_nodes - len(cause.lost_nodes if cause else ()))


def _signal_alive(processes: ProcessContext, signum: int) -> None:
    for process in processes.processes:
        if process.is_alive():
            os.kill(process.pid, signum)


def _kill(processes: ProcessContext) -> None:
    """Stop local workers at once (they may be blocked in a collective that never returns)."""
    _signal_alive(processes, signal.SIGKILL)
    for process in processes.processes:
        process.join()


def _summary(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


def _is_lost_peer(error: BaseException) -> bool:
    """An error that only says another rank went away (the cause is elsewhere)."""
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and any(text in str(error).lower() for text in _LOST_PEER_TEXTS)
    )


def _report(errors, rank: int, error: BaseException, is_cause: bool) -> None:
    try:
        errors.put((rank, error, is_cause))
    except Exception:  # an exception that cannot be pickled still reports its text
        errors.put((rank, RuntimeError(_summary(error)), is_cause))


def _worker_entry(  # noqa: PLR0917 (start_processes passes arguments by position)
    local_rank, fn, world: WorldConfig, generation: int, args, errors, log_queue, levels, result_path: str
) -> None:
    die_with_the_parent()
    rank = world.node_rank * world.nproc_per_node + local_rank
    worker_logs.send_logs_to(log_queue, rank, levels)
    board = None
    initialized = False
    try:
        store = rendezvous.launch_store(rendezvous.connect_store(world, f"Rank {rank}"), generation)
        board = FailureBoard(store, (world.master_addr, world.master_port))
        device = devices.setup_device(world.device, local_rank)
        # For libraries that read the usual variables.
        os.environ.update(
            MASTER_ADDR=world.master_addr,
            MASTER_PORT=str(world.master_port),
            RANK=str(rank),
            LOCAL_RANK=str(local_rank),
            WORLD_SIZE=str(world.world_size),
            LOCAL_WORLD_SIZE=str(world.nproc_per_node),
        )
        dist.init_process_group(
            devices.dist_backend(world.device),
            store=dist.PrefixStore("process_group/", store),
            rank=rank,
            world_size=world.world_size,
            timeout=datetime.timedelta(minutes=world.timeout_minutes),
        )
        initialized = True
        result = _share_main_result(
            fn(WorkerContext(rank, local_rank, world.world_size, device, world), *args)
        )
        if local_rank == 0:
            torch.save(result, result_path)
        dist.barrier()
    except BaseException as error:
        is_cause = not _is_lost_peer(error)
        # Every rank stops at the same iteration on a stop request: that is not a failure to report.
        if board is not None and not isinstance(error, TrainingStopped):
            board.post(Failure(rank, rendezvous.where(world, local_rank), _summary(error), is_cause))
        _report(errors, rank, error, is_cause)
        raise
    finally:
        if initialized:
            dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list outside a process group)."""
    if get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def reduce_mean(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean of each scalar over the ranks, as Python floats (one collective for the whole dict)."""
    names = sorted(values)
    stacked = torch.stack([values[name].detach().float() for name in names])
    if get_world_size() > 1:
        dist.all_reduce(stacked)
        stacked /= get_world_size()
    return dict(zip(names, stacked.tolist(), strict=True))


def shard_indices(num_items: int, rank: int | None = None, world_size: int | None = None) -> range:
    """This rank's contiguous share of `num_items` (sizes differ by at most one), e.g. for inference."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    per_rank, extra = divmod(num_items, world_size)
    start = rank * per_rank + min(rank, extra)
    return range(start, start + per_rank + (rank < extra))
