"""`ImageFolderDataset`: a folder of PNG images saved as one (versioned) artefact.

kedro-datasets' `PartitionedDataset` writes one file per key but cannot be versioned (and with
`overwrite: true` it deletes the previous run's images). This dataset writes the folder under Kedro's
`<filepath>/<version>/<name>/`, so each run's drawn images sit beside the earlier ones, with the same version
as the results JSON saved in the same run.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import PurePosixPath

from kedro.io.core import DatasetError
from PIL import Image

from frcnn_pipeline.datasets.versioned_fsspec import VersionedFsspecDataset

ImageOrLoader = Image.Image | Callable[[], Image.Image]


class ImageFolderDataset(
    VersionedFsspecDataset[dict[str, ImageOrLoader], dict[str, Callable[[], Image.Image]]]
):
    """Saves ``{name: PIL image, or a function returning one}`` as ``<name>.png`` files in one folder;
    loads ``{name: function returning the image}`` (lazily, like `PartitionedDataset`)."""

    SUFFIX = ".png"
    IS_FOLDER = True

    def load(self) -> dict[str, Callable[[], Image.Image]]:
        folder = self._load_path_str()
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
        folder = self._save_path_str()
        partial = f"{folder}.partial"
        if self._fs.exists(partial):
            self._fs.rm(partial, recursive=True)
        # Written aside, then renamed: a crash leaves a `.partial` folder, never a half-filled run folder.
        with self._writing(partial, folder):
            self._fs.makedirs(partial, exist_ok=True)
        for name, image in data.items():
            if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
                raise DatasetError(f"image name {name!r} would be written outside {folder}")
            picture = image() if callable(image) else image
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            with self._writing(partial, folder):
                self._fs.pipe_file(f"{partial}/{name}{self.SUFFIX}", buffer.getvalue())
        with self._writing(partial, folder):
            self._fs.mv(partial, folder, recursive=True)
        self._saved()
