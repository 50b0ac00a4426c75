"""`DetectorDataset`: a detector's weights, model config and class mapping in one versioned safetensors file.

kedro-datasets' `SafetensorsDataset` writes tensors only (`save_file(data, path)`, no metadata) and loads
them back as a bare dict, so the config would need a sibling dataset, loaded and pinned separately and not
written atomically with the weights. Here the config travels in the file's own header, the file is written to
a temporary name and renamed, and a load says which file, version and sha256 it read.
"""

from __future__ import annotations

import hashlib
from copy import deepcopy
from pathlib import PurePosixPath
from typing import Any

import fsspec
from kedro.io.core import (
    AbstractVersionedDataset,
    DatasetError,
    Version,
    get_filepath_str,
    get_protocol_and_path,
)

from frcnn_pipeline.modeling.saved import SavedDetector


class DetectorDataset(AbstractVersionedDataset[SavedDetector, SavedDetector]):
    """Loads and saves a `SavedDetector` as safetensors (weights; config, classes and provenance as metadata).

    A plain safetensors state dict (written by an earlier version of the project) loads with kind
    ``unknown`` and no config. Example::

        trained_model:
          type: frcnn_pipeline.datasets.DetectorDataset
          filepath: data/06_models/trained_model.safetensors
          versioned: true
    """

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
            exists_function=self._fs.exists,
            glob_function=self._fs.glob,
        )

    def load(self) -> SavedDetector:
        path = get_filepath_str(self._get_load_path(), self._protocol)
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
        path = get_filepath_str(self._get_save_path(), self._protocol)
        partial = f"{path}.partial"
        # A crash mid-write leaves a `.partial` file, never a truncated model under the real name.
        self._fs.pipe_file(partial, data.to_bytes())
        self._fs.mv(partial, path)
        self._fs.invalidate_cache(get_filepath_str(self._filepath, self._protocol))

    def _exists(self) -> bool:
        try:
            path = get_filepath_str(self._get_load_path(), self._protocol)
        except DatasetError:
            return False
        return self._fs.exists(path)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "protocol": self._protocol, "version": self._version}
