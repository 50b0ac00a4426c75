"""Spawned workers on gloo: collectives, sharding, errors with their own type, no orphans."""

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from frcnn_pipeline.runtime import distributed
from frcnn_pipeline.runtime.world import WorldConfig


def _collectives(context, offset):
    gathered = distributed.all_gather_object(context.rank + offset)
    mean = distributed.reduce_mean({"value": torch.tensor(float(context.rank))})
    return {"gathered": gathered, "mean": mean["value"], "world": distributed.get_world_size()}


def _fail_on_rank_one(context):
    if context.rank == 1:
        raise KeyError("rank 1 is broken")
    distributed.barrier()


def test_two_gloo_workers_gather_reduce_and_return_rank0_result():
    result = distributed.launch(_collectives, WorldConfig(nproc_per_node=2, master_port=0), 10)
    assert result == {"gathered": [10, 11], "mean": 0.5, "world": 2}


def test_single_worker_runs_in_process_without_spawning():
    result = distributed.launch(_collectives, WorldConfig(nproc_per_node=1), 3)
    assert result == {"gathered": [3], "mean": 0.0, "world": 1}


def test_worker_exception_keeps_its_type_and_message():
    with pytest.raises(KeyError, match="rank 1 is broken"):
        distributed.launch(_fail_on_rank_one, WorldConfig(nproc_per_node=2, master_port=0))


def test_shards_cover_every_item_once():
    shards = [distributed.shard_indices(10, rank, 3) for rank in range(3)]
    assert [list(s) for s in shards] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert distributed.shard_indices(5) == range(5)


def test_multi_node_needs_a_fixed_port_and_a_valid_rank():
    with pytest.raises(ValueError, match="node_rank must be in"):
        distributed.launch(_collectives, WorldConfig(nproc_per_node=2, num_nodes=2, node_rank=2), 0)
    with pytest.raises(ValueError, match="master_port must be set"):
        distributed.launch(_collectives, WorldConfig(nproc_per_node=2, num_nodes=2, master_port=0), 0)


LAUNCHER_SCRIPT = """
import os
import time
from frcnn_pipeline.runtime import distributed
from frcnn_pipeline.runtime.world import WorldConfig

def sleep(context):
    os.write(1, f"WORKER {os.getpid()}\\n".encode())  # one write: the two workers' lines cannot interleave
    time.sleep(600)

if __name__ == "__main__":
    distributed.launch(sleep, WorldConfig(nproc_per_node=2, master_port=0))
"""


def test_workers_die_with_a_killed_launcher(tmp_path):
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER_SCRIPT)
    launcher = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    output = ""
    deadline = time.monotonic() + 120
    # Raw reads of the pipe: a buffered readline() could take both workers' lines in one read and leave
    # select() waiting on an empty pipe.
    while output.count("WORKER ") < 2:
        assert time.monotonic() < deadline and launcher.poll() is None, f"workers did not start: {output!r}"
        if select.select([launcher.stdout], [], [], 1.0)[0]:
            output += os.read(launcher.stdout.fileno(), 4096).decode()
    lines = output.splitlines()
    workers = [int(line.split()[1]) for line in lines if line.startswith("WORKER ")]
    launcher.kill()  # SIGKILL: no chance to stop its workers itself
    launcher.wait()
    deadline = time.monotonic() + 60
    while any(_running(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived its launcher"
        time.sleep(0.2)


def _running(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
