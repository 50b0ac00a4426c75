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
"""

from __future__ import annotations

import logging
from typing import Any

from kedro.io.core import VERSIONED_FLAG_KEY, AbstractDataset, Version

log = logging.getLogger(__name__)


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
            log.info("Nothing new to save: the latest %s stays as it is", type(self._dataset).__name__)
            return
        self._dataset.save(data)

    def _exists(self) -> bool:
        return self._dataset.exists()

    def _release(self) -> None:
        self._dataset.release()

    def _describe(self) -> dict[str, Any]:
        return {"dataset": self._dataset._describe(), "skips": "UNCHANGED"}
