"""`DetectorDataset`: a detector's weights, model config and class mapping in one versioned safetensors file.

kedro-datasets' `SafetensorsDataset` writes tensors only (`save_file(data, path)`, no metadata) and loads
them back as a bare dict, so the config would need a sibling dataset, loaded and pinned separately and not
written atomically with the weights. Here the config travels in the file's own header, the file is written to
a temporary name and renamed, and a load says which file, version and sha256 it read.
"""

from __future__ import annotations

import hashlib

from kedro.io.core import DatasetError

from frcnn_pipeline.datasets.versioned_fsspec import VersionedFsspecDataset
from frcnn_pipeline.modeling.saved import SavedDetector


class DetectorDataset(VersionedFsspecDataset[SavedDetector, SavedDetector]):
    """Loads and saves a `SavedDetector` as safetensors (weights; config, classes and provenance as metadata).

    A plain safetensors state dict (written by an earlier version of the project) loads with kind
    ``unknown`` and no config. Example::

        trained_model:
          type: frcnn_pipeline.datasets.DetectorDataset
          filepath: data/06_models/trained_model.safetensors
          versioned: true
    """

    def load(self) -> SavedDetector:
        path = self._load_path_str()
        data = self._fs.cat_file(path)
        origin = {
            "path": path,
            "version": self.resolve_load_version(),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        try:
            return SavedDetector.from_bytes(data, origin)
        except Exception as error:
            raise DatasetError(
                f"{path} is not a readable safetensors model ({error}): the file is truncated or corrupt. "
                "Delete it and re-run the pipeline that wrote it."
            ) from error

    def save(self, data: SavedDetector) -> None:
        if not isinstance(data, SavedDetector):
            raise DatasetError(
                f"{self._filepath} expects a SavedDetector (weights with their config), got {type(data)}"
            )
        self._write_file_atomically(data.to_bytes())
