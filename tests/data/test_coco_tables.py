"""The tables, the categories mapping and the clean ground truth of a good split."""

import numpy as np
import pandas as pd
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from pycocotools_reference import pycocotools_stats

from frcnn_pipeline.data.coco import (
    DEFAULT_SEVERITY,
    REPORT_COLUMNS,
    ValidationPolicy,
    build_ground_truth,
    json_file,
    published_ground_truth,
    resolve_severity,
    summarise_findings,
)
from frcnn_pipeline.evaluation.coco_eval import evaluate_boxes


def test_images_table_schema(baseline, write_split, coco_doc):
    images = baseline.images
    assert list(images.columns) == ["image_id", "file_name", "path", "width", "height"]
    assert images["image_id"].dtype == np.int64 and images["width"].dtype == np.int64
    assert images["image_id"].tolist() == [1, 2, 3, 4]
    source = write_split(coco_doc)
    assert images["path"].tolist() == [str(source.image_dir.resolve() / f"img{i}.jpg") for i in (1, 2, 3, 4)]


def test_annotations_table_is_absolute_xyxy_with_contiguous_labels(baseline):
    annotations = baseline.annotations.set_index("annotation_id")
    assert list(baseline.annotations.columns) == [
        "annotation_id", "image_id", "category_id", "label", "x1", "y1", "x2", "y2", "area", "iscrowd",
    ]  # fmt: skip
    assert annotations.loc[10, ["x1", "y1", "x2", "y2"]].tolist() == [1.5, 2.0, 11.5, 10.0]
    # Category ids 1, 3, 7 -> labels 0, 1, 2.
    assert annotations["label"].to_dict() == {10: 0, 11: 1, 12: 2, 13: 1, 14: 0}
    # `area` from the JSON, or the box area when absent (annotation 13).
    assert annotations.loc[10, "area"] == 70.0
    assert annotations.loc[13, "area"] == 7.5 * 3.125
    assert baseline.annotations["iscrowd"].dtype == bool
    assert baseline.annotations.dtypes[["x1", "y1", "x2", "y2", "area"]].eq(np.float64).all()


def test_categories_table_maps_original_ids(baseline):
    expected = pd.DataFrame(
        {
            "label": np.array([0, 1, 2], dtype=np.int64),
            "category_id": np.array([1, 3, 7], dtype=np.int64),
            "name": pd.Series(["cat", "dog", "bird"], dtype="str"),
            "supercategory": pd.Series(["animal"] * 3, dtype="str"),
        }
    )
    pd.testing.assert_frame_equal(baseline.categories, expected)


def test_categories_sorted_by_id_whatever_the_declared_order(read, coco_doc):
    coco_doc["categories"].reverse()
    assert read(coco_doc).categories["category_id"].tolist() == [1, 3, 7]


def test_good_split_reports_only_noncontiguous_ids(baseline):
    assert list(baseline.findings.columns) == REPORT_COLUMNS
    row = baseline.findings.iloc[0]
    assert len(baseline.findings) == 1
    assert (row["check"], row["severity"]) == ("noncontiguous_category_ids", "reported")
    assert (
        row["message"]
        == "category ids [1, 3, 7] have gaps: labels 0..2 in id order (see the categories table)"
    )


def test_ground_truth_is_clean_coco_and_scores_perfectly(baseline):
    ground_truth = build_ground_truth(baseline)
    assert [a["bbox"] for a in ground_truth["annotations"]][:2] == [
        [1.5, 2.0, 10.0, 8.0],
        [20.0, 5.0, 15.0, 20.0],
    ]
    assert {a["id"] for a in ground_truth["annotations"]} == {10, 11, 12, 13, 14}
    assert [c["id"] for c in ground_truth["categories"]] == [1, 3, 7]
    # Detections equal to the ground truth score AP 1 with pycocotools.
    coco = COCO()
    coco.dataset = ground_truth
    coco.createIndex()
    detections = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in ground_truth["annotations"]
    ]
    evaluator = COCOeval(coco, coco.loadRes(detections), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_summary_counts_per_check(baseline):
    summary = summarise_findings(baseline.findings)
    assert summary["total_findings"] == 1
    assert summary["splits"]["train"]["by_check"] == {
        "noncontiguous_category_ids": {"severity": "reported", "count": 1}
    }


def test_severity_policy_only_escalates():
    assert resolve_severity({"clipped_bbox": "fatal"})["clipped_bbox"] == "fatal"
    assert resolve_severity()["clipped_bbox"] == DEFAULT_SEVERITY["clipped_bbox"] == "fixed"
    with pytest.raises(ValueError, match="'schema' can only be 'fatal'"):
        resolve_severity({"schema": "reported"})
    with pytest.raises(ValueError, match="Unknown validation check 'no_such_check'"):
        ValidationPolicy(severity={"no_such_check": "fatal"})
    with pytest.raises(ValueError, match="image_checks must be one of"):
        ValidationPolicy(image_checks="full")


def test_chunked_decoding_gives_the_same_tables(read, baseline, coco_doc, monkeypatch):
    monkeypatch.setattr(json_file, "_ANNOTATION_CHUNK", 2)
    coco_doc["annotations"].insert(3, {"id": 20, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]})
    split = read(coco_doc)
    pd.testing.assert_frame_equal(split.annotations, baseline.annotations)
    assert split.findings["check"].tolist() == ["invalid_bbox", "noncontiguous_category_ids"]


def test_published_ground_truth_scores_as_pycocotools_on_the_original_file(read, write_split, coco_doc):
    """A box past the border and one without area: the cleaned ground truth clips (and so scores a clipped
    detection higher); the published one scores exactly as pycocotools on the file itself."""
    past_border = [30.0, 20.0, 20.0, 15.0]  # the image is 40x30
    coco_doc["annotations"].append(
        {"id": 20, "image_id": 4, "category_id": 3, "bbox": past_border, "area": 300.0, "iscrowd": 0}
    )
    del coco_doc["annotations"][0]["area"]
    source = write_split(coco_doc, "val")
    published, filled = published_ground_truth(source.annotation_file)
    assert filled == 2 and published["annotations"][-1]["bbox"] == past_border  # 13 has no area either

    def clipped(x, y, w, h):
        return [x, y, min(w, 40 - x), min(h, 30 - y)]

    detections = [  # every box found as the image shows it: clipped to the border
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "score": 0.9,
            "bbox": clipped(*a["bbox"]),
        }
        for a in coco_doc["annotations"]
    ]

    ours = evaluate_boxes(published, detections).metrics()
    assert list(ours.values()) == pycocotools_stats(source.annotation_file, detections)
    cleaned = evaluate_boxes(build_ground_truth(read(coco_doc, name="val")), detections).metrics()
    assert cleaned["AP"] > ours["AP"], "clipping the ground truth flatters the clipped detection"
