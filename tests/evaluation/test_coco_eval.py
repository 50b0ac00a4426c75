"""Our COCO box evaluation against pycocotools' COCOeval, compared with == on generated data."""

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from frcnn_pipeline.evaluation.coco_eval import STAT_NAMES, evaluate_boxes
from frcnn_pipeline.evaluation.synthetic import make_synthetic_coco


def pycocotools_reference(ground_truth: dict, detections: list[dict]) -> COCOeval:
    """pycocotools as a user would run it; an empty results set is indexed directly (loadRes([]) raises)."""
    ground_truth, detections = copy.deepcopy(ground_truth), copy.deepcopy(detections)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = ground_truth
        coco_gt.createIndex()
        if detections:
            coco_dt = coco_gt.loadRes(detections)
        else:
            coco_dt = COCO()
            coco_dt.dataset = {**ground_truth, "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def assert_identical(ours, reference: COCOeval) -> None:
    assert ours.stats.tolist() == reference.stats.tolist()
    assert np.array_equal(ours.precision, reference.eval["precision"])
    assert np.array_equal(ours.recall, reference.eval["recall"])
    assert np.array_equal(ours.scores, reference.eval["scores"])


def with_ties(detections: list[dict], decimals: int) -> list[dict]:
    """Coarse scores and boxes: many equal scores and IoUs, where sort stability and tie rules matter."""
    return [
        {**d, "score": round(d["score"], decimals), "bbox": [round(v) for v in d["bbox"]]} for d in detections
    ]


@pytest.mark.parametrize(
    ("seed", "crowd_fraction", "objects_per_image", "detections_per_image"),
    [(0, 0.03, 7.0, 60), (1, 0.3, 4.0, 30), (2, 0.0, 12.0, 120), (3, 0.1, 0.7, 20)],
)
def test_identical_to_pycocotools_on_generated_data(
    seed, crowd_fraction, objects_per_image, detections_per_image
):
    ground_truth, detections = make_synthetic_coco(
        60,
        detections_per_image,
        crowd_fraction=crowd_fraction,
        objects_per_image=objects_per_image,
        seed=seed,
    )
    # Over 100 per image and category for some groups: the maxDets cut must match too.
    ours = evaluate_boxes(ground_truth, detections)
    assert_identical(ours, pycocotools_reference(ground_truth, detections))
    assert (ours.stats > 0).all()


@pytest.mark.parametrize("decimals", [1, 2])
def test_identical_with_tied_scores_and_boxes(decimals):
    ground_truth, detections = make_synthetic_coco(40, 50, crowd_fraction=0.1, seed=7)
    for annotation in ground_truth["annotations"]:
        annotation["bbox"] = [round(v) for v in annotation["bbox"]]
    detections = with_ties(detections, decimals)
    # Exact duplicates of a detection, listed later: order of equal scores decides which one matches.
    detections += [dict(d) for d in detections[::7]]
    assert_identical(
        evaluate_boxes(ground_truth, detections), pycocotools_reference(ground_truth, detections)
    )


def test_images_without_ground_truth_count_false_positives():
    ground_truth, detections = make_synthetic_coco(30, 20, objects_per_image=0.5, seed=11)
    annotated = {a["image_id"] for a in ground_truth["annotations"]}
    assert len(annotated) < len(ground_truth["images"])  # the case under test exists
    ours = evaluate_boxes(ground_truth, detections)
    assert_identical(ours, pycocotools_reference(ground_truth, detections))


def test_no_detections_gives_what_pycocotools_gives_for_an_empty_results_set():
    ground_truth, _ = make_synthetic_coco(20, 10, seed=5)
    ours = evaluate_boxes(ground_truth, [])
    reference = pycocotools_reference(ground_truth, [])
    assert_identical(ours, reference)
    assert set(ours.stats.tolist()) <= {0.0, -1.0}
    assert ours.metrics()["AP"] == 0.0
    # The pycocotools backend has the same guard (plain loadRes([]) raises).
    assert evaluate_boxes(ground_truth, [], backend="pycocotools").stats.tolist() == reference.stats.tolist()


def test_no_ground_truth_boxes_gives_minus_one_everywhere():
    ground_truth, detections = make_synthetic_coco(10, 10, seed=6)
    ground_truth["annotations"] = []
    ours = evaluate_boxes(ground_truth, detections)
    assert_identical(ours, pycocotools_reference(ground_truth, detections))
    assert ours.stats.tolist() == [-1.0] * 12
    assert ours.per_category_ap()["AP"].isna().all()


def test_detections_of_unknown_categories_are_ignored_as_in_pycocotools(caplog):
    ground_truth, detections = make_synthetic_coco(20, 20, seed=8)
    unknown = [{**d, "category_id": 9999} for d in detections[:30]]
    with caplog.at_level("WARNING"):
        ours = evaluate_boxes(ground_truth, detections + unknown)
    assert_identical(ours, pycocotools_reference(ground_truth, detections + unknown))
    assert ours.stats.tolist() == evaluate_boxes(ground_truth, detections).stats.tolist()
    assert "9999" in caplog.text


def test_detections_on_unknown_images_are_an_error_naming_them():
    ground_truth, detections = make_synthetic_coco(5, 5, seed=9)
    detections.append({**detections[0], "image_id": 424242})
    with pytest.raises(ValueError, match="424242"):
        evaluate_boxes(ground_truth, detections)
    with pytest.raises(AssertionError):  # pycocotools refuses them too, without saying which
        pycocotools_reference(ground_truth, detections)


def test_annotation_id_zero_is_matched_like_any_other_id():
    ground_truth, detections = make_synthetic_coco(30, 20, seed=10, first_annotation_id=0)
    assert ground_truth["annotations"][0]["id"] == 0
    ours = evaluate_boxes(ground_truth, detections)
    # Reference: the same ground truth with ids shifted to start at 1 (ids do not change COCO metrics).
    shifted = copy.deepcopy(ground_truth)
    for annotation in shifted["annotations"]:
        annotation["id"] += 1
    assert_identical(ours, pycocotools_reference(shifted, detections))


def test_pycocotools_misses_a_perfect_match_to_annotation_id_zero_and_we_do_not():
    ground_truth = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "annotations": [
            {"id": 0, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    detections = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}]
    assert evaluate_boxes(ground_truth, detections).metrics()["AP"] == pytest.approx(1.0)  # 1 / (1 + eps)
    assert pycocotools_reference(ground_truth, detections).stats[0] == 0.0


def test_crowd_regions_absorb_detections_without_counting():
    ground_truth = {
        "images": [{"id": 7, "width": 200, "height": 200}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [0, 0, 100, 100], "area": 10000, "iscrowd": 1},
            {
                "id": 2,
                "image_id": 7,
                "category_id": 3,
                "bbox": [120, 120, 40, 40],
                "area": 1600,
                "iscrowd": 0,
            },
        ],
        "categories": [{"id": 3, "name": "person"}],
    }
    # Several detections inside the crowd region (ignored, even above the true positive), one true positive.
    detections = [
        {"image_id": 7, "category_id": 3, "bbox": [5 * i, 5 * i, 30, 30], "score": 0.9 - 0.01 * i}
        for i in range(5)
    ] + [{"image_id": 7, "category_id": 3, "bbox": [121, 121, 40, 40], "score": 0.5}]
    ours = evaluate_boxes(ground_truth, detections)
    assert_identical(ours, pycocotools_reference(ground_truth, detections))
    assert ours.metrics()["AP50"] == pytest.approx(1.0)


