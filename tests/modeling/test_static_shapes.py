"""The static-shape mode: a training step (forward, backward, optimizer) and an inference pass run the same
ops on the same shapes whatever the images and objects, on the ops an NPU without torchvision_npu runs
(`runtime.detection_ops: portable`, real NMS), and read nothing back on the host; the numbers match the
dynamic mode's where both see the same samples."""

import copy

import pytest
import torch
from model_configs import model_params
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher
from torchvision.ops import box_iou

from frcnn_pipeline.layers import backend
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.modeling.pooler import LevelRoIAlign
from frcnn_pipeline.modeling.static import (
    check_gt_box_counts,
    match_padded,
    pad_targets,
    sample_fixed,
    strip_padding,
)
from frcnn_pipeline.modeling.step_trace import trace_step, traced_training_step

TINY = {
    "backbone": {"depth": 18, "norm": "bn", "freeze_at": 0, "fpn_channels": 16},
    "input": {"min_size_train": [64], "min_size_test": 64, "max_size": 64, "fixed_size": [64, 64]},
    "anchors": {"sizes": [16, 32, 64, 128, 256]},
    "rpn": {
        "batch_size_per_image": 64,
        "pre_nms_topk_train": 200,
        "post_nms_topk_train": 50,
        "pre_nms_topk_test": 200,
        "post_nms_topk_test": 50,
    },
    # a fixed sampling grid, as the npu envs: the portable RoIAlign's adaptive one follows the RoIs
    "roi_heads": {
        "batch_size_per_image": 32,
        "fc_dim": 32,
        "detections_per_image": 300,
        "pooler_sampling_ratio": 2,
    },
}
STATIC = {"enabled": True, "max_gt_boxes": 8, "detection_candidates": 300}
# Objects per image in three batches of two images: none, one, many.
OBJECT_COUNTS = ((0, 0), (1, 1), (7, 3))
# Their image sizes, all different; each image is resized to a short side drawn from two.
IMAGE_SIZES = (((64, 80), (50, 64)), ((72, 60), (64, 64)), ((40, 90), (80, 70)))
VARIED_INPUT = {"min_size_train": [40, 48], "min_size_test": 40, "max_size": 64, "fixed_size": [64, 64]}


def tiny_model(static: bool, **overrides) -> torch.nn.Module:
    config = copy.deepcopy(TINY)
    for section, values in overrides.items():
        config[section].update(values)
    if static:
        config["static_shapes"] = STATIC
    torch.manual_seed(0)
    return build_model(model_params(config), num_classes=2)


def batch(counts: tuple[int, ...], seed: int, sizes: tuple[tuple[int, int], ...] | None = None):
    """Images (64×64 unless `sizes`) with `count` coloured rectangles each, and their targets."""
    generator = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for count, (height, width) in zip(counts, sizes or [(64, 64)] * len(counts), strict=True):
        image = torch.randint(0, 60, (3, height, width), dtype=torch.uint8, generator=generator)
        corners = torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * 0.6
        sides = 10 + torch.rand(count, 2, generator=generator) * 14
        boxes = torch.cat([corners, torch.minimum(corners + sides, torch.tensor([width, height]))], dim=1)
        labels = torch.randint(1, 3, (count,), generator=generator)
        for (x1, y1, x2, y2), label in zip(boxes.int().tolist(), labels.tolist(), strict=True):
            image[label, y1:y2, x1:x2] = 220
        images.append(image)
        targets.append({"boxes": boxes, "labels": labels})
    return images, targets


@pytest.fixture
def portable_ops():
    """What an NPU without torchvision_npu runs: the portable NMS and RoIAlign."""
    backend.configure("portable")


def training_traces(static: bool, **overrides) -> list:
    """The traces of three training steps on the batches of IMAGE_SIZES and OBJECT_COUNTS. In the static mode
    the step starts from the batch's `host_batch` (made before it, where the loader's images are)."""
    model = tiny_model(static, input=VARIED_INPUT, **overrides).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    traces = []
    for seed, (sizes, counts) in enumerate(zip(IMAGE_SIZES, OBJECT_COUNTS, strict=True)):
        images, targets = batch(counts, seed, sizes)
        inputs = (model.transform.host_batch(images, targets),) if static else (images, targets)
        traces.append(traced_training_step(model, optimizer, inputs))
    return traces


