"""The exported graphs against the PyTorch model they come from, on a tiny random detector: the dynamic graph
on image sizes it was not traced with, the fixed-shape graph's numeric shapes, what cannot be exported."""

import onnx
import pytest
import torch
import torchvision
from conftest import CATEGORIES, saved_detector, tiny_config

from frcnn_pipeline.config import ExportParams
from frcnn_pipeline.export import DYNAMIC, FIXED, OnnxDetector, UnexportableOpError, export_detector
from frcnn_pipeline.export.onnx_export import graph_config, inference_model
from frcnn_pipeline.modeling.pooler import LevelRoIAlign

# The tolerance the export is held to on these 64-96 px images: ONNX Runtime's float32 arithmetic
# (resize, convolutions, RoiAlign) against PyTorch's.
BOX_ATOL_PX, SCORE_ATOL = 1e-3, 1e-5
# Traced at 60 x 80 (export_detector's example): other shapes and aspect ratios, one downscaled.
SIZES = ((50, 70), (96, 40), (64, 64), (33, 130), (300, 200))


def images(sizes=SIZES):
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator) for size in sizes]


def assert_same_detections(actual: dict, expected: dict) -> None:
    assert len(expected["boxes"]) > 0 and torch.equal(actual["labels"], expected["labels"])
    torch.testing.assert_close(actual["boxes"], expected["boxes"], rtol=0, atol=BOX_ATOL_PX)
    torch.testing.assert_close(actual["scores"], expected["scores"], rtol=0, atol=SCORE_ATOL)


def test_the_dynamic_graph_detects_what_pytorch_does_at_every_image_size(tiny, exported):
    model = inference_model(tiny.state_dict, tiny.model_config, len(CATEGORIES))
    detector = OnnxDetector(exported.dynamic)
    with torch.no_grad():
        for image in images():
            assert_same_detections(detector(image), model([image])[0])


def test_the_fixed_shape_graph_has_numbers_for_every_input_and_output_dimension(exported):
    graph = exported.fixed.graph
    shapes = {
        value.name: [dim.dim_value if dim.HasField("dim_value") else dim.dim_param for dim in
                     value.type.tensor_type.shape.dim]
        for value in [*graph.input, *graph.output]
    }  # fmt: skip
    assert shapes == {
        "image": [1, 3, 96, 96],
        "resized_size": [2],
        "original_size": [2],
        "boxes": [100, 4],
        "scores": [100],
        "labels": [100],
        "num_detections": [1],
    }


def test_the_fixed_shape_graph_detects_what_the_static_shape_model_does(tiny, exported):
    static = tiny.model_config.replaced(input={"fixed_size": [96, 96]}, static_shapes={"enabled": True})
    model = inference_model(tiny.state_dict, static, len(CATEGORIES))
    detector = OnnxDetector(exported.fixed)
    with torch.no_grad():
        for image in images(SIZES[:4]):
            assert_same_detections(detector(image), model([image])[0])


@pytest.fixture(scope="module")
def background_only():
    """A model whose every box is background, exported with a landscape 64 x 96 canvas."""
    saved = saved_detector(tiny_config())
    saved.state_dict["roi_heads.box_predictor.cls_score.bias"][0] = 100.0
    return export_detector(saved, saved.model_config, ExportParams(fixed_size=[64, 96]))


def test_an_image_without_detections_gives_empty_outputs_and_a_zero_count(background_only):
    [image] = images(SIZES[:1])
    for graph in (background_only.dynamic, background_only.fixed):
        detections = OnnxDetector(graph)(image)
        assert detections["boxes"].shape == (0, 4) and len(detections["scores"]) == 0


