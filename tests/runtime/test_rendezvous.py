"""Nodes meeting on 127.0.0.1: wrong settings give clear errors before any work; a failed rank is named."""

from __future__ import annotations

import datetime
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from torch.distributed import TCPStore

from frcnn_pipeline.runtime import distributed, failure_board, rendezvous
from frcnn_pipeline.runtime.rendezvous import RendezvousError
from frcnn_pipeline.runtime.world import WorldConfig

# One "node": a launcher process running `launch` on a small job. The job lives in the script's own module so
# that spawned workers can import it.
NODE_SCRIPT = """
import json, sys, time
from frcnn_pipeline.runtime import distributed, failure_board, rendezvous
from frcnn_pipeline.runtime.world import WorldConfig

def job(context, mode):
    distributed.barrier()
    if mode == "fail" and context.rank == 1:
        raise ValueError("boom on rank 1")
    if mode == "wait":
        print("IN THE JOB", context.rank, flush=True)
        time.sleep(120)
    distributed.barrier()
    return {"rank": context.rank, "world": context.world_size}

if __name__ == "__main__":
    try:
        world = WorldConfig(**json.loads(sys.argv[1]))
        print("RESULT", distributed.launch(job, world, sys.argv[2]), flush=True)
    except BaseException as error:
        print("ERROR", type(error).__name__, error, flush=True)
        sys.exit(1)
"""
BOUND_S = 120  # a guard against hangs, far above the expected few seconds


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def start_node(tmp_path):
    script = tmp_path / "node.py"
    script.write_text(NODE_SCRIPT)
    started: list[subprocess.Popen] = []

    def start(mode: str = "ok", **fields) -> subprocess.Popen:
        fields = {"master_addr": "127.0.0.1", "rendezvous_timeout_s": 60, "timeout_minutes": 1, **fields}
        process = subprocess.Popen(
            [sys.executable, str(script), json.dumps(fields), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=BOUND_S)
    return process.returncode, output


def _error_line(output: str) -> str:
    return next(
        (line for line in output.splitlines() if line.startswith(("ERROR", "RESULT"))), output[-2000:]
    )


def test_port_in_use_is_named_before_any_work():
    with socket.socket() as holder:
        holder.bind(("", 0))
        holder.listen()
        port = holder.getsockname()[1]
        world = WorldConfig(num_nodes=2, node_rank=0, master_port=port, rendezvous_timeout_s=5)
        with pytest.raises(RendezvousError, match=rf"master_port {port} is already in use on this machine"):
            distributed.launch(lambda context: None, world)


def test_unreachable_master_is_named_after_the_rendezvous_timeout():
    world = WorldConfig(num_nodes=2, node_rank=1, master_port=_free_port(), rendezvous_timeout_s=1)
    with pytest.raises(
        RendezvousError, match=r"Node 1 cannot reach the rendezvous of node 0 at 127\.0\.0\.1:\d+"
    ):
        distributed.launch(lambda context: None, world)


def test_two_nodes_one_worker_each_return_rank_0_result_everywhere(start_node):
    port = _free_port()
    nodes = [start_node(num_nodes=2, node_rank=rank, master_port=port) for rank in (0, 1)]
    for process in nodes:
        code, output = _finish(process)
        assert code == 0, output[-3000:]
        assert "RESULT {'rank': 0, 'world': 2}" in output


def test_a_failing_rank_is_named_on_the_other_node(start_node):
    port = _free_port()
    node0, node1 = (start_node("fail", num_nodes=2, node_rank=rank, master_port=port) for rank in (0, 1))
    code1, output1 = _finish(node1)
    code0, output0 = _finish(node0)
    assert code1 != 0 and "ERROR ValueError boom on rank 1" in _error_line(output1)
    assert code0 != 0
    assert _error_line(output0).startswith("ERROR WorkerFailedError")
    assert "Rank 1 (node 1, " in _error_line(output0)
    assert "failed first: ValueError: boom on rank 1" in _error_line(output0)


def test_two_nodes_claiming_one_rank_stop_everyone_naming_the_rank(start_node):
    port = _free_port()
    processes = [start_node("wait", num_nodes=2, node_rank=rank, master_port=port) for rank in (0, 1, 1)]
    results = [_finish(process) for process in processes]
    assert all(code != 0 for code, _ in results), [_error_line(output) for _, output in results]
    claim = "Two nodes claim runtime.node_rank 1"
    assert sum(_error_line(output).startswith(f"ERROR RendezvousError {claim}") for _, output in results) == 1
    assert claim in _error_line(results[0][1]), "node 0 names the problem too"


@pytest.mark.parametrize(
    ("node1_fields", "names"),
    [
        ({"nproc_per_node": 2}, "nproc_per_node: node 0 1, node 1 2"),
        ({"num_nodes": 3}, "num_nodes: node 0 2, node 1 3"),
    ],
)
def test_nodes_disagreeing_on_the_world_both_stop(start_node, node1_fields, names):
    port = _free_port()
    node0 = start_node(num_nodes=2, node_rank=0, master_port=port)
    node1 = start_node(**{"num_nodes": 2, "node_rank": 1, "master_port": port, **node1_fields})
    for process in (node0, node1):
        code, output = _finish(process)
        assert code != 0 and "The nodes disagree on the world" in _error_line(output), output[-3000:]
        assert names in _error_line(output)


def test_node_0_gone_before_the_nodes_met_is_named():
    timeout = datetime.timedelta(seconds=5)
    node0_store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timeout)
    world = WorldConfig(num_nodes=2, node_rank=1, master_port=node0_store.port, rendezvous_timeout_s=60)
    client = TCPStore("127.0.0.1", node0_store.port, is_master=False, timeout=timeout)
    raised: list[BaseException] = []

    def node1() -> None:
        try:
            rendezvous.check_in(rendezvous.launch_store(client, 1), world, "job")
        except BaseException as error:
            raised.append(error)

    waiting = threading.Thread(target=node1)
    waiting.start()
    launch = rendezvous.launch_store(client, 1)
    while not launch.check(["view1"]):  # until node 1 has checked in and waits for node 0
        time.sleep(0.05)
    del node0_store  # node 0's process stops hosting
    gc.collect()
    waiting.join(BOUND_S)
    assert len(raised) == 1 and isinstance(raised[0], RendezvousError), raised
    assert "Node 1 lost the rendezvous at 127.0.0.1:" in str(raised[0]) and "node 0 stopped" in str(raised[0])


