"""Broken MLflow stores for the tests, made for real: an SQLite file another process keeps locked, and a
folder a command sees read-only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

HOLD_LOCK = (
    "import sqlite3, sys, time\n"
    "connection = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "connection.execute('BEGIN EXCLUSIVE')\n"
    "print('locked', flush=True)\n"
    "time.sleep(600)\n"
)
# Run as `sh -c REMOUNT FOLDER COMMAND...`: FOLDER read-only in a mount namespace of the command's own.
REMOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


@contextmanager
def locked_by_another_process(database: Path) -> Iterator[int]:
    """A process holds the SQLite database's write lock, as an open sqlite3 shell would; yields its PID."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(database)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


@contextmanager
def read_only(folder: Path) -> Iterator[list[str]]:
    """Yields the prefix of a command that sees `folder` (and the files in it) read-only.

    File modes stop every user but root; for root the folder is remounted read-only in a mount namespace of
    the command's own (`unshare`, needs CAP_SYS_ADMIN). Skips where neither is possible.
    """
    if os.geteuid() != 0:
        paths = [folder, *folder.iterdir()]
        modes = {path: path.stat().st_mode for path in paths}
        for path in paths:
            path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield []
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "--mount", "true"], check=False).returncode != 0:
        pytest.skip(
            "root, and no mount namespace to make a folder read-only in (file modes do not stop root)"
        )
    yield [unshare, "--mount", "sh", "-c", REMOUNT, str(folder)]
