"""``model:``, read by frcnn_pipeline.modeling.build_model.

Defaults: detectron2's COCO Faster R-CNN R-50-FPN, the model of the Ascend model-zoo card.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from frcnn_pipeline.config.section import Section


def _one_size_as_list(value):
    # `min_size_train: 800` in YAML means one size.
    return [value] if isinstance(value, int) and not isinstance(value, bool) else value


class BackboneParams(Section):
    depth: Literal[18, 34, 50, 101] = Field(50, description="ResNet depth")
    norm: Literal["frozen_bn", "bn", "sync_bn", "gn"] = Field(
        "frozen_bn",
        description="frozen_bn (detectron2, for pretrained weights), bn, sync_bn (bn whose training "
        "statistics span every worker: several CUDA/NPU workers only), or gn (32 groups)",
    )
    freeze_at: int = Field(2, ge=0, le=5, description="stages frozen: 0 none, 1 stem, 2 stem+res2 ... 5 all")
    stride_in_1x1: bool = Field(
        True, description="MSRA weights stride on the 1×1 conv; false for torchvision weights (R-50/101)"
    )
    fpn_channels: int = Field(256, ge=1, description="FPN, RPN and pooler width")
    frozen_bn_arithmetic: Literal["detectron2", "torchvision"] = Field(
        "detectron2",
        description="frozen norms: detectron2 calls F.batch_norm where no gradient flows (x * scale + shift "
        "where one does); torchvision always x * scale + shift (about 1e-5 relative apart)",
    )
    frozen_bn_eps: float = Field(
        1e-5,
        ge=0,
        description="eps of frozen norms (added to running_var): 1e-5 as BatchNorm2d; 0 for torchvision's "
        "COCO detector weights (its builder calls overwrite_eps(model, 0.0))",
    )


class InputParams(Section):
    format: Literal["BGR", "RGB"] = Field(
        "BGR", description="channel order the first conv expects (images always arrive RGB 0-255)"
    )
    pixel_scale: Literal[255, 1] = Field(
        255,
        description="255: pixels normalised as they come, 0-255 (detectron2); 1: divided by 255 first, "
        "then normalised (torchvision, bit for bit: (x / 255 - mean) / std)",
    )
    pixel_mean: list[float] = Field(
        [103.53, 116.28, 123.675],
        min_length=3,
        max_length=3,
        description="in `format` order, on `pixel_scale`'s scale: ImageNet's RGB mean is "
        "[123.675, 116.28, 103.53] at 255, [0.485, 0.456, 0.406] at 1 (equal only to float rounding)",
    )
    pixel_std: list[float] = Field(
        [1.0, 1.0, 1.0],
        min_length=3,
        max_length=3,
        description="as pixel_mean: ImageNet's RGB std is [58.395, 57.12, 57.375] at 255, "
        "[0.229, 0.224, 0.225] at 1",
    )
    min_size_train: Annotated[list[int], BeforeValidator(_one_size_as_list)] = Field(
        [640, 672, 704, 736, 768, 800], min_length=1, description="shorter side, one drawn per image"
    )
    min_size_test: int = Field(800, ge=1, description="shorter side at test time")
    max_size: int = Field(1333, ge=1, description="long-side cap")
    resize_rounding: Literal["detectron2", "torchvision"] = Field(
        "detectron2", description="detectron2 rounds sizes to nearest, torchvision floors"
    )
    resize_interpolation: Literal["detectron2", "torchvision"] = Field(
        "detectron2",
        description="detectron2: the image as it came, before normalising (uint8: PIL bilinear, antialiased "
        "when shrinking, rounded to uint8, on the host); torchvision: bilinear on the normalised float image",
    )
    size_divisibility: int = Field(32, ge=1, description="batch padding multiple")
    fixed_size: list[int] | None = Field(
        None, min_length=2, max_length=2, description="[H, W]: pad every batch to this (static shapes)"
    )


class AnchorParams(Section):
    sizes: list[int] = Field(
        [32, 64, 128, 256, 512], min_length=5, max_length=5, description="one per level P2..P6"
    )
    aspect_ratios: list[float] = Field([0.5, 1.0, 2.0], min_length=1, description="height / width")
    round: bool = Field(False, description="torchvision rounds cell anchors, detectron2 does not")
    stride_rule: Literal["detectron2", "torchvision"] = Field(
        "detectron2",
        description="detectron2: each level's true stride (4 ... 64); torchvision: padded size // cells, "
        "which differs on P6 when the padded side / 32 is odd (800 px: 800 // 13 = 61, not 64)",
    )


class RpnParams(Section):
    iou_thresholds: list[float] = Field(
        [0.3, 0.7], min_length=2, max_length=2, description="below: background, above: foreground"
    )
    batch_size_per_image: int = Field(256, ge=1, description="anchors sampled per image")
    positive_fraction: float = Field(0.5, gt=0, le=1, description="of the sampled anchors")
    pre_nms_topk_train: int = Field(2000, ge=1, description="proposals per level before NMS (train)")
    post_nms_topk_train: int = Field(1000, ge=1, description="proposals per image after NMS (train)")
    pre_nms_topk_test: int = Field(1000, ge=1, description="as pre_nms_topk_train, at test time")
    post_nms_topk_test: int = Field(1000, ge=1, description="as post_nms_topk_train, at test time")
    nms_thresh: float = Field(0.7, gt=0, le=1, description="proposal NMS IoU")
    smooth_l1_beta: float = Field(0.0, ge=0, description="0 = L1 (detectron2); torchvision 1/9")
    rank_on: Literal["logits", "probabilities"] = Field(
        "logits",
        description="proposals ranked by NMS and the top-k cut on objectness logits (detectron2) or their "
        "float32 sigmoid (torchvision: saturates at 1.0, whose ties reorder proposals)",
    )
    small_boxes: Literal["detectron2", "torchvision"] = Field(
        "detectron2",
        description="proposals kept before NMS: detectron2 width and height > 0; torchvision >= 1e-3",
    )


class RoiHeadsParams(Section):
    batch_size_per_image: int = Field(512, ge=1, description="RoIs sampled per image")
    positive_fraction: float = Field(0.25, gt=0, le=1, description="of the sampled RoIs")
    iou_threshold: float = Field(0.5, gt=0, le=1, description="RoI foreground IoU")
    pooler_resolution: int = Field(7, ge=1, description="RoIAlign output size")
    pooler_sampling_ratio: int = Field(0, ge=0, description="RoIAlign samples per bin; 0 adaptive")
    pooler_aligned: bool = Field(True, description="ROIAlignV2 (detectron2); false = torchvision's RoIAlign")
    pooler_level_rule: Literal["detectron2", "torchvision"] = Field(
        "detectron2",
        description="RoI level floor(4 + log2(sqrt(area) / 224 + 1e-8)) (detectron2) or "
        "floor(4 + log2(sqrt(area) / 224) + 1e-6) (torchvision): boxes just under 112/224/448 px differ",
    )
    fc_dim: int = Field(1024, ge=1, description="box head width")
    bbox_reg_weights: list[float] = Field(
        [10.0, 10.0, 5.0, 5.0], min_length=4, max_length=4, description="box coder weights (x, y, w, h)"
    )
    smooth_l1_beta: float = Field(0.0, ge=0, description="box regression loss; 0 = L1")
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="box classifier; the card lists 0.1, which its reference code does not apply",
    )
    score_thresh_test: float = Field(0.05, ge=0, le=1, description="test-time score cut")
    nms_thresh_test: float = Field(0.5, gt=0, le=1, description="test-time NMS IoU")
    detections_per_image: int = Field(100, ge=1, description="test-time detections kept")
    softmax_background: Literal["last", "first"] = Field(
        "last",
        description="class probabilities from a softmax with background last (detectron2's layout) or first "
        "(torchvision's): the same logits, sums in another order (1 ulp apart)",
    )
    nms_class_ids: Literal["from_zero", "from_one"] = Field(
        "from_zero",
        description="class ids given to batched NMS, whose box offsets follow them: 0..K-1 (detectron2) or "
        "1..K (torchvision); pairs at IoU ≈ nms_thresh_test can flip",
    )
    small_boxes: Literal["detectron2", "torchvision"] = Field(
        "detectron2",
        description="detectron2: every box enters NMS, empty ones (width or height 0) dropped after the "
        "rescale to the image; torchvision: boxes under 1e-2 px dropped before NMS",
    )
    clip_after_rescale: bool = Field(
        True,
        description="clip detections to the original image after rescaling them (detectron2); torchvision "
        "clips only in the resized image (480.00003 instead of 480)",
    )
    predictor_rows: Literal["labels", "coco_category_ids"] = Field(
        "labels",
        description="box predictor rows: background and one per ingested category (labels), or COCO's 91 "
        "indexed by category id (torchvision's COCO detectors: the softmax runs over all 91; rows of no "
        "ingested category are never detected). coco_category_ids needs ids in 1..90",
    )


class StaticShapeParams(Section):
    """No tensor shape depends on the data (object counts, scores, box sizes): for Ascend, which compiles
    every new shape, and torch.compile. Needs input.fixed_size. The npu envs turn it on."""

    enabled: bool = Field(False, description="fixed proposal and RoI counts, padded and masked (NPU)")
    max_gt_boxes: int = Field(
        100, ge=1, description="ground-truth boxes per image padded to this; an image with more is an error"
    )
    detection_candidates: int = Field(
        2000, ge=1, description="test: best (box, class) pairs per image entering NMS"
    )
    nms_rounds: int = Field(
        32,
        ge=1,
        description="rounds of every NMS: exact where no chain of suppressions is longer; a box on a longer "
        "one is kept (counted in the RPN's and box head's `unresolved_nms_boxes`)",
    )


class ModelParams(Section):
    backbone: BackboneParams = BackboneParams()
    input: InputParams = InputParams()
    anchors: AnchorParams = AnchorParams()
    rpn: RpnParams = RpnParams()
    roi_heads: RoiHeadsParams = RoiHeadsParams()
    static_shapes: StaticShapeParams = StaticShapeParams()

    @classmethod
    def of_saved(cls, config: Mapping[str, Any] | None) -> ModelParams:
        """A saved model's config (possibly partial: an older version's) validated, every key left out at
        its default.

        Raises:
            ParameterError (a ValueError): an unknown key or a wrong value, one line per problem.
        """
        return cls.parse(config, "model")

    def replaced(self, **sections: Mapping[str, Any]) -> ModelParams:
        """A copy with some keys of some sections replaced, e.g. ``replaced(input={"fixed_size": None})``: the
        values are the caller's (validated elsewhere); the checks across sections run again."""
        updates = {name: getattr(self, name).model_copy(update=values) for name, values in sections.items()}
        return self.parse({**dict(self), **updates}, "model")  # the sections as they are, checked together

    @model_validator(mode="after")
    def _static_shapes_need_a_fixed_size(self) -> ModelParams:
        static = self.static_shapes
        if static.enabled and not self.input.fixed_size:
            raise ValueError(
                "model.static_shapes.enabled is true but model.input.fixed_size is null: set "
                "model.input.fixed_size: [H, W] (at least max_size rounded up to size_divisibility, e.g. "
                "[1344, 1344] for max_size 1333), or model.static_shapes.enabled: false"
            )
        if static.enabled and static.detection_candidates < self.roi_heads.detections_per_image:
            raise ValueError(
                f"model.static_shapes.detection_candidates = {static.detection_candidates} is below "
                f"model.roi_heads.detections_per_image = {self.roi_heads.detections_per_image}: raise it"
            )
        return self