def test_bad_ground_truth_is_an_error_naming_the_annotation():
    ground_truth, detections = make_synthetic_coco(5, 5, seed=12)
    duplicated = copy.deepcopy(ground_truth)
    duplicated["annotations"][1]["id"] = duplicated["annotations"][0]["id"]
    with pytest.raises(ValueError, match=rf"duplicate annotation ids {duplicated['annotations'][0]['id']}"):
        evaluate_boxes(duplicated, detections)
    no_area = copy.deepcopy(ground_truth)
    del no_area["annotations"][2]["area"]
    with pytest.raises(ValueError, match=rf"annotations {no_area['annotations'][2]['id']} have no 'area'"):
        evaluate_boxes(no_area, detections)
    with pytest.raises(ValueError, match="missing keys"):
        evaluate_boxes({"images": []}, detections)
    with pytest.raises(ValueError, match="bbox"):
        evaluate_boxes(ground_truth, [{k: v for k, v in detections[0].items() if k != "bbox"}])
    with pytest.raises(ValueError, match=r"positions \[0\] have no 'score'"):
        evaluate_boxes(ground_truth, [{k: v for k, v in detections[0].items() if k != "score"}])
    with pytest.raises(ValueError, match="Unknown COCO evaluation backend"):
        evaluate_boxes(ground_truth, detections, backend="torch")


