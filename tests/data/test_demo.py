"""The synthetic demo: COCO layout, clean under validation, deterministic, regenerated only on change."""

import json

import numpy as np
import pytest

from frcnn_pipeline.data import demo
from frcnn_pipeline.data.coco import SplitSource, ValidationPolicy, read_coco_split

SMALL = demo.DemoConfig(seed=7, image_size=64, num_train_images=24, num_val_images=6)


@pytest.fixture
def demo_root(tmp_path):
    root = tmp_path / "demo"
    demo.generate_demo_dataset(root, SMALL)
    return root


def load(root, split):
    return json.loads(demo.annotation_file(root, split).read_text())


def test_layout_and_fields(demo_root):
    for split, count in (("train", 24), ("val", 6)):
        coco = load(demo_root, split)
        assert len(coco["images"]) == count
        assert len(list(demo.image_dir(demo_root, split).glob("*.jpg"))) == count
        assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 5]
        per_image = np.bincount([a["image_id"] for a in coco["annotations"]])
        assert per_image[per_image > 0].max() <= SMALL.max_objects
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            assert a["iscrowd"] == 0 and a["area"] > 0
            assert x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
            assert SMALL.min_object_fraction * 64 - 0.02 <= max(w, h) <= SMALL.max_object_fraction * 64 + 0.02
            polygon = a["segmentation"][0]
            assert len(polygon) >= 6 and min(polygon[0::2]) == x and min(polygon[1::2]) == y


def test_ids_unique_across_splits(demo_root):
    train, val = load(demo_root, "train"), load(demo_root, "val")
    image_ids = [i["id"] for i in train["images"] + val["images"]]
    annotation_ids = [a["id"] for a in train["annotations"] + val["annotations"]]
    assert len(set(image_ids)) == len(image_ids) and min(image_ids) >= 1
    assert len(set(annotation_ids)) == len(annotation_ids) and min(annotation_ids) >= 1


def test_passes_validation_with_full_decoding(demo_root):
    categories = None
    for split in demo.SPLITS:
        source = SplitSource(split, demo.annotation_file(demo_root, split), demo.image_dir(demo_root, split))
        result = read_coco_split(source, ValidationPolicy(image_checks="decode"), categories)
        categories = result.categories
        assert result.findings["check"].tolist() == ["noncontiguous_category_ids"]
        assert len(result.images) == (24 if split == "train" else 6)
    assert categories["name"].tolist() == ["circle", "square", "triangle", "star"]


def test_deterministic(demo_root, tmp_path):
    again = tmp_path / "again"
    demo.generate_demo_dataset(again, SMALL)
    assert load(again, "train") == load(demo_root, "train")
    for name in ("000000000001.jpg", "000000000025.jpg"):
        split = "train" if name.endswith("1.jpg") else "val"
        assert (demo.image_dir(again, split) / name).read_bytes() == (
            demo.image_dir(demo_root, split) / name
        ).read_bytes()


def test_regenerates_only_when_missing_or_changed(demo_root):
    assert demo.ensure_demo_dataset(demo_root, SMALL) is False
    changed = demo.DemoConfig(seed=8, image_size=64, num_train_images=5, num_val_images=2)
    assert demo.ensure_demo_dataset(demo_root, changed) is True
    assert len(load(demo_root, "train")["images"]) == 5
    demo.annotation_file(demo_root, "val").unlink()
    assert demo.ensure_demo_dataset(demo_root, changed) is True
    assert demo.annotation_file(demo_root, "val").is_file()


def test_failed_generation_keeps_the_previous_dataset(demo_root, monkeypatch):
    before = load(demo_root, "train")

    def fail(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo, "_draw_image", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        demo.ensure_demo_dataset(demo_root, demo.DemoConfig(seed=9, image_size=64, num_train_images=3))
    assert load(demo_root, "train") == before
    assert sorted(p.name for p in demo_root.parent.iterdir()) == ["demo"]


def test_rejects_inconsistent_config():
    with pytest.raises(ValueError, match="min_objects <= max_objects"):
        demo.DemoConfig(min_objects=3, max_objects=2)
