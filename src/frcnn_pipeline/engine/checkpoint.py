"""Training checkpoints: atomic writes (temporary file, fsync, rename), the last K kept, safe loading,
resuming from the newest one that loads, and the record that a checkpoint's outputs are saved."""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from frcnn_pipeline.console.detail import DETAIL
from frcnn_pipeline.errors import UserFacingError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^model_(\d{7,})\.pth$")
# A checkpoint that does not load is renamed so: not resumed, not counted by keep_last, kept for inspection.
UNREADABLE_SUFFIX = ".unreadable"
# In the run folder: the checkpoint whose outputs (the train node's) are all saved.
OUTPUTS_SAVED = "outputs_saved.json"


class CheckpointUnreadableError(UserFacingError, RuntimeError):
    """A checkpoint file is truncated, corrupt, or holds objects that weights_only loading refuses."""

    def __init__(self, path: Path, reason: str):
        super().__init__(
            f"Cannot load checkpoint {path}: {reason}. Delete it to resume from an earlier checkpoint, or "
            "delete its run folder to train afresh."
        )
        self.reason = reason


class NoReadableCheckpointError(UserFacingError, RuntimeError):
    """A run folder holds checkpoints and none of them loads."""


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """`write` into a temporary file in the same folder, fsync, then rename over `path`.

    A crash at any point leaves either the old file or the new one, never a truncated one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save, atomically (see `_atomic_write`)."""
    _atomic_write(path, lambda stream: torch.save(obj, stream))


class CheckpointManager:
    """`<directory>/model_<iteration>.pth`, keeping the newest `keep_last`."""

    def __init__(self, directory: str | Path, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError(f"train.checkpoint.keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (temporary files of interrupted writes are not listed)."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.match(p.name))]
        return [path for _, path in sorted(found)]

    def latest(self) -> Path | None:
        """The newest checkpoint that loads (its tensors are not read); see `load_latest`."""
        return self.load_latest(mmap=True)[0]

    def load_latest(self, *, mmap: bool = False) -> tuple[Path, dict[str, Any]] | tuple[None, None]:
        """The newest checkpoint that loads and its state; (None, None) when the folder holds none.

        Newer ones that do not load are renamed `<name>.unreadable`, with a warning saying why: a resume
        continues from the newest good state, and keep_last no longer counts them.

        Raises:
            NoReadableCheckpointError: there are checkpoints but none loads (nothing is renamed then).
        """
        unreadable: list[tuple[Path, str]] = []
        for path in reversed(self.checkpoints()):
            try:
                state = load_checkpoint(path, mmap=mmap)
            except CheckpointUnreadableError as error:
                unreadable.append((path, error.reason))
                continue
            for skipped, reason in unreadable:
                self._set_aside(skipped, reason, path)
            return path, state
        if unreadable:
            names = ", ".join(path.name for path, _ in unreadable)
            raise NoReadableCheckpointError(
                f"No checkpoint in {self.directory} loads ({names}; the newest: {unreadable[0][1]}). Delete "
                "that folder to train this run afresh, or choose a new train.run_name."
            )
        return None, None

    def _set_aside(self, path: Path, reason: str, resumed: Path) -> None:
        target = path.with_name(path.name + UNREADABLE_SUFFIX)
        try:
            path.replace(target)
        except FileNotFoundError:  # another worker of this run set it aside first
            return
        log.warning(
            "Skipped checkpoint %s, which does not load (%s): resuming from %s; the file is kept as %s",
            path,
            reason,
            resumed.name,
            target.name,
        )

    def path(self, iteration: int) -> Path:
        return self.directory / f"model_{iteration:07d}.pth"

    def save(self, iteration: int, state: dict[str, Any]) -> Path:
        # The outputs saved so far were made from an older checkpoint.
        (self.directory / OUTPUTS_SAVED).unlink(missing_ok=True)
        path = self.path(iteration)
        atomic_save(state, path)
        for old in self.checkpoints()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        self._remove_stale_temporaries()
        log.info("Saved checkpoint %s", path, extra=DETAIL)
        return path

    def _remove_stale_temporaries(self) -> None:
        # Left by a process killed mid-write; only ever written by this run's rank 0.
        for stale in self.directory.glob(".model_*.pth.*.tmp"):
            stale.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """Load with weights_only=True: a checkpoint holds tensors, numbers, strings, lists and dicts only.

    `mmap`: tensors are read only when touched (reading a checkpoint's small entries stays cheap).

    Raises:
        CheckpointUnreadableError: the file is missing, truncated, corrupt or holds other objects.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointUnreadableError(path, "no such file")
    # torch.save writes a zip archive, whose directory is at the end: a truncated file has none.
    if not zipfile.is_zipfile(path):
        raise CheckpointUnreadableError(path, "not a complete zip archive (truncated or corrupt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:
        raise CheckpointUnreadableError(path, _load_failure(error)) from error


def _load_failure(error: Exception) -> str:
    """torch.load's reason, without its paragraphs of advice."""
    text = " ".join(str(error).split())
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].split(" Check the documentation")[0]
        return f"corrupt, or holds more than tensors and plain values ({detail.split('. ')[0].strip()})"
    return text.split(". ")[0] or type(error).__name__


def mark_outputs_saved(checkpoint: Path) -> None:
    """Records in `checkpoint`'s folder that every output made from it is saved (a rerun has nothing to redo).

    The next checkpoint saved in that folder withdraws the record.
    """
    record = {
        "checkpoint": checkpoint.name,
        "saved_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    _atomic_write(checkpoint.parent / OUTPUTS_SAVED, lambda stream: stream.write(json.dumps(record).encode()))


def outputs_saved(checkpoint: Path) -> bool:
    """Whether every output made from `checkpoint` was saved (`mark_outputs_saved`)."""
    try:
        record = json.loads((checkpoint.parent / OUTPUTS_SAVED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("checkpoint") == checkpoint.name
