"""The static-shape mode: every op's output shape is the same whatever the data, and the numbers match the
dynamic mode's where both see the same samples."""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher
from torchvision.ops import box_iou

from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.modeling import roi_heads as roi_heads_module
from frcnn_pipeline.modeling import rpn as rpn_module
from frcnn_pipeline.modeling.pooler import LevelRoIAlign
from frcnn_pipeline.modeling.static import (
    check_gt_box_counts,
    match_padded,
    pad_targets,
    sample_fixed,
    strip_padding,
)

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
    "roi_heads": {"batch_size_per_image": 32, "fc_dim": 32, "detections_per_image": 300},
}
STATIC = {"enabled": True, "max_gt_boxes": 8, "detection_candidates": 300}
# Objects per image in three batches of two images: none, one, many.
OBJECT_COUNTS = ((0, 0), (1, 1), (7, 3))


def tiny_model(static: bool, **overrides) -> torch.nn.Module:
    config = copy.deepcopy(TINY)
    for section, values in overrides.items():
        config[section].update(values)
    if static:
        config["static_shapes"] = STATIC
    torch.manual_seed(0)
    return build_model(config, num_classes=2)


def batch(counts: tuple[int, ...], seed: int):
    """64×64 images with `count` coloured rectangles each, and their targets."""
    generator = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for count in counts:
        image = torch.randint(0, 60, (3, 64, 64), dtype=torch.uint8, generator=generator)
        corners = torch.randint(0, 40, (count, 2), generator=generator).float()
        sides = torch.randint(10, 24, (count, 2), generator=generator).float()
        boxes = torch.cat([corners, (corners + sides).clamp(max=64)], dim=1)
        labels = torch.randint(1, 3, (count,), generator=generator)
        for (x1, y1, x2, y2), label in zip(boxes.int().tolist(), labels.tolist(), strict=True):
            image[label, y1:y2, x1:x2] = 220
        images.append(image)
        targets.append({"boxes": boxes, "labels": labels})
    return images, targets


class ShapeRecorder(TorchDispatchMode):
    """Records (op, output shapes) of every op dispatched.

    `nms_keep_mask` is recorded as one op: it iterates to a fixed point, so its number of rounds depends on
    the boxes (its shapes do not: they are collected as a set, `nms_ops`).
    """

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, list[tuple[int, ...]]]] = []
        self.nms_ops: set[tuple[str, tuple[tuple[int, ...], ...]]] = set()
        self.inside_nms = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shapes = [tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if self.inside_nms:
            self.nms_ops.add((str(func), tuple(shapes)))
        else:
            self.ops.append((str(func), shapes))
        return out

    def opaque_nms(self, nms_keep_mask):
        def recorded(boxes, scores, iou_threshold, idxs=None, valid=None):
            self.inside_nms = True
            try:
                keep = nms_keep_mask(boxes, scores, iou_threshold, idxs=idxs, valid=valid)
            finally:
                self.inside_nms = False
            self.ops.append(("nms_keep_mask", [tuple(boxes.shape), tuple(keep.shape)]))
            return keep

        return recorded


def record(monkeypatch, step) -> ShapeRecorder:
    recorder = ShapeRecorder()
    for module in (rpn_module, roi_heads_module):
        monkeypatch.setattr(module, "nms_keep_mask", recorder.opaque_nms(module.nms_keep_mask))
    with recorder:
        step()
    monkeypatch.undo()
    return recorder


def training_step_records(monkeypatch, static: bool) -> list[ShapeRecorder]:
    model = tiny_model(static).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step(images, targets):
        optimizer.zero_grad()
        losses = model(images, targets)
        sum(losses.values()).backward()
        optimizer.step()

    batches = [batch(counts, seed) for seed, counts in enumerate(OBJECT_COUNTS)]
    return [record(monkeypatch, lambda b=b: step(*b)) for b in batches]


def inference_records(monkeypatch, static: bool) -> list[ShapeRecorder]:
    model = tiny_model(static).eval()
    model.transform.padded_detections = True  # the one dynamic step, stripping the padding, comes after

    def forward(images):
        with torch.no_grad():
            model(images)

    batches = [batch(counts, seed) for seed, counts in enumerate(OBJECT_COUNTS)]
    return [record(monkeypatch, lambda images=images: forward(images)) for images, _ in batches]


@pytest.mark.parametrize("records", [training_step_records, inference_records])
def test_static_mode_runs_the_same_ops_on_the_same_shapes_whatever_the_data(monkeypatch, records):
    first, *others = records(monkeypatch, static=True)
    assert len(first.ops) > 200 and any(op == "nms_keep_mask" for op, _ in first.ops)
    for other in others:
        assert other.ops == first.ops
        assert other.nms_ops == first.nms_ops


@pytest.mark.parametrize("records", [training_step_records, inference_records])
def test_dynamic_mode_shapes_follow_the_data(monkeypatch, records):
    # The recorder sees the difference the static mode removes.
    first, *others = records(monkeypatch, static=False)
    assert all(other.ops != first.ops for other in others)


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
        build_model(overrides, num_classes=2)
