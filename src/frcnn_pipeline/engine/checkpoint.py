"""Training checkpoints: atomic writes (temporary file, fsync, rename), the last K kept, safe loading."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

_NAME = re.compile(r"^model_(\d{7,})\.pth$")


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`.

    A crash at any point leaves either the old file or the new one, never a truncated one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
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
        found = self.checkpoints()
        return found[-1] if found else None

    def path(self, iteration: int) -> Path:
        return self.directory / f"model_{iteration:07d}.pth"

    def save(self, iteration: int, state: dict[str, Any]) -> Path:
        path = self.path(iteration)
        atomic_save(state, path)
        for old in self.checkpoints()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        self._remove_stale_temporaries()
        log.info("Saved checkpoint %s", path)
        return path

    def _remove_stale_temporaries(self) -> None:
        # Left by a process killed mid-write; only ever written by this run's rank 0.
        for stale in self.directory.glob(".model_*.pth.*.tmp"):
            stale.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """Load with weights_only=True: a checkpoint holds tensors, numbers, strings, lists and dicts only.

    `mmap`: tensors are read only when touched (reading a checkpoint's small entries stays cheap).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:
        raise RuntimeError(
            f"Cannot load checkpoint {path}: {error}. Delete it to resume from the previous one, "
            "or set train.checkpoint.resume: false to start afresh."
        ) from error
