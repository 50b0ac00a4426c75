"""ImageFolderDataset: one folder of PNGs per version; earlier runs' folders stay."""

import numpy as np
import pytest
from kedro.io import DatasetError, Version
from PIL import Image

from frcnn_pipeline.datasets import ImageFolderDataset


def picture(value: int) -> Image.Image:
    return Image.fromarray(np.full((4, 6, 3), value, dtype=np.uint8))


def test_each_version_keeps_its_images_and_loads_lazily(tmp_path):
    path = tmp_path / "prediction_images"
    ImageFolderDataset(filepath=str(path), version=Version(None, "v1")).save(
        {"a": picture(10), "b": lambda: picture(20)}
    )
    ImageFolderDataset(filepath=str(path), version=Version(None, "v2")).save({"a": picture(30)})

    latest = ImageFolderDataset(filepath=str(path), version=Version(None, None)).load()
    assert sorted(latest) == ["a"] and np.asarray(latest["a"]())[0, 0].tolist() == [30, 30, 30]
    first = ImageFolderDataset(filepath=str(path), version=Version("v1", None)).load()
    assert sorted(first) == ["a", "b"] and first["b"]().size == (6, 4)
    assert (path / "v1" / "prediction_images" / "b.png").is_file()
    assert not list(path.rglob("*.partial"))


def test_names_cannot_leave_the_folder(tmp_path):
    dataset = ImageFolderDataset(filepath=str(tmp_path / "images"), version=Version(None, "v1"))
    with pytest.raises(DatasetError, match="outside"):
        dataset.save({"../escape": picture(1)})
