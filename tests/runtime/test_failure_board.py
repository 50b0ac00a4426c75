"""The failure board on a real TCPStore: heartbeats tell a lost node, and a store whose host is gone makes the
board answer None at once, without c10d's stack traces on the terminal."""

from __future__ import annotations

import datetime
import gc
import time

import pytest
from torch.distributed import TCPStore

from frcnn_pipeline.runtime import failure_board
from frcnn_pipeline.runtime.failure_board import Failure, FailureBoard, Heartbeats, await_cause
from frcnn_pipeline.runtime.world import WorldConfig

TIMEOUT = datetime.timedelta(seconds=10)


def _host() -> TCPStore:
    return TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=TIMEOUT)


def _client(host: TCPStore) -> TCPStore:
    return TCPStore("127.0.0.1", host.port, is_master=False, timeout=TIMEOUT)


def _world(node_rank: int, num_nodes: int = 3) -> WorldConfig:
    return WorldConfig(num_nodes=num_nodes, node_rank=node_rank, master_port=29500)


@pytest.fixture
def quick_heartbeats(monkeypatch):
    monkeypatch.setattr(failure_board, "HEARTBEAT_STALE_S", 0.5)
    monkeypatch.setattr(failure_board, "POLL_S", 0.05)


@pytest.mark.parametrize("probe", [False, True])
def test_a_store_whose_host_is_gone_is_unreachable_at_once_and_silent(capfd, probe):
    host = _host()
    client = _client(host)
    board = FailureBoard(client, ("127.0.0.1", host.port) if probe else None)
    board.post(Failure(1, "node 1", "boom"))
    assert board.cause() == Failure(1, "node 1", "boom") and board.reachable
    del host  # node 0's process stops hosting
    gc.collect()
    started = time.monotonic()
    assert board.cause() is None and board.first(wait_s=30) is None
    board.beat(1)
    assert not board.reachable and time.monotonic() - started < 5
    printed = capfd.readouterr()
    assert "c10d" not in printed.err + printed.out and "frame #" not in printed.err


def test_other_output_during_a_board_call_still_reaches_stderr(capfd):
    board = FailureBoard(_client(host := _host()))
    board._use(lambda: print("not c10d", file=open(2, "w", closefd=False), flush=True))  # noqa: SIM115
    assert "not c10d" in capfd.readouterr().err
    del host


def test_a_launcher_that_stops_beating_is_lost_unless_it_left(quick_heartbeats):
    host = _host()
    boards = {node: FailureBoard(_client(host)) for node in (1, 2)}
    watch = Heartbeats(FailureBoard(host), _world(0))
    deadline = time.monotonic() + 0.8
    while time.monotonic() < deadline:  # both beat, then node 1 leaves and node 2 goes silent
        boards[1].beat(1), boards[2].beat(2)
        assert watch.lost() == []
        time.sleep(0.05)
    boards[1].leave(1)
    deadline = time.monotonic() + 5
    while not (lost := watch.lost()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert lost == [2]


def test_a_lost_node_is_posted_as_the_cause_naming_its_host(quick_heartbeats):
    host = _host()
    host.set("node2", "gpu7 (pid 4242)")  # as check-in claims it
    node1 = FailureBoard(_client(host))
    cause = await_cause(node1, _world(1), wait_s=5)
    assert cause is not None and cause.lost_nodes == (0, 2), "neither node 0 nor node 2 beat"
    node0 = FailureBoard(host)
    node0.beat(0)
    assert node0.cause() == cause
    assert cause.describe().startswith("Nodes 0, 2 on host unknown; gpu7 (pid 4242) were lost: its launcher")


def test_a_cause_posted_first_wins_over_a_lost_node(quick_heartbeats):
    host = _host()
    FailureBoard(host).post(Failure(3, "node 1, local rank 1", "ValueError: boom"))
    assert await_cause(FailureBoard(_client(host)), _world(0), wait_s=5).rank == 3


def test_node_0_leaves_once_the_others_have_left_or_after_a_bound(monkeypatch):
    host = _host()
    node0, node1 = FailureBoard(host), FailureBoard(_client(host))
    node1.leave(1)
    node0.leave(0)
    started = time.monotonic()
    node0.wait_until_left(2)
    assert time.monotonic() - started < 1
    monkeypatch.setattr(failure_board, "FAILURE_REPORT_WAIT_S", 0.3)
    node0.wait_until_left(3)  # node 2 never leaves: the wait is bounded
    assert time.monotonic() - started < 2