def inference_traces(static: bool) -> list:
    model = tiny_model(static, input=VARIED_INPUT).eval()
    model.transform.padded_detections = (
        True  # the one data-dependent step, stripping the padding, comes after
    )
    traces = []
    for seed, (sizes, counts) in enumerate(zip(IMAGE_SIZES, OBJECT_COUNTS, strict=True)):
        images, _ = batch(counts, seed, sizes)
        inputs = model.transform.host_batch(images) if static else images
        with torch.no_grad(), trace_step() as trace:
            model(inputs)
        traces.append(trace)
    return traces


@pytest.mark.parametrize("traces", [training_traces, inference_traces])
def test_static_mode_runs_the_same_ops_on_the_same_shapes_and_reads_nothing_back(portable_ops, traces):
    first, *others = traces(static=True)
    names = {op for op, _ in first.ops}
    # the portable ops ran (no torchvision kernel), NMS (its upper-triangular mask) among them
    assert len(first.ops) > 1000 and "aten.triu.default" in names
    assert not any(op.startswith("torchvision.") for op in names)
    for trace in (first, *others):
        assert trace.flagged_counts() == {}, (
            "data-dependent ops: no host read, shape from values or host data"
        )
        assert trace.ops == first.ops


def test_static_training_reads_nothing_back_on_the_default_ops_either():
    # auto on CPU: torchvision's RoIAlign kernel (adaptive sampling inside it) and the static NMS
    first, *others = training_traces(static=True, roi_heads={"pooler_sampling_ratio": 0})
    assert "torchvision.roi_align.default" in {op for op, _ in first.ops}
    for trace in (first, *others):
        assert trace.flagged_counts() == {} and trace.ops == first.ops


@pytest.mark.parametrize("traces", [training_traces, inference_traces])
def test_dynamic_mode_shapes_follow_the_data(traces):
    # The recorder sees the difference the static mode removes.
    first, *others = traces(static=False)
    assert all(other.ops != first.ops for other in others)
    assert first.flagged_counts()  # the dynamic mode reads values back: NMS, the sampling, the checks


def test_a_model_given_the_images_prepares_their_host_batch_itself():
    images, targets = batch((2, 1), seed=5, sizes=((64, 80), (50, 64)))
    model = tiny_model(True, input=VARIED_INPUT).train()
    torch.manual_seed(1)
    given_images = model(images, targets)
    torch.manual_seed(1)
    given_batch = model(model.transform.host_batch(images, targets))
    torch.testing.assert_close(given_batch, given_images, rtol=0, atol=0)


def test_the_host_batch_resizes_into_the_canvas_and_names_what_it_refuses():
    model = tiny_model(True, input=VARIED_INPUT).eval()
    images, targets = batch((1, 2), seed=6, sizes=((40, 90), (80, 70)))
    host = model.transform.host_batch(images, targets)
    assert host.canvas.shape == (2, 3, 64, 64)
    # test time: short side 40, capped by max_size 64 on the long side (detectron2's rounding)
    assert host.sizes.tolist() == [[28, 64], [46, 40]]
    assert host.original_sizes.tolist() == [[40, 90], [80, 70]]
    assert (host.canvas[0, :, 28:] == 0).all() and (host.canvas[1, :, :, 40:] == 0).all()
    assert [t["boxes"].shape for t in host.targets] == [(8, 4)] * 2
    targets[1]["boxes"][0, 2] = targets[1]["boxes"][0, 0]  # zero width
    with pytest.raises(ValueError, match=r"positive height and width.*target at index 1"):
        model.transform.host_batch(images, targets)
    small_canvas = tiny_model(True, input={**VARIED_INPUT, "fixed_size": [32, 32]}).eval()
    with pytest.raises(ValueError, match=r"resized image\(s\) \[\(32, 64\)\] exceed model.input.fixed_size"):
        small_canvas.transform.host_batch([torch.zeros(3, 50, 100, dtype=torch.uint8)])


