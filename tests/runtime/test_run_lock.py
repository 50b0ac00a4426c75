"""One training run per run folder: a second run stops at once naming the holder; a dead holder's lock is
taken over with a warning; other run names train side by side."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys

import pytest
from tiny_training import TINY_MODEL, runtime_config, train_config, train_from_parameters

from frcnn_pipeline.runtime.run_lock import RunFolderLock, RunFolderLockedError

HOLD = """
import sys, time
from frcnn_pipeline.runtime.run_lock import RunFolderLock
with RunFolderLock(sys.argv[1], "first"):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(run_dir) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_run_on_the_same_folder_stops_at_once_naming_the_holder(tmp_path):
    holder = _holder(tmp_path / "run")
    try:
        with pytest.raises(RunFolderLockedError) as refused, RunFolderLock(tmp_path / "run", "second"):
            pytest.fail("the lock was granted twice")
        message = str(refused.value)
        assert f"PID {holder.pid} on {socket.gethostname()}, started " in message
        assert "train.run_name=<new name>" in message
        with RunFolderLock(tmp_path / "other", "other"):  # another run name: side by side
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_holders_lock_is_taken_over_with_a_warning_and_a_clean_release_leaves_none(tmp_path, caplog):
    holder = _holder(tmp_path / "run")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock_file = tmp_path / "run.lock"
    assert json.loads(lock_file.read_text())["pid"] == holder.pid, "kill -9 leaves the holder's record"

    with caplog.at_level(logging.WARNING), RunFolderLock(tmp_path / "run", "again"):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert f"ended without releasing it (PID {holder.pid} on " in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING), RunFolderLock(tmp_path / "run", "again"):
        pass
    assert "ended without releasing" not in caplog.text, "a clean release leaves nothing to take over"
    assert not lock_file.exists()


def test_training_into_a_locked_run_folder_is_refused_before_any_work(tmp_path, tiny_tables):
    images, annotations = tiny_tables
    train = train_config(tmp_path)
    run_dir = tmp_path / "checkpoints" / train["run_name"]
    holder = _holder(run_dir)
    try:
        with pytest.raises(RunFolderLockedError, match=f"PID {holder.pid} "):
            train_from_parameters(images, annotations, 2, TINY_MODEL, train, runtime_config(num_workers=1))
    finally:
        holder.kill()
        holder.wait()
    assert not run_dir.exists() and not (tmp_path / "reporting").exists(), "the refused run wrote nothing"
