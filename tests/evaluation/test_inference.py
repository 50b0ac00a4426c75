"""Inference: records, COCO results mapping, options, precision options and the two-worker gather; what the
ONNX Runtime backend refuses (its results: tests/pipelines/export)."""

import numpy as np
import pandas as pd
import pytest
import torch
from detection_ops_probe import probe_detection_ops
from model_configs import model_params
from PIL import Image

from frcnn_pipeline.config import InferenceParams, ModelParams, RuntimeParams
from frcnn_pipeline.data.images import read_rgb
from frcnn_pipeline.errors import UserFacingError
from frcnn_pipeline.evaluation.inference import (
    aspect_grouped_order,
    category_ids_by_label,
    coco_results,
    describe_arithmetic,
    prepare_for_inference,
    require_test_time_options,
    run_inference,
    run_onnx_inference,
)
from frcnn_pipeline.framework.parameter_docs import load_parameters
from frcnn_pipeline.modeling import StaticFasterRCNN, build_model
from frcnn_pipeline.modeling.static import StaticBatch
from frcnn_pipeline.runtime.world import WorldConfig

ONE = WorldConfig()  # one worker, on the CPU


@pytest.fixture(scope="module")
def model_cfg() -> ModelParams:
    cfg = load_parameters("base")["model"]  # the demo's
    return model_params({**cfg, "input": {**cfg["input"], "min_size_test": 64, "max_size": 96}})


@pytest.fixture(scope="module")
def weights(model_cfg) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model(model_cfg, 3).state_dict()


@pytest.fixture
def image_paths(tmp_path) -> list[str]:
    rng = np.random.default_rng(1)
    paths = []
    for i, size in enumerate([(40, 56), (64, 48), (50, 50)]):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    return [*paths[:2], str(broken), paths[2]]


def test_coco_results_maps_labels_to_category_ids_and_boxes_to_xywh():
    records = [
        {
            "position": 0,
            "error": "",
            "boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.5, 1.5, 2.0, 3.0]]),
            "scores": torch.tensor([0.9, 0.2]),
            "labels": torch.tensor([1, 3]),
        },
        {"position": 1, "error": "OSError: broken"},
    ]
    detections = coco_results(records, image_ids=[42, 43], category_ids_by_label=[7, 9, 11])
    assert detections == [
        {"image_id": 42, "category_id": 7, "bbox": [10.0, 20.0, 20.0, 40.0], "score": pytest.approx(0.9)},
        {"image_id": 42, "category_id": 11, "bbox": [0.5, 1.5, 1.5, 1.5], "score": pytest.approx(0.2)},
    ]


def test_category_ids_follow_the_label_column_and_gaps_are_errors():
    categories = pd.DataFrame({"label": [1, 0, 2], "category_id": [5, 2, 9], "name": list("abc")})
    assert category_ids_by_label(categories) == [2, 5, 9]
    with pytest.raises(ValueError, match="without gaps"):
        category_ids_by_label(categories.iloc[:2].assign(label=[0, 2]))


def test_options_are_validated():
    with pytest.raises(ValueError, match=r"evaluate\.inference\.batchsize: unknown parameter; did you mean"):
        InferenceParams.parse({"batchsize": 2}, "evaluate.inference")
    with pytest.raises(ValueError, match=r"evaluate.inference.batch_size: 0 must be >= 1"):
        InferenceParams.parse({"batch_size": 0}, "evaluate.inference")
    model = ModelParams()
    cfg = InferenceParams(score_threshold=0.3, nms_threshold=0.6, detections_per_image=7).applied_to(model)
    roi = cfg.roi_heads
    assert (roi.score_thresh_test, roi.nms_thresh_test, roi.detections_per_image) == (0.3, 0.6, 7)
    changed = {key for key, value in cfg.flat().items() if model.flat()[key] != value}
    assert changed == {
        "roi_heads.score_thresh_test",
        "roi_heads.nms_thresh_test",
        "roi_heads.detections_per_image",
    }


