"""The predict pipeline: list the images, predict them, write the results JSON and the annotated images."""

from kedro.pipeline import Node, Pipeline

from frcnn_pipeline.pipelines.run_inputs import RUN_WORLD
from frcnn_pipeline.pipelines.shape import DEFAULT_SHAPE, PipelineShape

from .nodes import build_prediction_results, draw_prediction_images, list_prediction_images, predict_images


def create_pipeline(
    shape: PipelineShape = DEFAULT_SHAPE, model: str = "trained_model", namespace: str = "predict"
) -> Pipeline:
    """``shape``: its inference backend; ``model``, the catalog entry of the model to use; ``namespace``,
    ``predict`` by default, whose datasets keep their plain names (``prediction_results``...),
    while any other namespace prefixes them (``predict_initial_weights.prediction_results``), so that each
    model's predictions have their own catalog entries and folders."""
    nodes = Pipeline(
        [
            Node(
                list_prediction_images,
                "params:predict",
                "prediction_image_paths",
                name="list_prediction_images",
            ),
            Node(
                predict_images,
                [
                    model,
                    "prediction_image_paths",
                    "params:model",
                    "params:predict",
                    "params:runtime",
                    RUN_WORLD,
                    *shape.graph_input(model),
                ],
                ["prediction_records", "prediction_model"],
                name="predict_images",
            ),
            Node(
                build_prediction_results,
                ["prediction_records", "prediction_image_paths", "prediction_model", "params:predict"],
                "prediction_results",
                name="build_prediction_results",
            ),
            Node(
                draw_prediction_images,
                ["prediction_records", "prediction_image_paths", "prediction_model", "params:predict"],
                "prediction_images",
                name="draw_prediction_images",
            ),
        ]
    )
    if namespace == "predict":
        return Pipeline(nodes, tags=namespace, namespace=namespace, prefix_datasets_with_namespace=False)
    return Pipeline(
        nodes,
        inputs={model, RUN_WORLD, *shape.graph_input(model)},
        parameters={"params:model", "params:predict", "params:runtime"},
        tags=namespace,
        namespace=namespace,
    )
