"""Content fingerprints: the same content gives the same sha256, whatever the row order or the image paths."""

import pandas as pd

from frcnn_pipeline.data.fingerprint import ground_truth_fingerprint, tables_fingerprint

IMAGES = pd.DataFrame(
    {"image_id": [1, 2], "file_name": ["a.jpg", "b.jpg"], "path": ["/d/a.jpg", "/d/b.jpg"],
     "width": [64, 32], "height": [48, 32]}
)  # fmt: skip
ANNOTATIONS = pd.DataFrame(
    {"annotation_id": [10, 11], "image_id": [1, 2], "category_id": [3, 3], "label": [0, 0],
     "x1": [1.0, 2.0], "y1": [1.0, 2.0], "x2": [5.0, 6.0], "y2": [5.0, 6.0], "area": [16.0, 16.0],
     "iscrowd": [False, True]}
)  # fmt: skip


def test_tables_fingerprint_ignores_order_and_paths_but_not_content():
    reference = tables_fingerprint(IMAGES, ANNOTATIONS)
    assert len(reference) == 64
    moved = IMAGES.assign(path=["/elsewhere/a.jpg", "/elsewhere/b.jpg"]).iloc[::-1]
    assert tables_fingerprint(moved, ANNOTATIONS.iloc[::-1]) == reference
    assert tables_fingerprint(IMAGES, ANNOTATIONS.assign(x2=[5.0, 6.5])) != reference
    assert tables_fingerprint(IMAGES, ANNOTATIONS.assign(iscrowd=[False, False])) != reference
    assert tables_fingerprint(IMAGES.assign(file_name=["a.jpg", "c.jpg"]), ANNOTATIONS) != reference
    assert tables_fingerprint(IMAGES, ANNOTATIONS.iloc[:1]) != reference


def test_ground_truth_fingerprint_names_content_and_counts():
    truth = {
        "info": {"source": "/data/a/instances_val.json"},
        "images": [{"id": 1, "width": 4, "height": 4, "file_name": "a.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0}
        ],
        "categories": [{"id": 3, "name": "cat", "supercategory": "animal"}],
    }
    print_ = ground_truth_fingerprint(truth)
    assert print_["images"] == 1 and print_["annotations"] == 1 and len(print_["sha256"]) == 64
    assert ground_truth_fingerprint({**truth, "info": {"source": "/moved/instances_val.json"}}) == print_
    changed = {**truth, "annotations": [{**truth["annotations"][0], "bbox": [0, 0, 2, 3]}]}
    assert ground_truth_fingerprint(changed)["sha256"] != print_["sha256"]
