"""detectron2's arithmetic, option by option (issue #26, points 1-8).

For each option: its two settings give different numbers, and the detectron2 setting gives exactly what
detectron2's own code computes. The references below are detectron2's code (facebookresearch/detectron2 at
02b5c4e2), rewritten on plain tensors with the file and lines they come from.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_configs import model_params
from PIL import Image
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops import boxes as box_ops

from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.modeling.backbone import DetectronFrozenBatchNorm2d
from frcnn_pipeline.modeling.pooler import LevelRoIAlign
from frcnn_pipeline.modeling.roi_heads import class_probabilities
from frcnn_pipeline.modeling.transform import resize_as_detectron2

NUM_CLASSES = 80
SMALL = {
    "backbone": {"depth": 18, "fpn_channels": 16},
    "roi_heads": {"fc_dim": 32},
}


def _model(section: str = "", **options) -> torch.nn.Module:
    config = {key: dict(value) for key, value in SMALL.items()}
    if options:
        config.setdefault(section, {}).update(options)
    return build_model(model_params(config), num_classes=NUM_CLASSES).eval()


def _photo(height: int, width: int) -> np.ndarray:
    """A photo-like uint8 RGB image: smooth shading, sharp-edged shapes, fine grain."""
    generator = np.random.default_rng(7)
    rows, columns = np.mgrid[0:height, 0:width]
    image = np.stack([rows / height * 180, columns / width * 200, (rows + columns) % 97 * 2.0], axis=-1)
    for _ in range(12):
        top, left = generator.integers(0, height - 10), generator.integers(0, width - 10)
        image[top : top + generator.integers(5, 60), left : left + generator.integers(5, 80)] = (
            generator.integers(0, 256, 3)
        )
    image += generator.normal(0, 6, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ 1. resize


def detectron2_resize(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """data/transforms/transform.py:117-123 (ResizeTransform.apply_image, uint8): PIL bilinear."""
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


@pytest.mark.parametrize("size", [(240, 320), (450, 600)], ids=["shrink 0.8", "enlarge 1.5"])
def test_uint8_resize_is_pils_bilinear_bit_for_bit(size):
    photo = _photo(300, 400)
    ours = resize_as_detectron2(torch.from_numpy(photo).permute(2, 0, 1), size)
    assert ours.dtype == torch.uint8
    np.testing.assert_array_equal(ours.permute(1, 2, 0).numpy(), detectron2_resize(photo, *size))


def test_float_images_resize_as_detectron2_does_them():
    # transform.py:126-143: non-uint8 images go through F.interpolate(bilinear, align_corners=False)
    image = torch.rand(3, 30, 40) * 255
    expected = F.interpolate(image[None], (24, 32), mode="bilinear", align_corners=False)[0]
    assert torch.equal(resize_as_detectron2(image, (24, 32)), expected)


def test_resize_interpolation_detectron2_resizes_before_normalising():
    # meta_arch/rcnn.py:228: (x - pixel_mean) / pixel_std on the image the data loader resized
    photo = _photo(300, 400)  # 300 -> 240 on the short side: a shrink, antialiased by PIL
    image = torch.from_numpy(photo).permute(2, 0, 1).contiguous()
    batches = {}
    for setting in ("detectron2", "torchvision"):
        model = _model("input", resize_interpolation=setting, min_size_test=240, max_size=1333)
        batches[setting] = model.transform([image])[0].tensors[0, :, :240, :320]
    bgr = torch.from_numpy(detectron2_resize(photo, 240, 320)[:, :, ::-1].copy()).permute(2, 0, 1).float()
    expected = (bgr - torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1)) / 1.0
    assert torch.equal(batches["detectron2"], expected)
    # torchvision: the normalised float image interpolated, no antialiasing: grey levels apart on a shrink
    assert (batches["torchvision"] - expected).abs().max() > 20


def test_static_shapes_resize_the_same_way():
    photo = torch.from_numpy(_photo(300, 400)).permute(2, 0, 1).contiguous()
    config = {
        **SMALL,
        "input": {"min_size_test": 240, "fixed_size": [256, 320]},
        "static_shapes": {"enabled": True},
    }
    static = build_model(model_params(config), num_classes=NUM_CLASSES).eval()
    canvas = static.transform.host_batch([photo]).canvas[0, :, :240, :320]
    expected = detectron2_resize(photo.permute(1, 2, 0).numpy(), 240, 320)
    expected = torch.from_numpy(expected.copy()).permute(2, 0, 1)
    assert torch.equal(canvas, expected.float())


# --------------------------------------------------------------------------------------- 2. FrozenBN


def _frozen_norm(norm_class: type[FrozenBatchNorm2d]) -> FrozenBatchNorm2d:
    generator = torch.Generator().manual_seed(3)
    norm = norm_class(64)
    for name, (low, high) in {
        "weight": (0.5, 1.5),
        "bias": (-0.2, 0.2),
        "running_mean": (-0.2, 0.2),
        "running_var": (0.5, 2.0),
    }.items():
        getattr(norm, name).copy_(torch.rand(64, generator=generator) * (high - low) + low)
    return norm


def test_frozen_bn_arithmetic_is_detectron2s():
    x = torch.randn(2, 64, 16, 16, generator=torch.Generator().manual_seed(4)) * 5
    ours, torchvisions = _frozen_norm(DetectronFrozenBatchNorm2d), _frozen_norm(FrozenBatchNorm2d)
    # layers/batch_norm.py:58-66: no gradient -> F.batch_norm(x, mean, var, weight, bias, False, eps=eps)
    fused = F.batch_norm(
        x, ours.running_mean, ours.running_var, ours.weight, ours.bias, training=False, eps=ours.eps
    )
    assert torch.equal(ours(x), fused)
    # layers/batch_norm.py:49-54: a gradient -> x * scale + bias, as torchvision always does
    scale = ours.weight * (ours.running_var + ours.eps).rsqrt()
    bias = ours.bias - ours.running_mean * scale
    x_grad = x.clone().requires_grad_()
    assert torch.equal(ours(x_grad), x_grad * scale.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1))
    assert not torch.equal(torchvisions(x), fused)
    torch.testing.assert_close(torchvisions(x), fused, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("setting", "norm_class"),
    [("detectron2", DetectronFrozenBatchNorm2d), ("torchvision", FrozenBatchNorm2d)],
)
def test_frozen_bn_arithmetic_picks_the_norm(setting, norm_class):
    body = _model("backbone", frozen_bn_arithmetic=setting).backbone.body
    assert type(body.bn1) is norm_class and type(body.layer3[0].bn1) is norm_class
    bn_body = _model("backbone", frozen_bn_arithmetic=setting, norm="bn", freeze_at=2).backbone.body
    assert type(bn_body.layer1[0].bn1) is norm_class  # stages frozen from BatchNorm2d too


# ------------------------------------------------------------------------- 3 and 6. RPN ranking, sizes


def detectron2_rpn_proposals(proposals, logits, counts, image_size):
    """proposal_generator/proposal_utils.py:72-129 (find_top_rpn_proposals) for one image: the top 1000
    logits per level, clip, MIN_SIZE 0 (config/defaults.py:167), NMS 0.7 per level on the logits, top 1000."""
    boxes, scores, levels = [], [], []
    per_level = zip(proposals.split(counts), logits.split(counts), strict=True)
    for level, (level_boxes, level_logits) in enumerate(per_level):
        top_scores, index = level_logits.topk(min(1000, len(level_logits)))
        boxes.append(level_boxes[index])
        scores.append(top_scores)
        levels.append(torch.full((len(index),), level))
    boxes = box_ops.clip_boxes_to_image(torch.cat(boxes), image_size)  # Boxes.clip: clamp to [0, w], [0, h]
    scores, levels = torch.cat(scores), torch.cat(levels)
    keep = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)  # Boxes.nonempty(0.0)
    boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
    return boxes[box_ops.batched_nms(boxes, scores, levels, 0.7)[:1000]]


def _rpn_case():
    """Proposals of two levels: on the first a box of logit 20, on the second one of logit 30 (both have a
    float32 sigmoid of exactly 1.0), a box 5e-4 px wide, an empty box; ordinary ones on both."""
    generator = torch.Generator().manual_seed(5)
    corners = torch.rand(60, 2, generator=generator) * 150
    others = torch.cat([corners, corners + 5 + torch.rand(60, 2, generator=generator) * 40], dim=1)
    first = torch.tensor([[10.0, 10.0, 60.0, 60.0], [80.0, 80.0, 80.0005, 120.0], [90, 5, 90, 30]])
    second = torch.tensor([[100.0, 100.0, 190.0, 190.0]])
    proposals = torch.cat([first, others[:30], second, others[30:]])
    logits = torch.randn(len(proposals), generator=generator)
    logits[[0, 1, 2, 33]] = torch.tensor([20.0, 5.0, 4.0, 30.0])
    return proposals, logits, [33, 31]


@pytest.mark.parametrize("option", ["rank_on", "small_boxes"])
def test_rpn_proposals_are_detectron2s_and_each_torchvision_setting_changes_them(option):
    proposals, logits, counts = _rpn_case()
    torchvision_value = {"rank_on": "probabilities", "small_boxes": "torchvision"}[option]
    results = {}
    for name, options in (("detectron2", {}), ("torchvision", {option: torchvision_value})):
        rpn = _model("rpn", **options).rpn
        boxes, _ = rpn.filter_proposals(proposals[None], logits[:, None], [(200, 200)], counts)
        results[name] = boxes[0]
    expected = detectron2_rpn_proposals(proposals, logits, counts, (200, 200))
    assert torch.equal(results["detectron2"], expected)
    assert not torch.equal(results["torchvision"], expected)
    if option == "rank_on":  # the tie at 1.0 ranks the first level's box first, not the higher logit
        assert results["torchvision"][0].tolist() == [10.0, 10.0, 60.0, 60.0]
        assert expected[0].tolist() == [100.0, 100.0, 190.0, 190.0]
    else:  # the 5e-4 px box: > 0 for detectron2, under torchvision's 1e-3
        assert len(expected) == len(results["torchvision"]) + 1


# --------------------------------------------------- 4, 5, 6 and 7. box head and rescaled detections


def detectron2_detections(class_logits, proposals, image_size, original_size):
    """What detectron2 returns for one image from the box predictor's outputs (zero box deltas), in
    torchvision's class layout (background at 0: our converter moves detectron2's last row first):

    - roi_heads/fast_rcnn.py:568, predict_probs: softmax over [classes, background];
    - fast_rcnn.py:142-171, fast_rcnn_inference_single_image: clip, score > 0.05, batched NMS with the
      0-based class ids filter_inds[:, 1], top 100;
    - postprocessing.py:41-58, detector_postprocess: scale by output / input size, clip, drop empty boxes.
    """
    probabilities = F.softmax(torch.cat([class_logits[:, 1:], class_logits[:, :1]], dim=1), dim=-1)
    scores = probabilities[:, :-1]
    boxes = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode(torch.zeros(len(proposals), 4 * 81), [proposals])
    boxes = box_ops.clip_boxes_to_image(boxes[:, 1:].reshape(-1, 4), image_size).view(-1, NUM_CLASSES, 4)
    filter_mask = scores > 0.05
    filter_inds = filter_mask.nonzero()
    boxes, scores = boxes[filter_mask], scores[filter_mask]
    keep = box_ops.batched_nms(boxes, scores, filter_inds[:, 1], 0.5)[:100]
    boxes, scores, classes = boxes[keep], scores[keep], filter_inds[keep, 1]
    boxes[:, 0::2] *= original_size[1] / image_size[1]
    boxes[:, 1::2] *= original_size[0] / image_size[0]
    boxes = box_ops.clip_boxes_to_image(boxes, original_size)
    keep = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": classes[keep] + 1}


def _box_head_case():
    """Proposals in an 800 x 1067 image resized from 480 x 640 (y ratio 0.6: 800 * 0.6f = 480.00003):
    pairs at IoU 0.5 in reals, a box 5e-3 px tall, boxes on the bottom edge, one below the image."""
    generator = torch.Generator().manual_seed(6)
    pairs, labels = [], []
    for pair in range(40):
        x1, y1 = (torch.rand(2, generator=generator) * 700).tolist()
        w, h = (torch.rand(2, generator=generator) * 300 + 5).tolist()
        pairs += [[x1, y1, x1 + w, y1 + h], [x1, y1, x1 + w, y1 + h / 2]]
        labels += [1 + pair % 2 * 79] * 2  # classes 1 and 80: the offsets torchvision's NMS adds
    special = [[300, 300, 400, 300.005], [100, 700, 300, 800], [500, 650, 700, 800], [600, 810, 700, 900]]
    proposals = torch.tensor(pairs + special)
    labels = torch.tensor([*labels, 5, 6, 7, 8])
    class_logits = torch.randn(len(proposals), NUM_CLASSES + 1, generator=generator)
    class_logits[torch.arange(len(proposals)), labels] += 6.0
    return class_logits, proposals


@pytest.mark.parametrize(
    ("option", "torchvision_value"),
    [
        ("softmax_background", "first"),
        ("nms_class_ids", "from_one"),
        ("small_boxes", "torchvision"),
        ("clip_after_rescale", False),
    ],
)
def test_detections_are_detectron2s_and_each_torchvision_setting_changes_them(option, torchvision_value):
    class_logits, proposals = _box_head_case()
    image_size, original_size = (800, 1067), (480, 640)
    expected = detectron2_detections(class_logits, proposals, image_size, original_size)
    results = {}
    for name, options in (("detectron2", {}), ("torchvision", {option: torchvision_value})):
        model = _model("roi_heads", **options)
        deltas = torch.zeros(len(proposals), 4 * (NUM_CLASSES + 1))
        boxes, scores, labels = model.roi_heads.postprocess_detections(
            class_logits, deltas, [proposals], [image_size]
        )
        detections = [{"boxes": boxes[0], "scores": scores[0], "labels": labels[0]}]
        results[name] = model.transform.postprocess(detections, [image_size], [original_size])[0]
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(results["detectron2"][key], expected[key]), key
    assert any(not torch.equal(results["torchvision"][key], expected[key]) for key in expected)
    if option == "clip_after_rescale":
        assert results["torchvision"]["boxes"][:, 3].max() > 480
        assert expected["boxes"][:, 3].max() == 480


def test_class_probabilities_differ_by_float_rounding_only():
    logits = torch.randn(500, 81, generator=torch.Generator().manual_seed(8)) * 4
    last, first = class_probabilities(logits, "last"), class_probabilities(logits, "first")
    assert not torch.equal(last, first)
    torch.testing.assert_close(last, first, rtol=3e-7, atol=1e-9)


def test_static_shapes_rescale_clip_and_drop_empty_detections_like_the_dynamic_model():
    config = {**SMALL, "input": {"fixed_size": [1344, 1344]}, "static_shapes": {"enabled": True}}
    static = build_model(model_params(config), num_classes=NUM_CLASSES).eval()
    boxes = torch.tensor([[0.0, 0.0, 1067.0, 800.0], [10.0, 800.0, 50.0, 800.0], [5.0, 5.0, 9.0, 9.0]])
    padded = {
        "boxes": torch.cat([boxes, torch.zeros(1, 4)]),
        "scores": torch.tensor([0.9, 0.8, 0.7, 0.0]),
        "labels": torch.tensor([1, 2, 3, 0]),
        "valid": torch.tensor([True, True, True, False]),
    }
    size, original = (torch.tensor(800), torch.tensor(1067)), (torch.tensor(480), torch.tensor(640))
    (result,) = static.transform.postprocess([padded], [size], [original])
    assert result["labels"].tolist() == [1, 3]  # the empty box dropped, the rest in order
    assert result["boxes"][0].tolist() == [0.0, 0.0, 640.0, 480.0]


# ---------------------------------------------------------------------------- 8. RoI level assignment


def detectron2_levels(boxes: torch.Tensor) -> torch.Tensor:
    """modeling/poolers.py:51-59 (assign_boxes_to_levels) with P2-P5, canonical 224 px at level 4."""
    box_sizes = torch.sqrt(box_ops.box_area(boxes))
    level_assignments = torch.floor(4 + torch.log2(box_sizes / 224 + 1e-8))
    return torch.clamp(level_assignments, min=2, max=5).to(torch.int64) - 2


def test_pooler_level_rule():
    sides = torch.tensor([112.0, 224.0, 448.0])
    near = torch.cat([sides * (1 - 1e-7), sides * (1 - 1e-6), sides, sides * (1 + 1e-7)])
    generator = torch.Generator().manual_seed(9)
    sides = torch.cat([near, torch.rand(200, generator=generator) * 800 + 1])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], dim=1)
    levels = {
        rule: LevelRoIAlign("0123", [4, 8, 16, 32], 7, 0, aligned=True, level_rule=rule).map_levels([boxes])
        for rule in ("detectron2", "torchvision")
    }
    assert torch.equal(levels["detectron2"], detectron2_levels(boxes))
    differ = levels["detectron2"] != levels["torchvision"]
    assert differ.any() and (levels["torchvision"][differ] == levels["detectron2"][differ] + 1).all()