# Sampling everything (batch sizes above the candidate counts, all positives allowed) leaves nothing random,
# so both modes see the same samples.
SAMPLE_ALL = {
    "rpn": {"batch_size_per_image": 4096, "positive_fraction": 1.0},
    "roi_heads": {"batch_size_per_image": 256, "positive_fraction": 1.0},
}


@pytest.mark.parametrize("counts", OBJECT_COUNTS)
def test_static_and_dynamic_losses_agree_when_sampling_takes_everything(counts):
    images, targets = batch(counts, seed=3)
    losses = [tiny_model(static, **SAMPLE_ALL).train()(images, targets) for static in (False, True)]
    # Only the summation order differs: masked sums over padded slots vs sums over selected rows.
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-7)


def test_static_and_dynamic_detections_agree():
    images, _ = batch((1, 3), seed=4)
    dynamic, static = (tiny_model(flag, **SAMPLE_ALL).eval() for flag in (False, True))
    with torch.no_grad():
        expected, got = dynamic(images), static(images)
        static.transform.padded_detections = True
        padded = static(images)
    for want, have, fixed in zip(expected, got, padded, strict=True):
        assert set(have) == {"boxes", "scores", "labels"}
        # 50 proposals × 2 classes: fewer candidates than detections_per_image
        assert fixed["boxes"].shape == (100, 4) and int(fixed["valid"].sum()) == len(want["boxes"])
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(have[key], want[key])
    assert len(expected[0]["boxes"]) != len(expected[1]["boxes"])  # the padding is stripped per image


def test_static_and_dynamic_agree_on_coco_category_rows():
    """predictor_rows coco_category_ids (91 rows; labels 1, 2 on rows 5, 44): both modes train the same
    losses and detect the same (every score kept), and only labels 1 and 2 come out, the valid slots first."""
    coco = {**SAMPLE_ALL["roi_heads"], "predictor_rows": "coco_category_ids", "score_thresh_test": 0.0}
    images, targets = batch((7, 3), seed=3)
    models = [tiny_model(static, **{**SAMPLE_ALL, "roi_heads": coco}) for static in (False, True)]
    for model in models:
        assert model.roi_heads.box_predictor.cls_score.out_features == 91
        model.roi_heads.label_rows.copy_(torch.tensor([0, 5, 44]))
    losses = [model.train()(images, targets) for model in models]
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        expected, got = (model.eval()(images) for model in models)
        models[1].transform.padded_detections = True
        padded = models[1](images)
    for want, have, fixed in zip(expected, got, padded, strict=True):
        assert len(want["labels"]) and set(want["labels"].tolist()) <= {1, 2}
        count = int(fixed["valid"].sum())
        assert count == len(want["boxes"]) and fixed["valid"][:count].all()
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(have[key], want[key])


def test_strip_padding_keeps_the_valid_prefix():
    detections = {
        "boxes": torch.arange(16.0).view(4, 4),
        "scores": torch.tensor([0.9, 0.5, 0.0, 0.0]),
        "labels": torch.tensor([2, 1, 1, 1]),
        "valid": torch.tensor([True, True, False, False]),
    }
    stripped = strip_padding(detections)
    assert set(stripped) == {"boxes", "scores", "labels"}
    assert stripped["labels"].tolist() == [2, 1] and stripped["boxes"].shape == (2, 4)


@pytest.mark.parametrize("low_quality", [True, False])
@pytest.mark.parametrize("num_gt", [1, 3])
def test_padded_matching_equals_torchvision_matcher(low_quality, num_gt):
    torch.manual_seed(num_gt)
    corners = torch.rand(40, 2) * 50
    proposals = torch.cat([corners, corners + 5 + torch.rand(40, 2) * 20], dim=1)
    gt = proposals[:num_gt] + torch.rand(num_gt, 4) * 4
    matcher = Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)
    expected = matcher(box_iou(gt, proposals))
    padded = pad_targets([{"boxes": gt, "labels": torch.ones(num_gt, dtype=torch.int64)}], 5)[0]
    got = match_padded(matcher, box_iou(padded["boxes"], proposals), padded["valid"])
    assert torch.equal(got, expected)


