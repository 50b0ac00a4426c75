"""The evaluate pipeline: inference on the val split, COCO metrics, tables, plots and annotated samples."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    advise_score_thresholds,
    analyse_errors,
    compute_coco_metrics,
    draw_detection_samples,
    draw_worst_images,
    plot_ap_per_category,
    plot_per_category_precision_recall,
    plot_precision_recall,
    predict_val_split,
    report_coco_metrics,
    report_per_area_metrics,
    tabulate_confusion,
)


def create_pipeline(**kwargs) -> Pipeline:
    """``weights`` (keyword): the catalog entry of the state dict to evaluate, ``trained_model`` by default
    (e.g. ``initial_weights`` for a converted model-zoo checkpoint)."""
    weights = kwargs.get("weights", "trained_model")
    return Pipeline(
        [
            Node(
                predict_val_split,
                [weights, "val_images", "categories", "params:model", "params:evaluate", "params:runtime"],
                "val_detections",
                name="predict_val_split",
            ),
            Node(
                compute_coco_metrics,
                ["val_ground_truth", "val_detections", "params:evaluate"],
                "coco_evaluation",
                name="compute_coco_metrics",
            ),
            Node(
                report_coco_metrics,
                "coco_evaluation",
                ["coco_metrics", "per_category_ap"],
                name="report_coco_metrics",
            ),
            Node(
                plot_precision_recall,
                "coco_evaluation",
                "precision_recall_curves",
                name="plot_precision_recall",
            ),
            Node(
                plot_per_category_precision_recall,
                "coco_evaluation",
                "per_category_precision_recall_curves",
                name="plot_per_category_precision_recall",
            ),
            Node(
                plot_ap_per_category, "per_category_ap", "ap_per_category_plot", name="plot_ap_per_category"
            ),
            Node(
                draw_detection_samples,
                ["val_images", "val_ground_truth", "val_detections", "params:evaluate"],
                "detection_samples",
                name="draw_detection_samples",
            ),
            *error_analysis_nodes(),
        ],
        tags="evaluate",
        namespace="evaluate",
        prefix_datasets_with_namespace=False,
    )


def error_analysis_nodes() -> list[Node]:
    """Why AP is not higher: TIDE's error breakdown, the confusion matrix, the worst images, AP and AR per
    size, and the F1-maximising score threshold per category."""
    detections = ["val_ground_truth", "val_detections"]
    return [
        Node(report_per_area_metrics, "coco_evaluation", "per_area_metrics", name="report_per_area_metrics"),
        Node(
            analyse_errors,
            [*detections, "params:evaluate.error_analysis"],
            ["error_breakdown", "error_breakdown_plot"],
            name="analyse_errors",
        ),
        Node(
            tabulate_confusion,
            [*detections, "params:evaluate.confusion_matrix"],
            ["confusion_matrix", "confusion_matrix_plot"],
            name="tabulate_confusion",
        ),
        Node(
            advise_score_thresholds,
            [*detections, "params:evaluate.score_thresholds"],
            ["score_thresholds", "score_thresholds_plot"],
            name="advise_score_thresholds",
        ),
        Node(
            draw_worst_images,
            ["val_images", *detections, "params:evaluate.worst_images", "params:evaluate.error_analysis"],
            "worst_images",
            name="draw_worst_images",
        ),
    ]
