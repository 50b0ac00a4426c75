"""Checkpoints: atomic writes survive a kill mid-write, the last K are kept, bad files fail clearly, a resume
takes the newest one that loads, and the record that a checkpoint's outputs are saved."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from frcnn_pipeline.engine.checkpoint import (
    OUTPUTS_SAVED,
    CheckpointManager,
    CheckpointUnreadableError,
    NoReadableCheckpointError,
    atomic_save,
    load_checkpoint,
    mark_outputs_saved,
    outputs_saved,
)
from frcnn_pipeline.errors import UserFacingError

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


def test_corrupt_or_unsafe_checkpoint_is_a_one_line_error(tmp_path):
    corrupt = tmp_path / "model_0000001.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointUnreadableError) as raised:
        load_checkpoint(corrupt)
    assert isinstance(raised.value, UserFacingError) and "\n" not in str(raised.value)
    assert str(raised.value) == (
        f"Cannot load checkpoint {corrupt}: not a complete zip archive (truncated or corrupt). Delete it to "
        "resume from an earlier checkpoint, or delete its run folder to train afresh."
    )
    unsafe = tmp_path / "model_0000002.pth"
    torch.save({"object": Path("x")}, unsafe)  # an arbitrary class: refused by weights_only
    with pytest.raises(
        CheckpointUnreadableError, match=r"holds more than tensors .*pathlib\.PosixPath"
    ) as raised:
        load_checkpoint(unsafe)
    assert len(str(raised.value).replace(str(unsafe), "")) < 300, "torch's paragraphs of advice are left out"


def _truncate(path: Path) -> None:
    """Cut the file in half, as a copy or a disk that stopped midway would leave it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_resume_skips_an_unreadable_latest_checkpoint_and_sets_it_aside(tmp_path, caplog):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for iteration in (1, 2):
        manager.save(iteration, {"iteration": iteration, "weights": torch.full((1000,), float(iteration))})
    _truncate(manager.path(2))

    with caplog.at_level(logging.WARNING, logger="frcnn_pipeline.engine.checkpoint"):
        path, state = manager.load_latest()

    assert path == manager.path(1) and state["iteration"] == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"Skipped checkpoint {manager.path(2)}, which does not load (not a complete zip archive "
        "(truncated or corrupt)): resuming from model_0000001.pth; the file is kept as "
        "model_0000002.pth.unreadable"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_0000001.pth", "model_0000002.pth.unreadable"]
    # Set aside, it no longer counts among the kept ones: the next two saves keep 1's successors, not it.
    manager.save(3, {"iteration": 3})
    assert [p.name for p in manager.checkpoints()] == ["model_0000001.pth", "model_0000003.pth"]
    assert manager.latest() == manager.path(3)


def test_no_checkpoint_that_loads_is_a_short_error_naming_the_folder_and_the_fix(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for iteration in (1, 2):
        manager.save(iteration, {"iteration": iteration})
        _truncate(manager.path(iteration))
    with pytest.raises(NoReadableCheckpointError) as raised:
        manager.load_latest()
    message = str(raised.value)
    assert isinstance(raised.value, UserFacingError) and "\n" not in message and len(message) < 400
    assert message == (
        f"No checkpoint in {tmp_path} loads (model_0000002.pth, model_0000001.pth; the newest: not a "
        "complete zip archive (truncated or corrupt)). Delete that folder to train this run afresh, or "
        "choose a new train.run_name."
    )
    assert [p.name for p in manager.checkpoints()] == ["model_0000001.pth", "model_0000002.pth"], "kept"
    with pytest.raises(NoReadableCheckpointError):
        manager.latest()


def test_an_empty_run_folder_has_nothing_to_resume(tmp_path):
    assert CheckpointManager(tmp_path / "never_trained").load_latest() == (None, None)


def test_outputs_saved_names_one_checkpoint_and_the_next_checkpoint_withdraws_it(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    first = manager.save(1, {"iteration": 1})
    assert not outputs_saved(first)
    mark_outputs_saved(first)
    assert outputs_saved(first)
    second = manager.save(2, {"iteration": 2})
    assert not (tmp_path / OUTPUTS_SAVED).exists() and not outputs_saved(second)
    (tmp_path / OUTPUTS_SAVED).write_text("{truncated")
    assert not outputs_saved(second), "an unreadable record claims nothing"


def test_keep_last_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="keep_last must be >= 1"):
        CheckpointManager(tmp_path, keep_last=0)