def test_padded_matching_without_gt_is_all_background():
    padded = pad_targets([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}], 4)[0]
    proposals = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 10.0, 10.0]])
    got = match_padded(Matcher(0.7, 0.3, True), box_iou(padded["boxes"], proposals), padded["valid"])
    assert (got == Matcher.BELOW_LOW_THRESHOLD).all()


@pytest.mark.parametrize(("num_positive", "num_negative"), [(100, 500), (3, 500), (3, 10), (0, 0)])
def test_fixed_sampling_counts_like_torchvision(num_positive, num_negative):
    labels = torch.cat(
        [
            torch.ones(num_positive, dtype=torch.int64),
            torch.zeros(num_negative, dtype=torch.int64),
            -torch.ones(50, dtype=torch.int64),
        ]
    )[torch.randperm(num_positive + num_negative + 50)]
    indices, sampled = sample_fixed(labels[None], 64, 0.25)
    assert indices.shape == sampled.shape == (1, 64)
    chosen = indices[sampled]
    assert len(set(chosen.tolist())) == len(chosen)  # no entry twice
    assert (labels[chosen] >= 0).all()  # ignored entries never sampled
    pos_mask, neg_mask = BalancedPositiveNegativeSampler(64, 0.25)([labels])
    assert int((labels[chosen] == 1).sum()) == int(pos_mask[0].sum())
    assert int((labels[chosen] == 0).sum()) == int(neg_mask[0].sum())


def test_fixed_sampling_is_uniform_over_the_positives():
    labels = torch.tensor([1] * 8 + [0] * 100)[None]
    torch.manual_seed(0)
    picked = torch.zeros(8)
    for _ in range(400):
        indices, sampled = sample_fixed(labels, 8, 0.25)  # 2 of the 8 positives each time
        chosen = indices[sampled]
        picked += torch.bincount(chosen[chosen < 8], minlength=8)
    assert picked.sum() == 800 and picked.min() > 60  # 100 expected for each


@pytest.mark.parametrize("aligned", [True, False])
def test_static_pooler_equals_the_dynamic_one(aligned):
    torch.manual_seed(0)
    strides = (4, 8, 16, 32)
    features = {str(level): torch.randn(2, 4, 64 // s, 64 // s) for level, s in enumerate(strides)}
    corners = torch.rand(2, 30, 2) * 40
    boxes = list(torch.cat([corners, corners + 1 + torch.rand(2, 30, 2) * 200], dim=-1))
    poolers = [LevelRoIAlign("0123", strides, 7, 0, aligned=aligned, static_shapes=s) for s in (False, True)]
    dynamic, static = (pooler(features, boxes, [(64, 64)] * 2) for pooler in poolers)
    assert torch.equal(static, dynamic)


def test_too_many_gt_boxes_is_a_clear_error():
    target = {"boxes": torch.rand(3, 4), "labels": torch.ones(3, dtype=torch.int64)}
    target["image_id"] = torch.tensor(42)
    with pytest.raises(ValueError, match=r"image_id 42 has 3 ground-truth boxes.*max_gt_boxes = 2"):
        pad_targets([target], 2)
    message = r"1 training image\(s\).*max_gt_boxes = 2 \(image_id 7: 5\).*at least 5"
    with pytest.raises(ValueError, match=message):
        check_gt_box_counts({3: 2, 7: 5}, 2)
    check_gt_box_counts({3: 2}, 2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"static_shapes": {"enabled": True}},
            r"model.static_shapes.enabled is true but model.input.fixed_size is null",
        ),
        (
            {"static_shapes": {"enabled": True, "max_gt_boxes": 0}, "input": {"fixed_size": [64, 64]}},
            r"model.static_shapes.max_gt_boxes: 0 must be >= 1",
        ),
        (
            {
                "static_shapes": {"enabled": True, "detection_candidates": 50},
                "input": {"fixed_size": [64, 64]},
            },
            r"detection_candidates = 50 is below model.roi_heads.detections_per_image = 100",
        ),
    ],
)
def test_bad_static_config_is_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_model(model_params(overrides), num_classes=2)
