"""Evaluation during training gives what the evaluate pipeline's code gives for the same weights, on one
worker and spread over two (gloo)."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_configs import model_params
from tiny_training import (
    TINY_MODEL,
    ground_truth,
    runtime_config,
    tiny_categories,
    train_config,
    train_from_parameters,
    write_tiny_dataset,
)

from frcnn_pipeline.config import EvaluateParams
from frcnn_pipeline.evaluation.coco_eval import evaluate_boxes
from frcnn_pipeline.evaluation.evaluator import DetectionEvaluator
from frcnn_pipeline.evaluation.inference import category_ids_by_label, coco_results, run_inference
from frcnn_pipeline.runtime.world import WorldConfig

EVALUATE = EvaluateParams.parse(
    {"metric_backend": "numpy", "inference": {"batch_size": 2, "score_threshold": 0.0}}, "evaluate"
)


@pytest.fixture(scope="module")
def tiny_split(module_tmp):
    images, annotations = write_tiny_dataset(module_tmp("tiny"), count=6, seed=5)
    return images, annotations, ground_truth(images, annotations)


def _evaluate_like_the_pipeline(state_dict, images, gt) -> dict[str, float]:
    """predict_val_split + compute_coco_metrics of the evaluate pipeline, on one worker."""
    options = EVALUATE.inference
    records = run_inference(
        state_dict, model_params(TINY_MODEL), 2, images["path"].tolist(), world=WorldConfig(), options=options
    )
    detections = coco_results(records, images["image_id"].tolist(), category_ids_by_label(tiny_categories()))
    return evaluate_boxes(gt, detections).metrics()


@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-workers"])
def test_evaluation_during_training_equals_the_evaluate_pipeline(tmp_path, tiny_split, workers):
    images, annotations, gt = tiny_split
    evaluator = DetectionEvaluator.for_split(
        "val", images, gt, tiny_categories(), model_params(TINY_MODEL), EVALUATE
    )
    # 4 steps of 2 images: enough for the tiny model to find some boxes.
    train = train_config(tmp_path, max_iter=4, base_lr=5e-3, warmup_iters=1, steps=[])
    train.update(eval_period=4, best_metric="AP", images_per_device=2 // workers)
    result = train_from_parameters(
        images, annotations, 2, TINY_MODEL, train, runtime_config(nproc_per_node=workers, num_threads=1),
        evaluator=evaluator,
    )  # fmt: skip
    logged = result["evaluations"][-1]
    assert logged["iteration"] == 4
    expected = _evaluate_like_the_pipeline(result["state_dict"], images, gt)
    assert {name: logged[name] for name in expected} == pytest.approx(expected, abs=1e-12)
    assert expected["AR100"] > 0, "a model that finds nothing would make this comparison empty"


def test_unreadable_val_image_stops_training_with_the_fix(tmp_path, tiny_split):
    images, annotations, gt = tiny_split
    broken = images.copy()
    Path(tmp_path / "broken.png").write_bytes(b"not a png")
    broken.loc[0, "path"] = str(tmp_path / "broken.png")
    evaluator = DetectionEvaluator.for_split(
        "val", broken, gt, tiny_categories(), model_params(TINY_MODEL), EVALUATE
    )
    train = train_config(tmp_path, max_iter=1)
    train.update(eval_period=1, best_metric="AP")
    with pytest.raises(RuntimeError, match=r"1 val image\(s\) could not be read .* train.eval_period: 0"):
        train_from_parameters(
            images, annotations, 2, TINY_MODEL, train, runtime_config(), evaluator=evaluator
        )
