"""The nodes' meeting point on torch's TCPStore: clear errors before any work, and a board for failures.

Node 0's Kedro process hosts the store for its whole lifetime (as torchrun's agent does); every node's
launcher checks in there before it spawns workers, and the workers build their process group on it. Checking
in turns torch's cryptic rendezvous failures (a client that retries until a timeout, a port in use, two nodes
with the same rank that block each other, nodes waiting for different world sizes) into messages that name
the setting to fix. A node that finds a problem posts it on the failure board (failure_board.py), so that
the nodes waiting with it stop too.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
import time
from typing import NoReturn

from torch.distributed import DistError, PrefixStore, Store, TCPStore

from frcnn_pipeline.errors import UserFacingError
from frcnn_pipeline.runtime.failure_board import FAILURE_REPORT_WAIT_S, POLL_S, Failure, FailureBoard
from frcnn_pipeline.runtime.world import WorldConfig

log = logging.getLogger(__name__)

# Counts the nodes that have read a rendezvous failure (node 0 waits for them before it stops hosting).
_FAILURE_SEEN = "failure_seen"

# One store per (address, port) for the life of the process: node 0 keeps hosting it between the pipeline's
# distributed nodes (train, then evaluate), so no other process can take the port in between.
_STORES: dict[tuple[str, int], TCPStore] = {}


class RendezvousError(UserFacingError, RuntimeError):
    """The nodes could not meet: wrong address or port, a duplicate rank, or disagreeing settings."""


def _timeout(world: WorldConfig) -> datetime.timedelta:
    return datetime.timedelta(seconds=world.rendezvous_timeout_s)


def host_store(world: WorldConfig) -> TCPStore:
    """Node 0: listen on `runtime.master_port` (kept for the life of the process)."""
    key = ("", world.master_port)
    if key in _STORES:
        return _STORES[key]
    _warn_if_not_local(world.master_addr)
    try:
        store = TCPStore(
            world.master_addr,
            world.master_port,
            is_master=True,
            wait_for_workers=False,
            timeout=_timeout(world),
        )
    except DistError as error:
        if "EADDRINUSE" in str(error) or "address already in use" in str(error).lower():
            raise RendezvousError(
                f"runtime.master_port {world.master_port} is already in use on this machine, where node 0 "
                "hosts the rendezvous (another run, or another node 0 of this job?). Choose a free port, the "
                "same on every node: --params runtime.master_port=PORT (under SLURM: export MASTER_PORT)."
            ) from None
        raise
    _STORES[key] = store
    return store


def connect_store(world: WorldConfig, who: str) -> TCPStore:
    """Any other process: connect to node 0's store, retrying until `runtime.rendezvous_timeout_s`."""
    key = (world.master_addr, world.master_port)
    if key in _STORES:
        return _STORES[key]
    try:
        store = TCPStore(world.master_addr, world.master_port, is_master=False, timeout=_timeout(world))
    except DistError as error:
        raise RendezvousError(
            f"{who} cannot reach the rendezvous of node 0 at {world.master_addr}:{world.master_port} within "
            f"{world.rendezvous_timeout_s:g} s ({error}). Check that node 0 is running (runtime.node_rank 0) "
            "with the same runtime.master_addr and master_port, that this address reaches node 0 from here "
            "(name, firewall), and raise runtime.rendezvous_timeout_s if the nodes start far apart."
        ) from None
    _STORES[key] = store
    return store


