"""Worker processes and collectives on torch.distributed; shared by training and distributed inference.

Kedro stays one process: `launch` spawns the workers inside the node (none when the world has one worker),
each joins the process group, runs `fn(context, *args)`, and rank 0's return value comes back to the caller.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from frcnn_pipeline.config import RuntimeParams
from frcnn_pipeline.engine import devices

log = logging.getLogger(__name__)


_RUNTIME_DEFAULTS = RuntimeParams()


@dataclass(frozen=True)
class WorldConfig:
    """Where this run's workers live: `runtime.{device,nproc_per_node,num_nodes,node_rank,master_*}`."""

    device: str = _RUNTIME_DEFAULTS.device
    nproc_per_node: int = _RUNTIME_DEFAULTS.nproc_per_node
    num_nodes: int = _RUNTIME_DEFAULTS.num_nodes
    node_rank: int = _RUNTIME_DEFAULTS.node_rank
    master_addr: str = _RUNTIME_DEFAULTS.master_addr
    # 0 (single node only): a free port is picked.
    master_port: int = _RUNTIME_DEFAULTS.master_port
    timeout_minutes: float = _RUNTIME_DEFAULTS.timeout_minutes

    @classmethod
    def from_runtime(cls, runtime: dict[str, Any] | None) -> WorldConfig:
        """From the `runtime:` section, validated: an unknown key (a typo) is an error, not dropped."""
        params = RuntimeParams.parse(runtime, "runtime")
        return cls(**{key: getattr(params, key) for key in cls.__dataclass_fields__})

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.num_nodes


@dataclass(frozen=True)
class WorkerContext:
    """What a worker knows about itself."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(fn: Callable[..., Any], world: WorldConfig, *args: Any) -> Any:
    """Run `fn(context, *args)` on every local worker of this node; return rank 0's result (None elsewhere).

    A worker's exception is re-raised here with its original type, so callers see e.g. a non-finite loss
    error, not a wrapped traceback.
    """
    kind = devices.resolve_device_kind(world.device)
    devices.check_device_count(kind, world.nproc_per_node)
    if not 0 <= world.node_rank < world.num_nodes:
        raise ValueError(f"runtime.node_rank must be in [0, {world.num_nodes}), got {world.node_rank}")
    if world.world_size == 1:
        context = WorkerContext(0, 0, 1, devices.setup_device(kind, 0))
        return fn(context, *args)
    if world.master_port == 0 and world.num_nodes > 1:
        raise ValueError("runtime.master_port must be set (same on every node) for a multi-node run")
    world = WorldConfig(
        **{**world.__dict__, "device": kind, "master_port": world.master_port or find_free_port()}
    )
    log.info(
        "Spawning %d %s worker(s) on node %d/%d (world size %d, %s at %s:%d)",
        world.nproc_per_node,
        kind,
        world.node_rank,
        world.num_nodes,
        world.world_size,
        devices.dist_backend(kind),
        world.master_addr,
        world.master_port,
    )
    context = mp.get_context("spawn")
    errors = context.SimpleQueue()
    with tempfile.TemporaryDirectory(prefix="frcnn_launch_") as tmp:
        result_path = Path(tmp) / "result.pt"
        process_context = mp.start_processes(
            _worker_entry,
            args=(fn, world, args, errors, str(result_path)),
            nprocs=world.nproc_per_node,
            join=False,
            start_method="spawn",
        )
        try:
            while not process_context.join():
                pass
        except ProcessException:
            # The first error reported is the cause; the others are peers losing their connection to it.
            # `join` has already terminated the remaining workers.
            if not errors.empty():
                raise errors.get()[1] from None
            raise
        if world.node_rank != 0:
            return None
        # weights_only: the result holds tensors, numbers, strings, lists and dicts only.
        return torch.load(result_path, weights_only=True)


def _worker_entry(  # noqa: PLR0917 (start_processes passes arguments by position)
    local_rank, fn, world: WorldConfig, args, errors, result_path: str
) -> None:
    rank = world.node_rank * world.nproc_per_node + local_rank
    initialized = False
    try:
        device = devices.setup_device(world.device, local_rank)
        os.environ.update(
            MASTER_ADDR=world.master_addr,
            MASTER_PORT=str(world.master_port),
            RANK=str(rank),
            LOCAL_RANK=str(local_rank),
            WORLD_SIZE=str(world.world_size),
        )
        dist.init_process_group(
            devices.dist_backend(world.device),
            rank=rank,
            world_size=world.world_size,
            timeout=datetime.timedelta(minutes=world.timeout_minutes),
        )
        initialized = True
        result = fn(WorkerContext(rank, local_rank, world.world_size, device), *args)
        if rank == 0:
            torch.save(result, result_path)
        dist.barrier()
    except BaseException as error:
        # Reported before the process group closes: the cause arrives ahead of its peers' connection errors.
        errors.put((rank, error))
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
