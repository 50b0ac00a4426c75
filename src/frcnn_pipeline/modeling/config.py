"""The `model:` parameter section: detectron2's Faster R-CNN R-50-FPN values as code defaults.

`conf/base/parameters_model.yml` overrides them with the small CPU demo configuration and the
npu/gpu environments restore the detectron2 values; any section given here may be partial.
"""

import copy
from pathlib import Path
from typing import Any

import yaml

# Keep in step with the parameter reference in docs (the lead's README) and conf/*/parameters_model.yml.
_DETECTRON2_R50_FPN: dict[str, Any] = {
    "backbone": {
        "depth": 50,  # ResNet depth: 18 | 34 | 50 | 101
        "norm": "frozen_bn",  # frozen_bn | bn | gn (GroupNorm, 32 groups)
        "freeze_at": 2,  # 0: train all, 1: freeze stem, 2: stem + res2, ... 5: all four stages
        "stride_in_1x1": True,  # MSRA/Caffe2 weights: stride-2 on the 1x1 conv (torchvision: on the 3x3)
        "fpn_channels": 256,
    },
    "input": {
        "format": "BGR",  # channel order the first conv expects; inputs are always RGB 0-255
        "pixel_mean": [103.53, 116.28, 123.675],  # in `format` order, 0-255 scale
        "pixel_std": [1.0, 1.0, 1.0],
        "min_size_train": [640, 672, 704, 736, 768, 800],  # one drawn per image
        "min_size_test": 800,
        "max_size": 1333,
        "resize_rounding": "detectron2",  # detectron2: int(x + 0.5) | torchvision: floor
        "size_divisibility": 32,
        "fixed_size": None,  # [H, W]: pad every batch to this (static shapes, e.g. [1344, 1344] on NPU)
    },
    "anchors": {
        "sizes": [32, 64, 128, 256, 512],  # one per level P2..P6
        "aspect_ratios": [0.5, 1.0, 2.0],  # height / width
        "round": False,  # torchvision rounds cell anchors to integers, detectron2 does not
    },
    "rpn": {
        "iou_thresholds": [0.3, 0.7],  # below: background, above: foreground
        "batch_size_per_image": 256,
        "positive_fraction": 0.5,
        "pre_nms_topk_train": 2000,  # per level
        "post_nms_topk_train": 1000,  # per image
        "pre_nms_topk_test": 1000,
        "post_nms_topk_test": 1000,
        "nms_thresh": 0.7,
        "smooth_l1_beta": 0.0,  # 0 is L1 (detectron2); torchvision uses 1/9
    },
    "roi_heads": {
        "batch_size_per_image": 512,
        "positive_fraction": 0.25,
        "iou_threshold": 0.5,
        "pooler_resolution": 7,
        "pooler_sampling_ratio": 0,
        "pooler_aligned": True,  # detectron2 ROIAlignV2 (half-pixel shift); torchvision: false
        "fc_dim": 1024,
        "bbox_reg_weights": [10.0, 10.0, 5.0, 5.0],
        "smooth_l1_beta": 0.0,
        "label_smoothing": 0.0,  # on the box classifier's cross-entropy (the NPU card trains with 0.1)
        "score_thresh_test": 0.05,
        "nms_thresh_test": 0.5,
        "detections_per_image": 100,
    },
    # No tensor shape depends on the data (object counts, scores, box sizes): for Ascend, which compiles
    # every new shape, and torch.compile. Needs input.fixed_size. The npu envs turn it on.
    "static_shapes": {
        "enabled": False,
        "max_gt_boxes": 100,  # ground truth padded to this per image; an image with more is an error
        "detection_candidates": 2000,  # test: best (box, class) pairs per image entering NMS
    },
}

_CHOICES = {
    ("backbone", "depth"): (18, 34, 50, 101),
    ("backbone", "norm"): ("frozen_bn", "bn", "gn"),
    ("backbone", "freeze_at"): (0, 1, 2, 3, 4, 5),
    ("input", "format"): ("BGR", "RGB"),
    ("input", "resize_rounding"): ("detectron2", "torchvision"),
}


def default_model_config() -> dict[str, Any]:
    """detectron2's COCO Faster R-CNN R-50-FPN configuration, as a fresh nested dict."""
    return copy.deepcopy(_DETECTRON2_R50_FPN)


def resolve_model_config(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Merge a (possibly partial) `model:` section onto the defaults and validate it.

    Raises:
        ValueError: on an unknown section or key, or a value outside its choices.
    """
    config = default_model_config()
    for section, values in (overrides or {}).items():
        if section not in config:
            raise ValueError(f"model: unknown section {section!r}; expected one of {sorted(config)}")
        if not isinstance(values, dict):
            raise ValueError(f"model.{section} must be a mapping, got {values!r}")
        unknown = sorted(set(values) - set(config[section]))
        if unknown:
            raise ValueError(
                f"model.{section}: unknown key(s) {unknown}; expected keys: {sorted(config[section])}"
            )
        config[section].update(copy.deepcopy(values))
    if isinstance(config["input"]["min_size_train"], int):  # `min_size_train: 800` in YAML
        config["input"]["min_size_train"] = [config["input"]["min_size_train"]]
    for (section, key), choices in _CHOICES.items():
        if config[section][key] not in choices:
            raise ValueError(f"model.{section}.{key} = {config[section][key]!r}; choose one of {choices}")
    _check_static_shapes(config)
    if len(config["anchors"]["sizes"]) != 5:
        raise ValueError(
            f"model.anchors.sizes needs one size per level P2..P6, got {config['anchors']['sizes']}"
        )
    return config


def _check_static_shapes(config: dict[str, Any]) -> None:
    static = config["static_shapes"]
    if not static["enabled"]:
        return
    if not config["input"]["fixed_size"]:
        raise ValueError(
            "model.static_shapes.enabled is true but model.input.fixed_size is null: set "
            "model.input.fixed_size: [H, W] (at least max_size rounded up to size_divisibility, e.g. "
            "[1344, 1344] for max_size 1333), or model.static_shapes.enabled: false"
        )
    for key in ("max_gt_boxes", "detection_candidates"):
        if not isinstance(static[key], int) or static[key] < 1:
            raise ValueError(f"model.static_shapes.{key} must be a positive integer, got {static[key]!r}")
    if static["detection_candidates"] < config["roi_heads"]["detections_per_image"]:
        raise ValueError(
            f"model.static_shapes.detection_candidates = {static['detection_candidates']} is below "
            f"model.roi_heads.detections_per_image = {config['roi_heads']['detections_per_image']} "
            "(evaluate/predict's detections_per_image sets it at test time): raise detection_candidates"
        )


def read_model_config(parameters_file: str | Path) -> dict[str, Any]:
    """The resolved `model:` section of a Kedro parameters file, for use without Kedro (tests, notebooks)."""
    with open(parameters_file, encoding="utf-8") as stream:
        parameters = yaml.safe_load(stream) or {}
    if "model" not in parameters:
        raise ValueError(f"{parameters_file}: no `model:` section")
    return resolve_model_config(parameters["model"])
