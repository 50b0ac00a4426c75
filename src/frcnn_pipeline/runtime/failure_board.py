"""The first failures of a multi-node launch, on node 0's store, so that every node names the same cause.

A rank posts its own error (a *cause*) or an error that only says a peer went away (a *lost peer*); the first
of each is kept. The nodes' launchers also beat there: node 0 hosts the store in its launcher, so the others
see it lost when the store stops answering, and a launcher whose beats stand still while the store answers
was lost. After a failure every launcher says it leaves; node 0 leaves last, so that no node finds the
store gone before it has read the failure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, TypeVar

from torch.distributed import DistError, DistNetworkError, Store

from frcnn_pipeline.runtime.world import WorldConfig

log = logging.getLogger(__name__)

POLL_S = 0.2
# How long a node that lost its peers waits for the rank that failed first to say why.
FAILURE_REPORT_WAIT_S = 10.0
# How long a launcher's heartbeat may stand still before another node calls it lost: far above its beat
# (every poll of distributed's supervision), which a loaded machine may delay by a second or two.
HEARTBEAT_STALE_S = 5.0
# A bare connection to node 0's store, before each use of it (see FailureBoard).
PROBE_TIMEOUT_S = 5.0
_HEARTBEAT, _LEFT, _LEFT_COUNT = "heartbeat", "left", "left_count"
T = TypeVar("T")


@dataclass(frozen=True)
class Failure:
    """A rank's failure as posted on the board."""

    rank: int | None
    where: str
    message: str
    # False: the rank only lost its connection to the others (the cause is elsewhere).
    cause: bool = True
    # The nodes that went away, when that is the failure (`where`: their hosts and launchers' pids).
    lost_nodes: tuple[int, ...] = ()

    def describe(self) -> str:
        if self.lost_nodes:
            return f"{_nodes(self.lost_nodes)} on {self.where} {_was(self.lost_nodes)} lost: {self.message}"
        who = "The launcher" if self.rank is None else f"Rank {self.rank}"
        if self.cause:
            return f"{who} ({self.where}) failed first: {self.message}"
        return (
            f"{who} ({self.where}) lost its connection to the other ranks and no rank reported a cause "
            f"(a node or its network went down?): {self.message}"
        )


