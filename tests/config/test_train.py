"""``train:``: the metric that picks the best model is one an evaluation reports."""

from typing import get_args

import pytest

from frcnn_pipeline.config import ParameterError, TrainParams
from frcnn_pipeline.config.train import CocoMetric
from frcnn_pipeline.evaluation.coco_eval import STAT_NAMES


def test_best_metric_choices_are_the_coco_metrics_an_evaluation_reports():
    assert get_args(CocoMetric) == STAT_NAMES


def test_evaluation_during_training_is_off_by_default_and_a_bad_metric_names_the_choices():
    assert (TrainParams().eval_period, TrainParams().best_metric) == (0, "AP")
    with pytest.raises(ParameterError, match=r"train.best_metric: .*'AP', 'AP50'"):
        TrainParams.parse({"best_metric": "mAP"}, "train")
    with pytest.raises(ParameterError, match=r"train.eval_period"):
        TrainParams.parse({"eval_period": -1}, "train")
