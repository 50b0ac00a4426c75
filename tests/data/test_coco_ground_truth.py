"""What an evaluation split is scored against: the annotations as published (the COCO protocol) by default,
every deviation recorded."""

import pytest
from pycocotools_reference import pycocotools_stats

from frcnn_pipeline.data.coco import CocoFormatError, evaluation_ground_truth, read_coco_split
from frcnn_pipeline.data.coco.findings import ValidationPolicy
from frcnn_pipeline.evaluation.coco_eval import evaluate_boxes

PAST_BORDER = [30.0, 20.0, 20.0, 15.0]  # the images are 40x30


@pytest.fixture
def damaged_val(write_split, coco_doc):
    """A val split with a box past the border, and image 3 (one annotation) unreadable."""
    coco_doc["annotations"].append(
        {"id": 20, "image_id": 4, "category_id": 3, "bbox": PAST_BORDER, "area": 300.0, "iscrowd": 0}
    )
    source = write_split(coco_doc, "val")
    (source.image_dir / "img3.jpg").write_bytes(b"not a jpeg")
    return source


def _read(source):
    return read_coco_split(source, ValidationPolicy())


def test_an_unreadable_evaluation_image_stops_with_the_file_the_id_and_the_fix(damaged_val):
    with pytest.raises(CocoFormatError) as raised:
        evaluation_ground_truth(_read(damaged_val))
    message = str(raised.value)
    assert str(damaged_val.annotation_file) in message
    assert "1 declared val image(s) cannot be evaluated" in message and "image 3 (img3.jpg)" in message
    assert "ingest.evaluation.unusable_images: missed" in message
    assert "ingest.evaluation.ground_truth: cleaned" in message


def test_scored_as_missed_equals_pycocotools_on_the_original_json(damaged_val, coco_doc):
    """Every usable image's boxes found as the image shows them (the one past the border clipped), none on
    the unreadable image: the numbers are pycocotools' on the file as published."""
    split = _read(damaged_val)
    ground_truth = evaluation_ground_truth(split, unusable_images="missed")

    assert [image["id"] for image in ground_truth["images"]] == [1, 2, 3, 4]
    assert ground_truth["annotations"][-1]["bbox"] == PAST_BORDER
    protocol = ground_truth["info"]["protocol"]
    assert protocol["ground_truth"] == "published"
    assert (protocol["images_declared"], protocol["images_in_ground_truth"], protocol["images_inferred"]) == (
        4,
        4,
        3,
    )
    assert protocol["images_scored_as_missed"] == [3]
    assert protocol["deviations"][0].startswith("1 image(s) could not be read and are scored with no")

    detections = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "score": 0.9,
            "bbox": [
                a["bbox"][0],
                a["bbox"][1],
                min(a["bbox"][2], 40 - a["bbox"][0]),
                min(a["bbox"][3], 30 - a["bbox"][1]),
            ],
        }
        for a in ground_truth["annotations"]
        if a["image_id"] in set(split.images["image_id"])
    ]
    ours = evaluate_boxes(ground_truth, detections).metrics()
    assert list(ours.values()) == pycocotools_stats(damaged_val.annotation_file, detections)
    assert ours["AR100"] < 1.0, "the unreadable image's box counts as missed"


def test_the_cleaned_ground_truth_records_what_it_removed_and_clipped(damaged_val):
    ground_truth = evaluation_ground_truth(_read(damaged_val), ground_truth="cleaned")
    protocol = ground_truth["info"]["protocol"]
    assert [image["id"] for image in ground_truth["images"]] == [1, 2, 4]
    assert (protocol["annotations_declared"], protocol["annotations_in_ground_truth"]) == (6, 5)
    assert protocol["boxes_clipped"] == 1 and protocol["images_scored_as_missed"] == []
    assert protocol["deviations"] == [
        "scored against the cleaned split, not the annotations as published: 3 of 4 images, 5 of 6 "
        "annotations, 1 boxes clipped to the image"
    ]


def test_a_clean_split_is_scored_as_published_without_deviation(write_split, coco_doc):
    for record in coco_doc["annotations"]:
        record.setdefault("area", record["bbox"][2] * record["bbox"][3])
    ground_truth = evaluation_ground_truth(_read(write_split(coco_doc, "val")))
    assert ground_truth["info"]["protocol"]["deviations"] == []
    assert [a["id"] for a in ground_truth["annotations"]] == [10, 11, 12, 13, 14]


def test_a_declared_category_that_is_no_class_and_has_no_box_is_left_out(write_split, coco_doc):
    """Roboflow's dataset-name category 0: not a class (dropped by ingest), no box, so no AP row."""
    coco_doc["categories"].insert(0, {"id": 0, "name": "my-dataset", "supercategory": "none"})
    split = _read(write_split(coco_doc, "val"))
    assert 0 not in split.categories["category_id"].tolist()
    ground_truth = evaluation_ground_truth(split)
    assert [c["id"] for c in ground_truth["categories"]] == [1, 3, 7]
