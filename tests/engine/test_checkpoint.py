"""Checkpoints: atomic writes survive a kill mid-write, the last K are kept, bad files fail clearly."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from frcnn_pipeline.engine.checkpoint import CheckpointManager, atomic_save, load_checkpoint

# Writes checkpoint 2 through a torch.save that stalls after writing part of the file, so the test can kill
# the process at exactly that moment.
_STALLED_WRITER = """
import sys, time
import torch
from frcnn_pipeline.engine import checkpoint

def stalled_save(obj, stream):
    stream.write(b"PK partial zip" * 4096)
    stream.flush()
    time.sleep(120)

checkpoint.torch.save = stalled_save
checkpoint.CheckpointManager(sys.argv[1]).save(2, {"weights": torch.full((4,), 2.0)})
"""


def test_kill_during_checkpoint_write_leaves_previous_checkpoint_intact(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    manager.save(1, {"weights": torch.full((4,), 1.0)})
    writer = subprocess.Popen([sys.executable, "-c", _STALLED_WRITER, str(tmp_path)])
    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size for p in tmp_path.glob(".model_*.tmp")):
            assert writer.poll() is None, "the writer exited before writing"
            assert time.monotonic() < deadline, "the writer never started writing"
            time.sleep(0.05)
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert [p.name for p in manager.checkpoints()] == ["model_0000001.pth"]
    assert torch.equal(load_checkpoint(manager.latest())["weights"], torch.full((4,), 1.0))
    # The next successful save sweeps the half-written temporary away.
    manager.save(3, {"weights": torch.full((4,), 3.0)})
    assert not list(tmp_path.glob(".model_*.tmp"))


def test_keeps_last_k_newest_first_by_iteration(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for iteration in (5, 10, 100):
        manager.save(iteration, {"iteration": iteration})
    assert [p.name for p in manager.checkpoints()] == ["model_0000010.pth", "model_0000100.pth"]
    assert load_checkpoint(manager.latest())["iteration"] == 100


def test_failed_write_leaves_no_temporary_and_old_file(tmp_path):
    path = tmp_path / "model_0000001.pth"
    atomic_save({"a": 1}, path)
    with pytest.raises(Exception):  # noqa: B017 - any pickling error
        atomic_save({"a": lambda: None}, path)
    assert load_checkpoint(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_corrupt_or_unsafe_checkpoint_is_a_clear_error(tmp_path):
    corrupt = tmp_path / "model_0000001.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=r"(?s)Cannot load checkpoint .*model_0000001.pth.*resume: false"):
        load_checkpoint(corrupt)
    unsafe = tmp_path / "model_0000002.pth"
    torch.save({"object": Path("x")}, unsafe)  # an arbitrary class: refused by weights_only
    with pytest.raises(RuntimeError, match="Cannot load checkpoint"):
        load_checkpoint(unsafe)


def test_keep_last_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="keep_last must be >= 1"):
        CheckpointManager(tmp_path, keep_last=0)
