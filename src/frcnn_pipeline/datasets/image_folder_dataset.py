"""`ImageFolderDataset`: a folder of PNG images saved as one (versioned) artefact.

kedro-datasets' `PartitionedDataset` writes one file per key but cannot be versioned (and with
`overwrite: true` it deletes the previous run's images). This dataset writes the folder under Kedro's
`<filepath>/<version>/<name>/`, so each run's drawn images sit beside the earlier ones, with the same version
as the results JSON saved in the same run.
"""

from __future__ import annotations

import io
from collections.abc import Callable
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
from PIL import Image

ImageOrLoader = Image.Image | Callable[[], Image.Image]


class ImageFolderDataset(
    AbstractVersionedDataset[dict[str, ImageOrLoader], dict[str, Callable[[], Image.Image]]]
):
    """Saves ``{name: PIL image, or a function returning one}`` as ``<name>.png`` files in one folder;
    loads ``{name: function returning the image}`` (lazily, like `PartitionedDataset`)."""

    SUFFIX = ".png"

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
            exists_function=self._fs.isdir,
            glob_function=self._fs.glob,
        )

    def load(self) -> dict[str, Callable[[], Image.Image]]:
        folder = get_filepath_str(self._get_load_path(), self._protocol)
        paths = sorted(p for p in self._fs.find(folder) if p.endswith(self.SUFFIX))

        def opener(path: str) -> Callable[[], Image.Image]:
            def open_image() -> Image.Image:
                with self._fs.open(path, "rb") as stream:
                    return Image.open(io.BytesIO(stream.read()))

            return open_image

        return {
            PurePosixPath(p).relative_to(folder).as_posix().removesuffix(self.SUFFIX): opener(p)
            for p in paths
        }

    def save(self, data: dict[str, ImageOrLoader]) -> None:
        folder = get_filepath_str(self._get_save_path(), self._protocol)
        partial = f"{folder}.partial"
        if self._fs.exists(partial):
            self._fs.rm(partial, recursive=True)
        # Written aside, then renamed: a crash leaves a `.partial` folder, never a half-filled run folder.
        self._fs.makedirs(partial, exist_ok=True)
        for name, image in data.items():
            if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
                raise DatasetError(f"image name {name!r} would be written outside {folder}")
            picture = image() if callable(image) else image
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            self._fs.pipe_file(f"{partial}/{name}{self.SUFFIX}", buffer.getvalue())
        self._fs.mv(partial, folder, recursive=True)
        self._fs.invalidate_cache(get_filepath_str(self._filepath, self._protocol))

    def _exists(self) -> bool:
        try:
            folder = get_filepath_str(self._get_load_path(), self._protocol)
        except DatasetError:
            return False
        return self._fs.isdir(folder)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "protocol": self._protocol, "version": self._version}
