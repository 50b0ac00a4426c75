"""The MLflow tracking store: checked before a run starts, and kept pointing into the project logging to it.

kedro-mlflow opens the store as the Kedro context is created. An SQLite store that cannot be opened or
written, or that another process keeps locked, made MLflow retry for up to a minute and print hundreds of
lines of SQLAlchemy traceback; `check_sqlite_store` finds out in seconds, and `store_error` says what is
wrong, where, and the fix (a `TrackingStoreError`, shown in a few lines by the project's `kedro run`).

A store that cannot be used is swapped for one in memory (`use_a_private_store`, as on the processes of a
multi-node job that do not track), so that a run with tracking switched off still runs.

MLflow records absolute artifact locations, so a copied or moved project would keep writing its artifacts
into the original's folder. `repoint_moved_project` moves a store's locations from the old project folder to
the new one; MLflow has no API that changes an artifact location, so it rewrites the SQLite rows in one
transaction.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from urllib.parse import unquote, urlparse

from kedro.config import MissingConfigException
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from frcnn_pipeline.errors import UserFacingError

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"
IN_MEMORY = SQLITE_PREFIX + ":memory:"
# Another run's writes hold the lock for milliseconds; a lock held longer is a process that keeps it.
LOCK_WAIT_S = 5.0
# What MLflow raises when its store fails: its own errors and SQLAlchemy's (a SQL store); and OSError when
# it writes artifact files or reaches a server.
MLFLOW_ERRORS = (MlflowException, SQLAlchemyError)
STORE_ERRORS = (*MLFLOW_ERRORS, OSError)
ELSEWHERE = (
    "or track elsewhere (server.mlflow_tracking_uri in conf/local/mlflow.yml) or not at all "
    "(tracking.disable_tracking.pipelines in conf/local/mlflow.yml)."
)
# Columns that hold artifact locations (logged_models: MLflow 3; model_versions: the model registry).
ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
)


class TrackingStoreError(UserFacingError, RuntimeError):
    """The MLflow tracking store cannot be used; the message names it and the fix."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of an SQLite store URI (None: another kind of store, or one in memory)."""
    if not uri.startswith(SQLITE_PREFIX) or uri == IN_MEMORY:
        return None
    return Path(unquote(uri.removeprefix(SQLITE_PREFIX).split("?")[0]))


def configured_store(context) -> str:
    """The tracking URI of mlflow.yml ("" when it sets none: kedro-mlflow's default, a folder of files)."""
    try:
        return context.config_loader["mlflow"].get("server", {}).get("mlflow_tracking_uri") or ""
    except MissingConfigException:
        return ""


def use_a_private_store(context) -> None:
    """A store in memory for this process: kedro-mlflow opens a store at start-up whether the run tracks or
    not. For the processes of a multi-node job other than the main one, which track nothing and may write
    nothing into the project (two processes creating one SQLite file race), and in place of a store that
    cannot be used. A config value set on the loader takes precedence over the files."""
    try:
        config = context.config_loader["mlflow"]
    except MissingConfigException:
        config = {}
    server = {**config.get("server", {}), "mlflow_tracking_uri": IN_MEMORY}
    context.config_loader["mlflow"] = {**config, "server": server}


def check_sqlite_store(uri: str) -> None:
    """Creates the store's folder, opens the database and writes to it in a transaction that is rolled back.

    Raises TrackingStoreError when any of it fails, or when another process holds a write lock for
    LOCK_WAIT_S.
    """
    path = sqlite_path(uri)
    if path is None:
        return
    if path.is_dir():
        raise TrackingStoreError(
            f"The MLflow tracking store {uri} is a folder, not an SQLite file. Fix: move {path} away (MLflow "
            f"creates a new store there), {ELSEWHERE}"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(path, timeout=LOCK_WAIT_S, isolation_level=None)) as connection:
            connection.execute("BEGIN IMMEDIATE")
            # A schema change needs the rollback journal beside the file: an unwritable folder fails here.
            connection.execute("CREATE TABLE frcnn_pipeline_write_check (x)")
            connection.execute("ROLLBACK")
    except (sqlite3.Error, OSError) as error:
        raise store_error(uri, error) from error


def store_error(uri: str, error: BaseException) -> TrackingStoreError:
    """What `error` (sqlite3's, SQLAlchemy's, MLflow's, an OSError) means for the store at `uri`; the fix."""
    cause, seen = error, set()
    # MLflow wraps SQLAlchemy's error, which wraps sqlite3's: the innermost names the problem.
    while (inner := cause.__cause__ or getattr(cause, "orig", None)) is not None and id(inner) not in seen:
        seen.add(id(cause))
        cause = inner
    text = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    path = sqlite_path(uri)
    if path is None:
        what, fix = f"cannot be used ({text})", "check that the server answers and the credentials hold,"
    else:
        what, fix = _sqlite_problem(path, getattr(cause, "sqlite_errorname", ""), text)
    return TrackingStoreError(f"The MLflow tracking store {uri} {what}. Fix: {fix} {ELSEWHERE}")