def _warn_if_not_local(address: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError as error:
            if error.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(error, socket.gaierror):
                log.warning(
                    "runtime.master_addr %s is not an address of this machine, yet node 0 (this one) hosts "
                    "the rendezvous that the other nodes look for there (fine behind NAT, wrong otherwise)",
                    address,
                )


def where(world: WorldConfig, local_rank: int | None = None) -> str:
    place = f"node {world.node_rank}, {socket.gethostname()}"
    return place if local_rank is None else f"{place}, local rank {local_rank}"


def launch_store(store: Store, generation: int) -> PrefixStore:
    """The keys of one launch (the pipeline's n-th distributed node), so launches never mix."""
    return PrefixStore(f"launch{generation}/", store)


def check_in(store: Store, world: WorldConfig, job: str) -> None:
    """Meet the other nodes' launchers before anything starts; raise a RendezvousError naming what to fix.

    Every node claims its node_rank and posts its view of the world; each waits until all `num_nodes` nodes
    have checked in, then compares the views. A node that finds a problem posts it, so that nodes waiting for
    a world that will never be complete stop too.
    """
    board = FailureBoard(store)
    try:
        _meet(board, world, job)
    except DistError:
        raise RendezvousError(
            f"Node {world.node_rank} lost the rendezvous at {world.master_addr}:{world.master_port} before "
            "the nodes met: node 0 stopped (its log says why) or the network between the nodes failed."
        ) from None


def _meet(board: FailureBoard, world: WorldConfig, job: str) -> None:
    store = board.store
    identity = f"{socket.gethostname()} (pid {os.getpid()})"
    claimed = store.compare_set(f"node{world.node_rank}", "", identity).decode()
    if claimed != identity:
        _fail(
            board,
            world,
            f"Two nodes claim runtime.node_rank {world.node_rank}: {claimed} and {identity}. Give every node "
            f"its own node_rank, 0 to {world.num_nodes - 1} (under SLURM, leave runtime.node_rank null).",
        )
    view = {
        "num_nodes": world.num_nodes,
        "nproc_per_node": world.nproc_per_node,
        "world_size": world.world_size,
        "device": world.device,
        "job": job,
    }
    store.set(f"view{world.node_rank}", json.dumps({**view, "host": identity}))
    keys = [f"view{rank}" for rank in range(world.num_nodes)]
    deadline = time.monotonic() + world.rendezvous_timeout_s
    while not store.check(keys):
        if (failure := board.cause()) is not None:
            _stop(board, world, f"Another node stopped the rendezvous. {failure.describe()}")
        if time.monotonic() > deadline:
            missing = [rank for rank, key in enumerate(keys) if not store.check([key])]
            _fail(
                board,
                world,
                f"Node(s) {missing} did not join the rendezvous at {world.master_addr}:{world.master_port} "
                f"within {world.rendezvous_timeout_s:g} s. Start `kedro run` on every node with the same "
                f"runtime.num_nodes ({world.num_nodes}), master_addr and master_port, each with its own "
                "node_rank (inside a SLURM allocation without srun: runtime.launcher none).",
            )
        time.sleep(POLL_S)
    views = {rank: json.loads(store.get(key)) for rank, key in enumerate(keys)}
    disagreeing = {
        name: {rank: v[name] for rank, v in views.items()}
        for name in view
        if len({v[name] for v in views.values()}) > 1
    }
    if disagreeing:
        listed = "; ".join(
            f"{name}: " + ", ".join(f"node {rank} {value}" for rank, value in values.items())
            for name, values in disagreeing.items()
        )
        _fail(
            board,
            world,
            f"The nodes disagree on the world ({listed}). Run the same pipeline with the same --env and "
            "runtime parameters on every node.",
        )
    if (failure := board.cause()) is not None:
        _stop(board, world, f"Another node stopped the rendezvous. {failure.describe()}")


def _fail(board: FailureBoard, world: WorldConfig, message: str) -> NoReturn:
    board.post(Failure(None, where(world), message))
    _stop(board, world, message)


def _stop(board: FailureBoard, world: WorldConfig, message: str) -> NoReturn:
    """Raise `message`. Node 0's process hosts the store, so it first waits (FAILURE_REPORT_WAIT_S at most)
    until every other node that checked in has read the failure too: leaving at once would cut them off
    mid-read, and they would report a lost connection instead of the problem."""
    store = board.store
    if world.node_rank != 0:
        with contextlib.suppress(DistError):
            store.add(_FAILURE_SEEN, 1)
        raise RendezvousError(message)
    checked_in = sum(store.check([f"view{rank}"]) for rank in range(1, world.num_nodes))
    deadline = time.monotonic() + FAILURE_REPORT_WAIT_S
    while store.add(_FAILURE_SEEN, 0) < checked_in and time.monotonic() < deadline:
        time.sleep(POLL_S)
    raise RendezvousError(message)
