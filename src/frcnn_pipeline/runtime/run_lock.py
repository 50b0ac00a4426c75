"""One training run per run name at a time: a lock beside its folder, `<checkpoint dir>/<run name>.lock`.

Two runs writing one folder corrupt each other (one's clean-up deletes the other's checkpoint, their metric
lines interleave). The lock is an exclusive `flock` on that file, which the kernel drops when the holder dies
however it dies, so a lock is never left held; the file names its holder (PID, host, start time) for the
error a second run shows, and a clean release removes it. On NFS, Linux maps `flock` to NFS locks, so runs on
different hosts exclude each other too; a Lustre file system needs the `flock` mount option for that.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from types import TracebackType

from frcnn_pipeline.errors import UserFacingError

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"


class RunFolderLockedError(UserFacingError, RuntimeError):
    """Another process trains into the same run folder."""


class RunFolderLock:
    """`with RunFolderLock(run_dir, name):` holds the folder's lock or raises RunFolderLockedError."""

    def __init__(self, run_dir: str | Path, run_name: str):
        run_dir = Path(run_dir)
        self.path = run_dir.with_name(run_dir.name + LOCK_SUFFIX)
        self.run_name = run_name
        self._fd: int | None = None

    def __enter__(self) -> RunFolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = self._lock()
        previous = _read_holder(fd)
        if previous:
            log.warning(
                "Taking over the lock of a run that ended without releasing it (%s): %s",
                _describe(previous),
                self.path,
            )
        _write_holder(fd, self.run_name)
        self._fd = fd
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._fd is None:
            return
        self.path.unlink()  # while still held: a run waiting on this file sees it replaced and retries
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def _lock(self) -> int:
        """The locked file's descriptor. A file removed by its holder's release, between our open and our
        lock, is no longer the lock: open the path again."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunFolderLockedError(
                    f"Another training run holds {self.path}: {_describe(holder)}. Wait for it to finish, "
                    "stop it, or train under another name (--params train.run_name=<new name>)."
                ) from None
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)


def _write_holder(fd: int, run_name: str) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "run_name": run_name,
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    os.fsync(fd)


def _read_holder(fd: int) -> dict:
    text = os.pread(fd, 4096, 0)
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {"unreadable": text[:80].decode(errors="replace")}


def _describe(holder: dict) -> str:
    if not holder or "pid" not in holder:
        return "holder unknown"
    return f"PID {holder['pid']} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