def test_the_graphs_name_their_classes_and_describe_their_preprocessing(exported):
    for graph, variant in ((exported.dynamic, "dynamic"), (exported.fixed, "fixed")):
        onnx.checker.check_model(graph, full_check=True)
        description = OnnxDetector(graph).description
        assert description == exported.deployment[variant]
        assert [(c["label"], c["name"]) for c in description["categories"]] == [
            (1, "cat"),
            (2, "dog"),
            (3, "owl"),
        ]
        assert description["source"]["sha256"] == "ab" * 32
        assert description["postprocessing"]["score_threshold"] == 0.05
    resize = exported.deployment["fixed"]["preprocessing"]["outside_graph"]["resize"]
    assert (
        resize["short_side"] == 64 and resize["max_size"] == 96 and "floor(h * scale + 0.5)" in resize["rule"]
    )


class PSRoIPooler(LevelRoIAlign):
    """A pooler built on an op without an ONNX translation (position-sensitive RoIAlign)."""

    def _pool(self, feature, rois, scale):
        bins = self.output_size[0] * self.output_size[1]  # one input channel per bin and output channel
        pooled = torchvision.ops.ps_roi_align(
            feature[:, :1].expand(-1, bins, -1, -1), rois, self.output_size, scale, self.sampling_ratio
        )
        return pooled.expand(-1, feature.shape[1], -1, -1)


def test_a_model_with_an_op_onnx_cannot_express_fails_naming_the_op(tiny, monkeypatch):
    monkeypatch.setattr("frcnn_pipeline.modeling.model.LevelRoIAlign", PSRoIPooler)
    with pytest.raises(
        UnexportableOpError, match=r"torchvision::ps_roi_align has no ONNX translation at opset"
    ):
        export_detector(tiny, tiny.model_config)


def test_aligned_roi_align_below_opset_16_is_refused_naming_the_op_and_the_fix(tiny):
    with pytest.raises(UnexportableOpError, match=r"torchvision::roi_align with aligned=True .* opset 16"):
        export_detector(tiny, tiny.model_config, ExportParams(opset=13))


def test_a_canvas_too_small_for_an_image_is_a_clear_error(background_only):
    detector = OnnxDetector(background_only.fixed)
    detector(images(((50, 70),))[0])  # a landscape image fits the 64 x 96 canvas
    with pytest.raises(
        ValueError, match=r"image of 70x50 resizes to 90x64, which does not fit .* 64x96 canvas"
    ):
        detector(images(((70, 50),))[0])


def test_each_graph_runs_its_own_mode_whatever_mode_the_model_was_trained_in():
    # as the npu envs train
    trained_static = tiny_config(fixed_size=[128, 128]).replaced(static_shapes={"enabled": True})
    dynamic, fixed = graph_config(trained_static, DYNAMIC), graph_config(trained_static, FIXED, [96, 96])
    assert not dynamic.static_shapes.enabled and dynamic.input.fixed_size is None
    assert fixed.static_shapes.enabled and fixed.input.fixed_size == [96, 96]
    assert trained_static.input.fixed_size == [128, 128], "the saved config is left as it was"


def test_coco_category_rows_export_and_detect_what_pytorch_does():
    """predictor_rows coco_category_ids (91 rows, labels on the rows of ids 10, 11, 12): both graphs map the
    rows back to labels and leave out the other rows' candidates, as the PyTorch model does."""
    config = tiny_config().replaced(
        roi_heads={"predictor_rows": "coco_category_ids", "score_thresh_test": 0.0}
    )
    saved = saved_detector(config)
    saved.state_dict["roi_heads.label_rows"] = torch.tensor([0, 10, 11, 12])
    exported = export_detector(saved, config, ExportParams(score_threshold=0.0))
    for graph, static in ((exported.dynamic, False), (exported.fixed, True)):
        model_config = (
            config.replaced(input={"fixed_size": [96, 96]}, static_shapes={"enabled": True})
            if static
            else config
        )
        model = inference_model(saved.state_dict, model_config, len(CATEGORIES))
        detector = OnnxDetector(graph)
        with torch.no_grad():
            for image in images(SIZES[:3]):
                expected = model([image])[0]
                assert set(expected["labels"].tolist()) <= {1, 2, 3}
                assert_same_detections(detector(image), expected)
