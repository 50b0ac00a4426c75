"""A node output that may be "unchanged": saving `UNCHANGED` writes nothing, not even a new version.

Kedro saves every output of a node that ran. A training rerun with nothing left to train (every iteration
is in the checkpoint) has nothing new to say, yet saving its outputs again would add one more model version
and overwrite the run's reports with an empty run's. The train node returns `UNCHANGED` instead, and each of
its outputs is declared through this wrapper, which skips that save; loading still gives the latest version.

    trained_model:
      type: frcnn_pipeline.datasets.KeepUnchangedDataset
      versioned: true                   # as for Kedro's CachedDataset: on the wrapper, not the dataset
      dataset:
        type: frcnn_pipeline.datasets.DetectorDataset
        filepath: data/06_models/trained_model.safetensors

A save that fails for want of room or rights (an OSError) ends with a short `OutputWriteError`, and what it
wrote under this run's version is removed: a truncated file is never the latest version.
"""

from __future__ import annotations

import logging
from pathlib import PurePosixPath
from typing import Any

import fsspec
from kedro.io.core import (
    VERSIONED_FLAG_KEY,
    AbstractDataset,
    AbstractVersionedDataset,
    Version,
    get_protocol_and_path,
)

from frcnn_pipeline.datasets.versioned_fsspec import OutputWriteError, remove_failed_write

log = logging.getLogger(__name__)

# A train rerun with nothing left to train saves the outputs a failed save lost (pipelines/train/nodes.py).
_AFTER_A_FAILED_SAVE = (
    "run the same command again: it saves the run's outputs from its last checkpoint, without training again"
)


class _Unchanged:
    """The type of `UNCHANGED` (one instance; survives pickling as itself)."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __reduce__(self) -> tuple[type, tuple]:
        return type(self), ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()


class KeepUnchangedDataset(AbstractDataset):
    """Wraps a dataset; `save(UNCHANGED)` keeps what is there. Everything else goes to the wrapped dataset."""

    def __init__(
        self,
        dataset: dict[str, Any],
        version: Version | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        if VERSIONED_FLAG_KEY in dataset:
            raise ValueError(
                "KeepUnchangedDataset: put `versioned: true` on the wrapper, not in its `dataset:` "
                "(the wrapper passes the session's load and save versions on)."
            )
        config = {**dataset, VERSIONED_FLAG_KEY: True} if version else dict(dataset)
        self._versioned = version is not None
        # Where the wrapped dataset writes, from its own config: Kedro keeps that private.
        self._protocol, self._filepath = get_protocol_and_path(str(dataset.get("filepath", "")))
        self._storage_options = {**(dataset.get("fs_args") or {}), **(dataset.get("credentials") or {})}
        self._described = {key: value for key, value in dataset.items() if key != "credentials"}
        self._dataset = AbstractDataset.from_config(
            "wrapped", config, *((version.load, version.save) if version else ())
        )
        self.metadata = metadata
        if hasattr(self._dataset, "preview"):
            # kedro-viz previews the wrapped data: its table, plot or JSON.
            self.preview = self._dataset.preview

    @property
    def wrapped(self) -> AbstractDataset:
        return self._dataset

    def load(self) -> Any:
        return self._dataset.load()

    def save(self, data: Any) -> None:
        if data is UNCHANGED:
            if not self._dataset.exists():
                log.warning(
                    "Nothing new to save, but %s holds no saved version (deleted?): delete "
                    "outputs_saved.json in the run's checkpoint folder and run again to save it from the "
                    "last checkpoint",
                    self._filepath or self._dataset,
                )
                return
            log.info("Nothing new to save: the latest %s stays as it is", type(self._dataset).__name__)
            return
        try:
            self._dataset.save(data)
        except Exception as error:
            cause = _os_error_in(error)
            if cause is None:
                raise
            path = self._save_path()
            if path is not None:
                filesystem = fsspec.filesystem(self._protocol or "file", **self._storage_options)
                remove_failed_write(filesystem, path, versioned=True)
            raise OutputWriteError(path or repr(self._dataset), cause, then=_AFTER_A_FAILED_SAVE) from error

    def _save_path(self) -> str | None:
        """The file this session's version goes to (None when not versioned: the path holds older data)."""
        inner = self._dataset
        if self._versioned and self._filepath and isinstance(inner, AbstractVersionedDataset):
            # Kedro's layout of a versioned file: <filepath>/<version>/<its name>
            filepath = PurePosixPath(self._filepath)
            return str(filepath / inner.resolve_save_version() / filepath.name)
        return None

    def _exists(self) -> bool:
        return self._dataset.exists()

    def _release(self) -> None:
        self._dataset.release()

    def _describe(self) -> dict[str, Any]:
        return {"dataset": self._described, "skips": "UNCHANGED"}


def _os_error_in(error: BaseException) -> OSError | None:
    """The first OSError in `error`'s chain (kedro-datasets wrap theirs in a DatasetError)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
