"""The evaluate pipeline: for each evaluation split, inference, COCO metrics, tables, plots and samples.

Each split's nodes and outputs live in the namespace ``<evaluation>.<split>`` (``evaluate.val``,
``evaluate.test``, ``evaluate_initial_weights.val``...), and the catalog's dataset factories give each its
own versioned files: ``data/08_reporting/<evaluation>/<split>/coco_metrics.json/<version>/...``.
"""

from kedro.pipeline import Node, Pipeline

from frcnn_pipeline.pipelines.run_inputs import RUN_WORLD
from frcnn_pipeline.pipelines.shape import DEFAULT_SHAPE, PipelineShape
from frcnn_pipeline.pipelines.splits import for_split

from .nodes import (
    advise_score_thresholds,
    analyse_errors,
    compute_coco_metrics,
    draw_detection_samples,
    draw_worst_images,
    plot_ap_per_category,
    plot_per_category_precision_recall,
    plot_precision_recall,
    predict_split,
    report_coco_metrics,
    report_per_area_metrics,
    tabulate_confusion,
)

SHARED_PARAMETERS = {"params:model", "params:evaluate", "params:runtime"}


def split_pipeline(model: str, evaluation: str, split: str, shape: PipelineShape) -> Pipeline:
    """``model`` (a catalog entry holding a SavedDetector) evaluated on ``split``, in namespace
    ``<evaluation>.<split>``, on ``shape``'s inference backend."""
    # Long because the split's nodes are one flat list, read top to bottom as the pipeline runs.
    nodes = [
        Node(
            predict_split,
            [
                "model",
                "images",
                "categories",
                "params:model",
                "params:evaluate",
                "params:runtime",
                RUN_WORLD,
                *shape.graph_input(model),
            ],
            ["detections", "evaluated_model"],
            name="predict_split",
        ),
        Node(
            compute_coco_metrics,
            ["ground_truth", "detections", "params:evaluate"],
            "coco_evaluation",
            name="compute_coco_metrics",
        ),
        Node(
            for_split(report_coco_metrics, split),
            ["coco_evaluation", "evaluated_model", "ground_truth", "params:evaluate"],
            ["coco_metrics", "per_category_ap"],
            name="report_coco_metrics",
        ),
        Node(
            plot_precision_recall, "coco_evaluation", "precision_recall_curves", name="plot_precision_recall"
        ),
        Node(
            plot_per_category_precision_recall,
            "coco_evaluation",
            "per_category_precision_recall_curves",
            name="plot_per_category_precision_recall",
        ),
        Node(plot_ap_per_category, "per_category_ap", "ap_per_category_plot", name="plot_ap_per_category"),
        Node(
            draw_detection_samples,
            ["images", "ground_truth", "detections", "params:evaluate"],
            "detection_samples",
            name="draw_detection_samples",
        ),
        # Why AP is not higher: TIDE's error breakdown, the confusion matrix, the worst images, AP and AR per
        # size, and the F1-maximising score threshold per category.
        Node(report_per_area_metrics, "coco_evaluation", "per_area_metrics", name="report_per_area_metrics"),
        Node(
            analyse_errors,
            ["ground_truth", "detections", "params:evaluate"],
            ["error_breakdown", "error_breakdown_plot"],
            name="analyse_errors",
        ),
        Node(
            tabulate_confusion,
            ["ground_truth", "detections", "params:evaluate"],
            ["confusion_matrix", "confusion_matrix_plot"],
            name="tabulate_confusion",
        ),
        Node(
            advise_score_thresholds,
            ["ground_truth", "detections", "params:evaluate"],
            ["score_thresholds", "score_thresholds_plot"],
            name="advise_score_thresholds",
        ),
        Node(
            draw_worst_images,
            ["images", "ground_truth", "detections", "params:evaluate"],
            "worst_images",
            name="draw_worst_images",
        ),
    ]
    return Pipeline(
        nodes,
        inputs={
            "model": model,
            "images": f"{split}_images",
            "ground_truth": f"{split}_ground_truth",
            "categories": "categories",
            RUN_WORLD: RUN_WORLD,
            **{graph: graph for graph in shape.graph_input(model)},
        },
        parameters=SHARED_PARAMETERS,
        namespace=f"{evaluation}.{split}",
        tags=evaluation,
    )


def create_pipeline(
    shape: PipelineShape = DEFAULT_SHAPE, model: str = "trained_model", evaluation: str = "evaluate"
) -> Pipeline:
    """Every evaluation split of ``shape``. ``model``: the catalog entry to evaluate; ``evaluation``: the
    namespace (and folder) of its outputs."""
    return sum(
        (split_pipeline(model, evaluation, split, shape) for split in shape.evaluation_splits), Pipeline([])
    )