def test_records_in_order_with_unreadable_images_reported(weights, model_cfg, image_paths):
    options = InferenceParams(batch_size=3)
    records = run_inference(weights, model_cfg, 3, image_paths, world=ONE, options=options)
    assert [r["position"] for r in records] == [0, 1, 2, 3]
    assert [bool(r["error"]) for r in records] == [False, False, True, False]
    assert (records[0]["height"], records[0]["width"]) == (40, 56)
    for record in (records[0], records[1], records[3]):
        assert record["boxes"].dtype == torch.float32
        assert len(record["boxes"]) <= 100
        assert ((record["labels"] >= 1) & (record["labels"] <= 3)).all()
        assert (record["boxes"][:, 2] <= record["width"]).all() and (
            record["boxes"][:, 3] <= record["height"]
        ).all()
        assert (record["scores"] >= 0.05).all()


def test_two_cpu_workers_gather_the_same_records_as_one(weights, model_cfg, image_paths):
    one = run_inference(weights, model_cfg, 3, image_paths, world=ONE, options=InferenceParams(batch_size=2))
    two = run_inference(
        weights,
        model_cfg,
        3,
        image_paths,
        world=WorldConfig(device="cpu", nproc_per_node=2),
        runtime=RuntimeParams(device="cpu", nproc_per_node=2, master_port=0),
        options=InferenceParams(batch_size=2),
    )
    assert [r["position"] for r in two] == [0, 1, 2, 3]
    for a, b in zip(one, two, strict=True):
        assert a["error"] == b["error"]
        if not a["error"]:
            torch.testing.assert_close(a["boxes"], b["boxes"])
            torch.testing.assert_close(a["scores"], b["scores"])
            assert torch.equal(a["labels"], b["labels"])


def test_bf16_and_channels_last_run_the_backbone_reduced_and_the_heads_in_fp32(
    weights, model_cfg, image_paths
):
    options = InferenceParams(cpu_precision="bfloat16", channels_last=True)
    model = build_model(model_cfg, 3)
    model.load_state_dict(weights)
    model = prepare_for_inference(model, torch.device("cpu"), options)
    features = model.backbone(torch.rand(1, 3, 64, 64) * 255)
    assert all(f.dtype == torch.float32 for f in features.values())
    records = run_inference(weights, model_cfg, 3, image_paths, world=ONE, options=options)
    assert all(r["boxes"].dtype == torch.float32 for r in records if not r["error"])


def _direct_predictions(model_cfg, weights, paths):
    """The records' detections computed the plain way: the model as built, in eval mode, no options."""
    model = build_model(model_cfg, 3)
    model.load_state_dict(weights)
    model.eval()
    with torch.no_grad():
        return [model([read_rgb(path)])[0] for path in paths]


def test_by_default_evaluation_runs_the_models_own_arithmetic(weights, model_cfg, image_paths):
    readable = [image_paths[0], image_paths[1], image_paths[3]]
    records = run_inference(weights, model_cfg, 3, readable, world=ONE, options=InferenceParams(batch_size=1))
    for record, expected in zip(records, _direct_predictions(model_cfg, weights, readable), strict=True):
        assert torch.equal(record["boxes"], expected["boxes"])
        assert torch.equal(record["scores"], expected["scores"])
        assert torch.equal(record["labels"], expected["labels"])
    assert describe_arithmetic(RuntimeParams(), InferenceParams()) == "float32, the model's own arithmetic"
    fast = InferenceParams(cpu_precision="bfloat16", fold_batch_norm=True, channels_last=True)
    assert describe_arithmetic(RuntimeParams(), fast) == (
        "backbone in bfloat16, heads in float32; norms folded into the convs; channels_last"
    )
    onnx_runtime = RuntimeParams(inference_backend="onnxruntime")
    assert describe_arithmetic(onnx_runtime, fast) == "float32, the exported graph in ONNX Runtime"


