"""Checkpoint key -> model key, by explicit rules per source layout (not detectron2's suffix matching), so
that every key is accounted for: mapped, or expected to be left out with the reason why."""

import re
from collections.abc import Callable
from dataclasses import dataclass

BACKBONE_PREFIX = "backbone.body."


@dataclass(frozen=True)
class Target:
    """Where a checkpoint key goes. `key` None: expected to be left out (`why` says why)."""

    key: str | None
    why: str = ""
    transform: str = ""  # "fold_bn" | "zero_bias" | "bg_first" | "bg_rows" | ""


_BN_SUFFIXES = {
    "s": "weight",
    "b": "bias",
    "gamma": "weight",
    "beta": "bias",
    "rm": "running_mean",
    "running_mean": "running_mean",
    "riv": "running_var",
    "running_var": "running_var",
}
_C2_BRANCHES = {
    "1": ("downsample.0", "downsample.1"),
    "2a": ("conv1", "bn1"),
    "2b": ("conv2", "bn2"),
    "2c": ("conv3", "bn3"),
}
_C2_BLOCK = re.compile(r"^res(\d)_(\d+)_branch(1|2a|2b|2c)_(w|b|bn_\w+)$")
_C2_STEM_BN = re.compile(r"^res_conv1_bn_(\w+)$")
_UNUSED_CLASSIFIER = Target(None, "ImageNet classifier, not part of a detector")
_UNUSED_STEM_BIAS = Target(None, "the stem conv has no bias (detectron2 ignores it too)")
_C2_FIXED = {
    "conv1_w": Target(BACKBONE_PREFIX + "conv1.weight"),
    "conv1_b": _UNUSED_STEM_BIAS,
    "fc1000_w": _UNUSED_CLASSIFIER,
    "fc1000_b": _UNUSED_CLASSIFIER,
}


def _norm_target(norm: str, kind: str) -> Target | None:
    suffix = _BN_SUFFIXES.get(kind)
    if suffix is None:
        return None
    return Target(f"{norm}.{suffix}", transform="fold_bn" if kind in {"s", "b"} else "")


def caffe2_target(name: str) -> Target | None:
    """MSRA/Detectron blob name -> model key (torchvision naming), following detectron2's renaming rules."""
    if name in _C2_FIXED:
        return _C2_FIXED[name]
    if match := _C2_STEM_BN.match(name):
        return _norm_target(BACKBONE_PREFIX + "bn1", match[1])
    match = _C2_BLOCK.match(name)
    if match is None:
        return None
    stage, block, branch, kind = match.groups()
    conv, norm = _C2_BRANCHES[branch]
    prefix = f"{BACKBONE_PREFIX}layer{int(stage) - 1}.{block}."
    if kind == "w":
        return Target(prefix + conv + ".weight")
    if kind == "b":
        return Target(None, "zero conv bias added by Detectron's add_missing_biases", "zero_bias")
    return _norm_target(prefix + norm, kind.removeprefix("bn_"))


