"""`OnnxModelDataset`: an ONNX graph (`onnx.ModelProto`) as one versioned `.onnx` file, written atomically.

kedro-datasets has no ONNX dataset; the graph is one protobuf, written to a temporary name and renamed, so a
crash never leaves a truncated graph under the real name.
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import PurePosixPath
from typing import Any

import fsspec
import onnx
from google.protobuf.message import DecodeError
from kedro.io.core import (
    AbstractVersionedDataset,
    DatasetError,
    Version,
    get_filepath_str,
    get_protocol_and_path,
)


class OnnxModelDataset(AbstractVersionedDataset[onnx.ModelProto, onnx.ModelProto]):
    """Loads and saves an `onnx.ModelProto` (graphs up to protobuf's 2 GiB: weights inside the file).

    Example::

        export.onnx_model:
          type: frcnn_pipeline.datasets.OnnxModelDataset
          filepath: data/06_models/export/onnx_model.onnx
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

    def load(self) -> onnx.ModelProto:
        path = get_filepath_str(self._get_load_path(), self._protocol)
        try:
            return onnx.load_from_string(self._fs.cat_file(path))
        except DecodeError as error:
            raise DatasetError(
                f"{path} is not a readable ONNX graph ({error}): the file is truncated or corrupt. Delete it "
                "and re-run `kedro run --pipeline export`."
            ) from error

    def save(self, data: onnx.ModelProto) -> None:
        if not isinstance(data, onnx.ModelProto):
            raise DatasetError(f"{self._filepath} expects an onnx.ModelProto, got {type(data)}")
        path = get_filepath_str(self._get_save_path(), self._protocol)
        partial = f"{path}.partial"
        self._fs.pipe_file(partial, data.SerializeToString())
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