class FailureBoard:
    """First failures of one launch, on the store. A rank's own error is a *cause*; an error that only says
    a peer went away (a collective whose connection closed) is a *lost peer*, shown if no cause was posted.

    It also carries the launchers' heartbeats (a node whose launcher went away stops beating) and their
    acknowledgements of a failure (node 0 hosts the store, so it leaves after the others have read it).
    `address`: node 0's store, for a process that is its client. Every use first tries a bare connection
    there (a store client waits for a host whose machine went down until the store's timeout); once the
    store is unreachable, `reachable` is False and the board answers None without trying again.
    """

    CAUSE, LOST_PEER = "first_cause", "first_lost_peer"

    def __init__(self, store: Store, address: tuple[str, int] | None = None):
        self.store = store
        self._address = address
        self.reachable = True
        self._stderr: IO[bytes] | None = None

    def _use(self, operation: Callable[[], T]) -> T | None:
        """`operation` on the store; None once its host is unreachable."""
        if self.reachable and self._address is not None:
            try:
                socket.create_connection(self._address, timeout=PROBE_TIMEOUT_S).close()
            except OSError:
                self.reachable = False
        if not self.reachable:
            return None
        try:
            with self._c10d_warnings_to_debug_log():
                return operation()
        except DistNetworkError:
            self.reachable = False
        except DistError:
            log.debug("The failure board did not answer", exc_info=True)
        return None

    @contextlib.contextmanager
    def _c10d_warnings_to_debug_log(self) -> Iterator[None]:
        """A call on a store whose host is gone (or going: the probe may connect to a process that is being
        killed) makes c10d print a warning with a C++ stack trace to file descriptor 2, around Python. The
        board's calls send descriptor 2 to a file instead, and such a warning's first line to the debug log
        (anything else written meanwhile, by another thread, goes on to the terminal)."""
        self._stderr = self._stderr or tempfile.TemporaryFile()  # noqa: SIM115 (kept for the board's life)
        sys.stderr.flush()
        terminal = os.dup(2)
        os.dup2(self._stderr.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(terminal, 2)
            os.close(terminal)
            self._stderr.seek(0)
            caught = self._stderr.read()
            self._stderr.seek(0)
            self._stderr.truncate()
            if b"[c10d]" in caught:
                first_line = caught.decode(errors="replace").splitlines()[0]
                log.debug("c10d, on the failure board's store: %s", first_line)
            elif caught:
                os.write(2, caught)

    def post(self, failure: Failure) -> None:
        record = json.dumps(
            {
                "rank": failure.rank,
                "where": failure.where,
                "message": failure.message[:2000],
                "lost_nodes": failure.lost_nodes,
            }
        )
        key = self.CAUSE if failure.cause else self.LOST_PEER
        if self._use(lambda: self.store.compare_set(key, "", record)) is None:
            log.debug("The failure board is gone (node 0 stopped); not posting %s", failure)

    def _read(self, key: str) -> Failure | None:
        record = self._use(lambda: self.store.get(key) if self.store.check([key]) else None)
        if record is None:
            return None
        fields = json.loads(record)
        fields["lost_nodes"] = tuple(fields.get("lost_nodes", ()))
        return Failure(**fields, cause=key == self.CAUSE)

    def cause(self) -> Failure | None:
        return self._read(self.CAUSE)

    def first(self, wait_s: float = 0.0) -> Failure | None:
        """The first cause (waiting up to `wait_s` for one), else the first lost peer."""
        deadline = time.monotonic() + wait_s
        while (found := self.cause()) is None and self.reachable and time.monotonic() < deadline:
            time.sleep(POLL_S)
        return found or self._read(self.LOST_PEER)

    def beat(self, node_rank: int) -> None:
        """This node's launcher is alive (called at every poll of its supervision)."""
        self._use(lambda: self.store.add(f"{_HEARTBEAT}{node_rank}", 1))

    def liveness(self, nodes: list[int]) -> dict[int, tuple[int, bool]]:
        """Each node's beats so far and whether it has left ({} once the store is unreachable)."""

        def read() -> dict[int, tuple[int, bool]]:
            return {
                node: (self.store.add(f"{_HEARTBEAT}{node}", 0), self.store.check([f"{_LEFT}{node}"]))
                for node in nodes
            }

        return self._use(read) or {}

    def report_lost(self, nodes: list[int]) -> None:
        """Post as the failure's cause that `nodes` were lost (unless a cause was posted first)."""

        def claimed() -> dict[int, str]:
            keys = {node: f"node{node}" for node in nodes if self.store.check([f"node{node}"])}
            return {node: self.store.get(key).decode() for node, key in keys.items()}

        hosts = "; ".join((self._use(claimed) or {}).get(node, "host unknown") for node in nodes)
        message = (
            f"its launcher was silent for {HEARTBEAT_STALE_S:g} s (killed, out of memory, or its machine or "
            "network went down)"
        )
        self.post(Failure(None, hosts, message, lost_nodes=tuple(nodes)))

    def leave(self, node_rank: int) -> None:
        """This node's launch is over (done, or it has read the failure): it stops beating, and that does not
        make it lost."""
        self._use(lambda: self.store.set(f"{_LEFT}{node_rank}", "1"))
        self._use(lambda: self.store.add(_LEFT_COUNT, 1))

    def wait_until_left(self, nodes: int) -> None:
        """Node 0, which hosts the store: until `nodes` nodes (itself included) have left, so that none finds
        the store gone before it has read the failure (FAILURE_REPORT_WAIT_S at most)."""
        deadline = time.monotonic() + FAILURE_REPORT_WAIT_S
        while (self._use(lambda: self.store.add(_LEFT_COUNT, 0)) or 0) < nodes:
            if time.monotonic() > deadline:
                return
            time.sleep(POLL_S)


class Heartbeats:
    """The other launchers as this node sees them: one whose beats stand still for HEARTBEAT_STALE_S, and
    that has not left, is lost (its process or machine is gone; the store, and so node 0, still answers)."""

    def __init__(self, board: FailureBoard, world: WorldConfig):
        self.board = board
        self.others = [node for node in range(world.num_nodes) if node != world.node_rank]
        self._seen: dict[int, tuple[int, bool]] = {}
        self._changed = dict.fromkeys(self.others, time.monotonic())

    def lost(self) -> list[int]:
        now = time.monotonic()
        states = self.board.liveness(self.others)
        if not states:  # the store did not answer: nothing to judge by
            return []
        for node, state in states.items():
            if self._seen.get(node) != state or state[1]:
                self._seen[node], self._changed[node] = state, now
        return [node for node in self.others if now - self._changed[node] > HEARTBEAT_STALE_S]


def await_cause(
    board: FailureBoard, world: WorldConfig, wait_s: float, heartbeats: Heartbeats | None = None
) -> Failure | None:
    """The cause of a failure that this node's ranks only saw as lost peers, waiting up to `wait_s` for it
    while this node keeps beating. A node lost meanwhile (`heartbeats`, kept since the launch when given) is
    posted as the cause, so that every node names it. Else the first lost peer, or None (also when node 0's
    store is unreachable: see `board.reachable`).
    """
    heartbeats = heartbeats or Heartbeats(board, world)
    deadline = time.monotonic() + max(wait_s, HEARTBEAT_STALE_S + POLL_S)
    while True:
        board.beat(world.node_rank)
        if (found := board.cause()) is not None or not board.reachable:
            return found
        if lost := heartbeats.lost():
            board.report_lost(lost)
            return board.cause()
        if time.monotonic() > deadline:
            return board.first()
        time.sleep(POLL_S)


def _nodes(nodes: tuple[int, ...]) -> str:
    return f"Node {nodes[0]}" if len(nodes) == 1 else f"Nodes {', '.join(map(str, nodes))}"


def _was(nodes: tuple[int, ...]) -> str:
    return "was" if len(nodes) == 1 else "were"