def test_static_shape_inference_resizes_on_the_host_and_equals_the_models_own_call(
    weights, model_cfg, image_paths, monkeypatch
):
    static_cfg = model_cfg.replaced(input={"fixed_size": [96, 96]}, static_shapes={"enabled": True})
    received = []
    forward = StaticFasterRCNN.forward

    def recording(self, images, targets=None):
        received.append((type(images), tuple(images.canvas.shape)))
        return forward(self, images, targets)

    readable = [image_paths[0], image_paths[1]]
    expected = _direct_predictions(static_cfg, weights, readable)
    monkeypatch.setattr(StaticFasterRCNN, "forward", recording)
    records = run_inference(
        weights, static_cfg, 3, readable, world=ONE, options=InferenceParams(batch_size=2)
    )
    assert received == [(StaticBatch, (2, 3, 96, 96))]
    for record, direct in zip(records, expected, strict=True):
        torch.testing.assert_close(record["boxes"], direct["boxes"])
        assert torch.equal(record["labels"], direct["labels"])


def test_inference_workers_take_runtime_num_threads(weights, model_cfg, image_paths, monkeypatch):
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    run_inference(weights, model_cfg, 3, image_paths[:1], world=ONE, runtime=RuntimeParams(num_threads=1))
    assert threads == [1]


def test_batches_group_landscape_and_portrait_images(image_paths):
    # 56x40 landscape, 48x64 portrait, unreadable (reported later; grouped as landscape), 50x50 square.
    assert aspect_grouped_order(image_paths) == [0, 2, 3, 1]


def test_an_evaluation_with_the_portable_detection_ops_equals_torchvisions(weights, model_cfg, image_paths):
    records, probes = {}, {}
    for setting in ("auto", "portable"):
        with probe_detection_ops(route_torchvision_nms=setting == "portable") as probes[setting]:
            runtime = RuntimeParams(device="cpu", detection_ops=setting)
            options = InferenceParams(batch_size=2)
            records[setting] = run_inference(
                weights, model_cfg, 3, image_paths, world=ONE, runtime=runtime, options=options
            )

    assert "torchvision" in probes["auto"].namespaces and probes["auto"].portable_nms_calls == 0
    portable = probes["portable"]
    assert "torchvision" not in portable.namespaces  # no torchvision kernel ran
    assert portable.portable_roi_align_calls == 4 * 2  # 4 levels × 2 batches (3 readable images, 2 per batch)
    assert portable.portable_nms_calls >= 2 * 3  # the RPN's and the box head's, for each image
    for expected, record in zip(records["auto"], records["portable"], strict=True):
        assert record["error"] == expected["error"]
        if not expected["error"]:
            assert len(expected["boxes"]) > 10 and torch.equal(record["labels"], expected["labels"])
            # Boxes of ~50 px agree to a float32 ulp or two; scores to ~1e-7.
            torch.testing.assert_close(record["boxes"], expected["boxes"], rtol=1e-6, atol=1e-5)
            torch.testing.assert_close(record["scores"], expected["scores"], rtol=1e-5, atol=1e-6)


def test_onnxruntime_refuses_other_devices_and_other_test_time_filtering():
    with pytest.raises(UserFacingError, match=r"onnxruntime runs on the CPU, but runtime.device is 'cuda'"):
        run_onnx_inference(None, [], runtime=RuntimeParams(device="cuda"))
    built_in = {
        "postprocessing": {"score_threshold": 0.05, "nms_threshold": 0.5, "detections_per_image": 100}
    }
    require_test_time_options(built_in, InferenceParams())
    with pytest.raises(UserFacingError, match=r"score_threshold is 0.3 but the graph was exported with 0.05"):
        require_test_time_options(built_in, InferenceParams(score_threshold=0.3))
