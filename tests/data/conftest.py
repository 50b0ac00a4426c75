"""Fixtures that write small COCO splits (JSON + real JPEGs) into tmp_path."""

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from frcnn_pipeline.data.coco import SplitSource, ValidationPolicy, read_coco_split

WIDTH, HEIGHT = 40, 30


def _annotation(id_, *, image_id, category_id, bbox, **area):
    x, y, w, h = bbox
    polygon = [x, y, x + w, y, x + w, y + h]
    return {"id": id_, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": 0,
            "segmentation": [polygon], **area}  # fmt: skip


# Three categories with COCO-like, non-contiguous ids; four images, each with a usable annotation.
GOOD_COCO = {
    "info": {"description": "test"},
    "images": [{"id": i, "file_name": f"img{i}.jpg", "width": WIDTH, "height": HEIGHT} for i in (1, 2, 3, 4)],
    "annotations": [
        _annotation(10, image_id=1, category_id=1, bbox=[1.5, 2.0, 10.0, 8.0], area=70.0),
        _annotation(11, image_id=1, category_id=3, bbox=[20.0, 5.0, 15.0, 20.0], area=250.0),
        _annotation(12, image_id=2, category_id=7, bbox=[0.0, 0.0, 40.0, 30.0], area=1200.0),
        _annotation(13, image_id=3, category_id=3, bbox=[5.25, 6.75, 7.5, 3.125]),  # no `area`
        _annotation(14, image_id=4, category_id=1, bbox=[10.0, 10.0, 5.0, 5.0], area=20.0),
    ],
    "categories": [
        {"id": 1, "name": "cat", "supercategory": "animal"},
        {"id": 3, "name": "dog", "supercategory": "animal"},
        {"id": 7, "name": "bird", "supercategory": "animal"},
    ],
}


@pytest.fixture
def coco_doc() -> dict:
    """A fresh, mutable copy of the good split."""
    return copy.deepcopy(GOOD_COCO)


@pytest.fixture
def write_split(tmp_path: Path):
    """write_split(doc, name="train") -> SplitSource: the JSON, and a JPEG per image of the good split."""

    def write(doc: dict | str | bytes, name: str = "train") -> SplitSource:
        root = tmp_path / name
        image_dir = root / "images"
        image_dir.mkdir(parents=True, exist_ok=True)
        for image in GOOD_COCO["images"]:
            Image.new("RGB", (image["width"], image["height"]), (90, 120, 150)).save(
                image_dir / image["file_name"]
            )
        annotation_file = root / "annotations.json"
        if isinstance(doc, bytes):
            annotation_file.write_bytes(doc)
        else:
            annotation_file.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return SplitSource(name, annotation_file, image_dir)

    return write


@pytest.fixture
def read(write_split):
    """read(doc, **policy) -> CocoSplit of that document."""

    def read_doc(doc, name: str = "train", categories: pd.DataFrame | None = None, **policy):
        return read_coco_split(write_split(doc, name), ValidationPolicy(**policy), categories)

    return read_doc


@pytest.fixture
def baseline(read):
    """The good split as read, to show that good records survive a bad one untouched."""
    return read(GOOD_COCO)