def _sqlite_problem(path: Path, code: str, text: str) -> tuple[str, str]:
    """(what is wrong, the fix) for sqlite3's error `code` (SQLITE_BUSY...) on the database at `path`."""
    if code in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        holders = lock_holders(path)
        who = f"process {', '.join(holders)}" if holders else "another process"
        return (
            f"is locked: {who} has held a write lock on it for over {LOCK_WAIT_S:g} s",
            "end that process (or its open transaction) and run again,",
        )
    if code == "SQLITE_FULL":
        return f"cannot be written: the disk is full ({text})", f"free space on the disk of {path.parent},"
    if code in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        return (
            f"is not an SQLite database, or is damaged ({text})",
            f"move {path} away to start a new store (or restore it from a backup),",
        )
    return (
        f"cannot be opened or written ({text})",
        f"make {path} and its folder {path.parent} writable (a read-only file, folder or file system),",
    )


def lock_holders(path: Path) -> list[str]:
    """The processes that hold a write lock on `path`, as 'PID (command)', from Linux's /proc/locks."""
    try:
        status = path.stat()
        table = Path("/proc/locks").read_text(encoding="ascii")
    except OSError:
        return []  # not Linux, or the file went away: the message says "another process"
    file_id = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
    # "1: POSIX  ADVISORY  WRITE 4242 fe:00:2293778 1073741824 1073742335" (a waiting lock has "->" in 2nd).
    pids = {
        int(fields[4])
        for fields in map(str.split, table.splitlines())
        if len(fields) > 5 and fields[3] == "WRITE" and fields[5] == file_id and fields[4].isdigit()
    }
    return [f"{pid} ({_command(pid)})" for pid in sorted(pids) if pid != os.getpid()]


def _command(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "ended"
    command = " ".join(word.decode(errors="replace") for word in words)
    return " ".join(command.split())[:120]  # on one line


def repoint_moved_project(uri: str, stored: str, configured: str | None, project: Path) -> bool:
    """When the SQLite store `uri` inside `project` recorded this project's `configured` artifact location
    as `stored`, in another folder (the project was copied or moved with its store), moves every artifact
    location of the store from that folder into `project`, with a warning. Returns whether it did."""
    database = sqlite_path(uri)
    if database is None or configured is None or not database.resolve().is_relative_to(project.resolve()):
        return False  # a store outside the project may serve other projects: its locations are theirs
    old_root = moved_project_root(stored, configured, project)
    if old_root is None:
        return False
    try:
        runs = repoint_artifacts(database, old_root, project)
    except sqlite3.Error as error:
        raise store_error(uri, error) from error
    log.warning(
        "This project was copied or moved from %s: the artifact locations in its MLflow store (%d run(s)) "
        "now point into %s; copy what is missing from %s",
        old_root,
        runs,
        project,
        old_root,
    )
    return True


def moved_project_root(stored: str, configured: str, project: Path) -> Path | None:
    """The project folder in which the store recorded the artifact location `stored`, when that is this
    project's `configured` location (inside `project`) in another folder: the project was copied or moved.
    None otherwise (the same folder, or a location chosen elsewhere)."""
    stored_path, configured_path = _local_path(stored), _local_path(configured)
    if stored_path is None or configured_path is None or not configured_path.is_relative_to(project):
        return None
    inside = configured_path.relative_to(project).parts
    if not inside or stored_path.parts[-len(inside) :] != inside:
        return None
    old_root = Path(*stored_path.parts[: -len(inside)])
    try:
        same = old_root == project or old_root.samefile(project)  # also through a symbolic link
    except OSError:
        same = False  # the old folder is gone: the project moved
    return None if same else old_root


def repoint_artifacts(database: Path, old_root: Path, new_root: Path) -> int:
    """Every artifact location of the SQLite store `database` inside `old_root` now in `new_root`, in one
    transaction; returns how many runs it moved."""
    runs = 0
    with closing(sqlite3.connect(database, timeout=LOCK_WAIT_S)) as connection, connection:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table, column in ARTIFACT_COLUMNS:
            if table not in tables:
                continue
            rows = connection.execute(f"SELECT rowid, {column} FROM {table}").fetchall()
            for rowid, location in rows:
                moved = _moved(location, old_root, new_root)
                if moved is not None:
                    connection.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (moved, rowid))
                    runs += table == "runs"
    return runs


def _moved(location: str | None, old_root: Path, new_root: Path) -> str | None:
    path = _local_path(location or "")
    if path is None or not path.is_relative_to(old_root):
        return None
    moved = new_root / path.relative_to(old_root)
    return moved.as_uri() if location.startswith("file:") else str(moved)


def _local_path(location: str) -> Path | None:
    """The local folder of an artifact location (a file: URI or an absolute path); None for remote ones."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and location.startswith("/"):
        return Path(location)
    return None