# (pattern, template, transform); in templates {S} is the torchvision layer of detectron2's stage resS
# and {L} the FPN block index of level PL. Backbone rules see the name without "backbone.bottom_up.".
_D2_BACKBONE_RULES = [
    (r"^stem\.conv1\.norm\.(\w+)$", r"bn1.\1"),
    (r"^stem\.conv1\.weight$", "conv1.weight"),
    (r"^res(\d)\.(\d+)\.conv(\d)\.norm\.(\w+)$", r"layer{S}.\2.bn\3.\4"),
    (r"^res(\d)\.(\d+)\.conv(\d)\.weight$", r"layer{S}.\2.conv\3.weight"),
    (r"^res(\d)\.(\d+)\.shortcut\.norm\.(\w+)$", r"layer{S}.\2.downsample.1.\3"),
    (r"^res(\d)\.(\d+)\.shortcut\.weight$", r"layer{S}.\2.downsample.0.weight"),
]
_D2_HEAD_RULES = [
    (r"^backbone\.fpn_lateral(\d)\.(weight|bias)$", r"backbone.fpn.inner_blocks.{L}.0.\2", ""),
    (r"^backbone\.fpn_output(\d)\.(weight|bias)$", r"backbone.fpn.layer_blocks.{L}.0.\2", ""),
    (r"^proposal_generator\.rpn_head\.conv\.(weight|bias)$", r"rpn.head.conv.0.0.\1", ""),
    (r"^proposal_generator\.rpn_head\.objectness_logits\.(weight|bias)$", r"rpn.head.cls_logits.\1", ""),
    (r"^proposal_generator\.rpn_head\.anchor_deltas\.(weight|bias)$", r"rpn.head.bbox_pred.\1", ""),
    (r"^roi_heads\.box_head\.fc1\.(weight|bias)$", r"roi_heads.box_head.fc6.\1", ""),
    (r"^roi_heads\.box_head\.fc2\.(weight|bias)$", r"roi_heads.box_head.fc7.\1", ""),
    (
        r"^roi_heads\.box_predictor\.cls_score\.(weight|bias)$",
        r"roi_heads.box_predictor.cls_score.\1",
        "bg_first",
    ),
    (
        r"^roi_heads\.box_predictor\.bbox_pred\.(weight|bias)$",
        r"roi_heads.box_predictor.bbox_pred.\1",
        "bg_rows",
    ),
]
_D2_FIXED = {
    "fc1000.weight": _UNUSED_CLASSIFIER,
    "fc1000.bias": _UNUSED_CLASSIFIER,
    "linear.weight": _UNUSED_CLASSIFIER,
    "linear.bias": _UNUSED_CLASSIFIER,
    "stem.fc.weight": _UNUSED_CLASSIFIER,  # tools/convert-torchvision-to-d2.py output
    "stem.fc.bias": _UNUSED_CLASSIFIER,
    "stem.conv1.bias": _UNUSED_STEM_BIAS,
    "pixel_mean": Target(None, "input statistics are model.input parameters"),
    "pixel_std": Target(None, "input statistics are model.input parameters"),
}


def _expand(match: re.Match[str], template: str) -> str:
    index = int(match[1]) if match.re.groups and match[1].isdigit() else 0
    return match.expand(template.replace("{S}", str(index - 1)).replace("{L}", str(index - 2)))


def detectron2_target(name: str) -> Target | None:
    """detectron2 parameter name -> model key."""
    backbone_name = name.removeprefix("backbone.bottom_up.")
    if backbone_name in _D2_FIXED:
        return _D2_FIXED[backbone_name]
    for pattern, template in _D2_BACKBONE_RULES:
        if match := re.match(pattern, backbone_name):
            return Target(BACKBONE_PREFIX + _expand(match, template))
    for pattern, template, transform in _D2_HEAD_RULES:
        if match := re.match(pattern, name):
            return Target(_expand(match, template), transform=transform)
    return None


_TV_LEGACY = [
    (
        re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d)\.(weight|bias)$"),
        r"backbone.fpn.\1_blocks.\2.0.\3",
    ),
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
]


def torchvision_detector_target(name: str) -> Target:
    """torchvision Faster R-CNN names are this model's; only pre-0.13 FPN/RPN names need updating."""
    for pattern, template in _TV_LEGACY:
        if pattern.match(name):
            return Target(pattern.sub(template, name))
    return Target(name)


def torchvision_resnet_target(name: str) -> Target:
    if name.startswith("fc."):
        return _UNUSED_CLASSIFIER
    return Target(BACKBONE_PREFIX + name)


KEY_RULES: dict[str, Callable[[str], Target | None]] = {
    "caffe2": caffe2_target,
    "detectron2": detectron2_target,
    "torchvision_detector": torchvision_detector_target,
    "torchvision_resnet": torchvision_resnet_target,
}
