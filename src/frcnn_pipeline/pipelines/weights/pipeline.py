"""The weights pipeline: `kedro run --pipeline weights`."""

from kedro.pipeline import Node, Pipeline

from frcnn_pipeline.pipelines.shape import DEFAULT_SHAPE, PipelineShape

from .nodes import convert_pretrained_weights, fetch_pretrained_weights


def create_pipeline(shape: PipelineShape = DEFAULT_SHAPE) -> Pipeline:
    """The same for every shape."""
    return Pipeline(
        [
            Node(fetch_pretrained_weights, "params:weights", "pretrained_weights_file", name="fetch_weights"),
            Node(
                convert_pretrained_weights,
                ["pretrained_weights_file", "categories", "params:model", "params:weights"],
                ["initial_weights", "weights_conversion_report"],
                name="convert_weights",
            ),
        ],
        tags="weights",
        namespace="weights",
        prefix_datasets_with_namespace=False,
    )
