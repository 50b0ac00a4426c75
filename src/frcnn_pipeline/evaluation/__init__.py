"""Layer 5, evaluation: batched/distributed inference, COCO box AP (pycocotools-identical), error analysis,
plots, drawing."""

from frcnn_pipeline.evaluation.coco_eval import STAT_NAMES, CocoBoxEvaluation, evaluate_boxes

__all__ = ["STAT_NAMES", "CocoBoxEvaluation", "evaluate_boxes"]