@pytest.mark.parametrize("key", ["id", "image_id", "category_id"])
def test_a_ground_truth_record_without_an_id_is_an_error_naming_it(key):
    ground_truth, detections = make_synthetic_coco(5, 5, seed=12)
    del ground_truth["annotations"][3][key]
    with pytest.raises(ValueError, match=rf"Ground-truth annotations at positions \[3\] have no '{key}'"):
        evaluate_boxes(ground_truth, detections)


def test_non_integer_ids_are_an_error_not_merged():
    ground_truth, detections = make_synthetic_coco(5, 5, seed=12)
    ground_truth["images"][1]["id"] = 1.5
    with pytest.raises(ValueError, match=r"Ground-truth images: 'id' must be an integer; position 1: 1.5"):
        evaluate_boxes(ground_truth, detections)
    ground_truth, detections = make_synthetic_coco(5, 5, seed=12)
    detections[2]["image_id"] = "7"
    with pytest.raises(ValueError, match=r"Detections: 'image_id' must be an integer; position 2: '7'"):
        evaluate_boxes(ground_truth, detections)
    ground_truth, detections = make_synthetic_coco(5, 5, seed=12)
    for record in ground_truth["images"]:
        record["id"] = float(record["id"])  # 3.0 is the integer 3, as in pycocotools' dict lookups
    assert (
        evaluate_boxes(ground_truth, detections).metrics()
        == evaluate_boxes(*make_synthetic_coco(5, 5, seed=12)).metrics()
    )


def test_metrics_and_per_category_table():
    ground_truth, detections = make_synthetic_coco(40, 30, seed=13)
    evaluation = evaluate_boxes(ground_truth, detections)
    reference = pycocotools_reference(ground_truth, detections)
    metrics = evaluation.metrics()
    assert list(metrics) == list(STAT_NAMES)
    assert list(metrics.values()) == reference.stats.tolist()
    table = evaluation.per_category_ap()
    assert table["category_id"].tolist() == sorted(c["id"] for c in ground_truth["categories"])
    # detectron2's per-category AP from pycocotools' precision array.
    for k, ap in enumerate(table["AP"]):
        precision = reference.eval["precision"][:, :, k, 0, -1]
        assert ap == np.mean(precision[precision > -1])
    # The mean over categories of per-category AP is COCO's AP (up to summation order).
    assert table["AP"].mean() == pytest.approx(metrics["AP"], abs=1e-12)
    gt_per_category = {}
    for a in ground_truth["annotations"]:
        if not a["iscrowd"]:
            gt_per_category[a["category_id"]] = gt_per_category.get(a["category_id"], 0) + 1
    assert table.set_index("category_id")["num_ground_truth"].to_dict() == gt_per_category
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in evaluation.summary
    # AR per category from pycocotools' recall array; size counts add up to at most the total.
    for k, (ar1, ars) in enumerate(zip(table["AR1"], table["ARs"], strict=True)):
        assert ar1 == np.mean(reference.eval["recall"][:, k, 0, 0])
        assert ars == np.mean(reference.eval["recall"][:, k, 1, -1])  # every category has small objects
    by_size = table[["num_ground_truth_small", "num_ground_truth_medium", "num_ground_truth_large"]].sum(
        axis=1
    )
    assert (by_size <= table["num_ground_truth"]).all()  # COCO's size ranges use the annotation's area


def test_per_area_table_is_cocos_size_breakdown():
    ground_truth, detections = make_synthetic_coco(40, 30, seed=13)
    evaluation = evaluate_boxes(ground_truth, detections)
    metrics = evaluation.metrics()
    table = evaluation.per_area_metrics().set_index("area")
    assert table.index.tolist() == ["all", "small", "medium", "large"]
    # Same numbers as pycocotools' summary, the same operations: equal to the bit.
    assert table.loc["all", ["AP", "AP50", "AP75", "AR1", "AR10", "AR100"]].tolist() == [
        metrics[name] for name in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100")
    ]
    assert table["AP"].iloc[1:].tolist() == [metrics["APs"], metrics["APm"], metrics["APl"]]
    assert table["AR100"].iloc[1:].tolist() == [metrics["ARs"], metrics["ARm"], metrics["ARl"]]
    non_crowd = [a for a in ground_truth["annotations"] if not a["iscrowd"]]
    assert table.loc["all", "num_ground_truth"] == len(non_crowd)
    assert table.loc["small", "num_ground_truth"] == sum(a["area"] < 32**2 for a in non_crowd)


def test_pycocotools_backend_is_pycocotools():
    ground_truth, detections = make_synthetic_coco(15, 15, seed=14)
    evaluation = evaluate_boxes(ground_truth, detections, backend="pycocotools")
    assert_identical(evaluation, pycocotools_reference(ground_truth, detections))