@pytest.mark.parametrize(("num_nodes", "lost"), [(2, 0), (3, 2)])
def test_a_lost_node_is_named_by_every_other_node_in_one_line_within_seconds(start_node, num_nodes, lost):
    """Workers that are not in a collective do not notice: the launchers do (node 0's store unreachable, or
    another launcher's heartbeat still), and print the error alone (no c10d stack traces)."""
    port = _free_port()
    nodes = [
        start_node("wait", num_nodes=num_nodes, node_rank=rank, master_port=port) for rank in range(num_nodes)
    ]
    outputs: list[list[str]] = [[] for _ in nodes]
    readers = [threading.Thread(target=lambda p=process, o=output: o.extend(p.stdout), daemon=True)
               for process, output in zip(nodes, outputs, strict=True)]  # fmt: skip
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + BOUND_S
    while sum("IN THE JOB" in line for output in outputs for line in output) < num_nodes:
        assert time.monotonic() < deadline, outputs
        time.sleep(0.1)
    before = [len(output) for output in outputs]
    nodes[lost].send_signal(signal.SIGKILL)  # its worker dies with it
    killed = time.monotonic()
    for rank, process in enumerate(nodes):
        process.wait(BOUND_S)
        readers[rank].join(BOUND_S)
        if rank == lost:
            continue
        assert time.monotonic() - killed < failure_board.HEARTBEAT_STALE_S + distributed.GRACE_S + 20
        after = outputs[rank][before[rank] :]
        assert process.returncode != 0 and len(after) == 1, after
        assert after[0].startswith(f"ERROR NodeLostError Node {lost} ") and " was lost: " in after[0]
