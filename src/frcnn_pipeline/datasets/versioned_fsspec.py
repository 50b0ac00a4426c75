"""`VersionedFsspecDataset`: the shared base of this project's versioned datasets (a file or a folder on any
fsspec filesystem), written under a temporary name and renamed, so a crash never leaves a truncated artefact
under the real name.

kedro-datasets' own datasets repeat this set-up in each class; here it is written once for the three of ours.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from pathlib import PurePosixPath
from typing import Any, Generic, TypeVar

import fsspec
from kedro.io.core import (
    AbstractVersionedDataset,
    DatasetError,
    Version,
    get_filepath_str,
    get_protocol_and_path,
)

from frcnn_pipeline.errors import UserFacingError

log = logging.getLogger(__name__)

_Saved = TypeVar("_Saved")
_Loaded = TypeVar("_Loaded")


class OutputWriteError(UserFacingError, DatasetError):
    """An artefact could not be written (disk full, file size limit, permissions): nothing was saved under its
    name. A DatasetError, so that Kedro passes it on as it is."""

    def __init__(self, path: str, error: OSError, then: str = "run the same command again"):
        super().__init__(
            f"Cannot write {path}: {error.strerror or error}. Nothing was saved under that name. Free space "
            f"(or raise the file size limit, or fix the folder's permissions), then {then}."
        )


def remove_failed_write(filesystem: fsspec.AbstractFileSystem, path: str, *, versioned: bool) -> None:
    """Removes what a failed write left at `path` and, when versioned, its version folder if that is now empty
    (no empty version is left beside the complete ones)."""
    try:
        if filesystem.exists(path):
            filesystem.rm(path, recursive=True)
        version_folder = posixpath.dirname(path)
        if versioned and filesystem.isdir(version_folder) and not filesystem.ls(version_folder):
            filesystem.rmdir(version_folder)
    except OSError as error:
        log.warning("Could not remove %s after the failed write: %s", path, error)


class VersionedFsspecDataset(AbstractVersionedDataset[_Saved, _Loaded], Generic[_Saved, _Loaded]):
    """A versioned artefact at ``filepath``: a file, or a folder when ``IS_FOLDER``."""

    IS_FOLDER = False

    def __init__(
        self,
        *,
        filepath: str,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        fs_args = deepcopy(fs_args) or {}
        protocol, path = get_protocol_and_path(filepath, version)
        if protocol == "file":
            fs_args.setdefault("auto_mkdir", True)
        self._protocol = protocol
        self._fs = fsspec.filesystem(protocol, **(deepcopy(credentials) or {}), **fs_args)
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(path),
            version=version,
            exists_function=self._artefact_exists,
            glob_function=self._fs.glob,
        )

    def _artefact_exists(self, path: str) -> bool:
        return self._fs.isdir(path) if self.IS_FOLDER else self._fs.exists(path)

    def _load_path_str(self) -> str:
        return get_filepath_str(self._get_load_path(), self._protocol)

    def _save_path_str(self) -> str:
        return get_filepath_str(self._get_save_path(), self._protocol)

    def _write_file_atomically(self, payload: bytes) -> None:
        path = self._save_path_str()
        partial = f"{path}.partial"
        # A crash mid-write leaves a `.partial` file, never a truncated artefact under the real name; a failed
        # write removes its `.partial` (on a full disk, it holds the space the next try needs).
        with self._writing(partial, path):
            self._fs.pipe_file(partial, payload)
            self._fs.mv(partial, path)
        self._saved()

    @contextmanager
    def _writing(self, partial: str, path: str) -> Iterator[None]:
        """File system calls that write `partial` (then rename it to `path`): an OSError removes `partial` and
        ends in an `OutputWriteError`."""
        try:
            yield
        except OSError as error:
            remove_failed_write(self._fs, partial, versioned=self._version is not None)
            raise OutputWriteError(path, error) from error

    def _saved(self) -> None:
        self._fs.invalidate_cache(get_filepath_str(self._filepath, self._protocol))

    def _exists(self) -> bool:
        try:
            path = self._load_path_str()
        except DatasetError:
            return False
        return self._artefact_exists(path)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "protocol": self._protocol, "version": self._version}
