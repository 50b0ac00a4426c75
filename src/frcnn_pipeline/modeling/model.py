"""`build_model`: Faster R-CNN R-FPN from torchvision detection components, configured by `model:` alone."""

import torch
from torch import Tensor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from frcnn_pipeline.config.model import ModelParams, StaticShapeParams
from frcnn_pipeline.modeling.anchors import FixedStrideAnchorGenerator
from frcnn_pipeline.modeling.backbone import FEATURE_NAMES, FEATURE_STRIDES, build_resnet_fpn_backbone
from frcnn_pipeline.modeling.pooler import LevelRoIAlign
from frcnn_pipeline.modeling.roi_heads import (
    COCO_PREDICTOR_ROWS,
    DetectronRoIHeads,
    StaticRoIHeads,
    box_head_and_predictor,
)
from frcnn_pipeline.modeling.rpn import DetectronRPN, Float32RPNHead, StaticRPN
from frcnn_pipeline.modeling.static import StaticBatch
from frcnn_pipeline.modeling.transform import DetectronTransform


class FasterRCNN(GeneralizedRCNN):
    """GeneralizedRCNN that remembers its resolved configuration and number of foreground classes."""

    def __init__(self, backbone, rpn, roi_heads, transform, *, config: ModelParams, num_classes: int) -> None:
        super().__init__(backbone, rpn, roi_heads, transform)
        self.config = config
        self.num_classes = num_classes


class StaticFasterRCNN(FasterRCNN):
    """FasterRCNN of the static-shape mode (`model.static_shapes`).

    `images` may be the images (a list, on the host ideally) or their `StaticBatch`, made beforehand by
    `model.transform.host_batch(images, targets)`: the one part whose shapes follow the images. From the
    batch's move to the model's device on, a training step (forward and backward) runs the same ops on the
    same shapes whatever the images and objects, and reads no value back on the host
    (tests/modeling/test_static_shapes.py); so does an inference pass up to `postprocess`'s strip.
    """

    def forward(
        self, images: list[Tensor] | StaticBatch, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        batch = images if isinstance(images, StaticBatch) else self.transform.host_batch(images, targets)
        batch = batch.to(self.transform.pixel_mean.device)
        image_list, targets = self.transform(batch)
        features = self.backbone(image_list.tensors)
        proposals, proposal_losses = self.rpn(image_list, features, targets)
        detections, detector_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
        if self.training:
            return {**detector_losses, **proposal_losses}  # GeneralizedRCNN's order
        original_sizes = [tuple(size.unbind()) for size in batch.original_sizes.unbind()]
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)


def build_model(cfg: ModelParams, num_classes: int) -> FasterRCNN:
    """Faster R-CNN with a ResNet-FPN backbone, randomly initialised (load weights afterwards).

    Args:
        cfg: the `model:` parameter section.
        num_classes: number of foreground classes K; labels in and out are 1..K, 0 is background.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 foreground classes, got {num_classes}")
    backbone = build_resnet_fpn_backbone(cfg.backbone)
    rpn = _build_rpn(cfg, backbone.out_channels)
    roi_heads = _build_roi_heads(cfg, backbone.out_channels, num_classes)
    model_class = StaticFasterRCNN if cfg.static_shapes.enabled else FasterRCNN
    return model_class(backbone, rpn, roi_heads, _build_transform(cfg), config=cfg, num_classes=num_classes)


# The static-shape mode swaps in variants of the model, RPN and box head with the same weights.
def _static_rpn_options(static: StaticShapeParams) -> dict[str, int]:
    return {"nms_rounds": static.nms_rounds} if static.enabled else {}


def _static_heads_options(static: StaticShapeParams) -> dict[str, int]:
    if not static.enabled:
        return {}
    return {**_static_rpn_options(static), "detection_candidates": static.detection_candidates}


def _build_rpn(cfg: ModelParams, in_channels: int) -> DetectronRPN:
    anchors, rpn_cfg, static = cfg.anchors, cfg.rpn, cfg.static_shapes
    anchor_generator = FixedStrideAnchorGenerator(
        anchors.sizes,
        anchors.aspect_ratios,
        FEATURE_STRIDES,
        round_cell_anchors=anchors.round,
        stride_rule=anchors.stride_rule,
    )
    background_iou, foreground_iou = rpn_cfg.iou_thresholds
    return (StaticRPN if static.enabled else DetectronRPN)(
        anchor_generator,
        Float32RPNHead(in_channels, anchor_generator.num_anchors_per_location()[0]),
        fg_iou_thresh=foreground_iou,
        bg_iou_thresh=background_iou,
        batch_size_per_image=rpn_cfg.batch_size_per_image,
        positive_fraction=rpn_cfg.positive_fraction,
        pre_nms_top_n={"training": rpn_cfg.pre_nms_topk_train, "testing": rpn_cfg.pre_nms_topk_test},
        post_nms_top_n={"training": rpn_cfg.post_nms_topk_train, "testing": rpn_cfg.post_nms_topk_test},
        nms_thresh=rpn_cfg.nms_thresh,
        smooth_l1_beta=rpn_cfg.smooth_l1_beta,
        rank_on=rpn_cfg.rank_on,
        small_boxes=rpn_cfg.small_boxes,
        **_static_rpn_options(static),
    )


def _build_roi_heads(cfg: ModelParams, in_channels: int, num_classes: int) -> DetectronRoIHeads:
    roi_cfg, static = cfg.roi_heads, cfg.static_shapes
    # coco_category_ids: the weights pipeline writes the labels' rows (by category id) into the state dict
    coco_rows = roi_cfg.predictor_rows == "coco_category_ids"
    if coco_rows and num_classes >= COCO_PREDICTOR_ROWS:
        raise ValueError(f"predictor_rows coco_category_ids holds at most 90 classes, got {num_classes}")
    box_head, box_predictor = box_head_and_predictor(
        in_channels,
        roi_cfg.pooler_resolution,
        roi_cfg.fc_dim,
        COCO_PREDICTOR_ROWS - 1 if coco_rows else num_classes,
    )
    return (StaticRoIHeads if static.enabled else DetectronRoIHeads)(
        LevelRoIAlign(
            FEATURE_NAMES[:4],
            FEATURE_STRIDES[:4],
            roi_cfg.pooler_resolution,
            roi_cfg.pooler_sampling_ratio,
            aligned=roi_cfg.pooler_aligned,
            level_rule=roi_cfg.pooler_level_rule,
            static_shapes=static.enabled,
        ),
        box_head,
        box_predictor,
        fg_iou_thresh=roi_cfg.iou_threshold,
        bg_iou_thresh=roi_cfg.iou_threshold,
        batch_size_per_image=roi_cfg.batch_size_per_image,
        positive_fraction=roi_cfg.positive_fraction,
        bbox_reg_weights=tuple(roi_cfg.bbox_reg_weights),
        score_thresh=roi_cfg.score_thresh_test,
        nms_thresh=roi_cfg.nms_thresh_test,
        detections_per_img=roi_cfg.detections_per_image,
        smooth_l1_beta=roi_cfg.smooth_l1_beta,
        label_smoothing=roi_cfg.label_smoothing,
        softmax_background=roi_cfg.softmax_background,
        nms_class_ids=roi_cfg.nms_class_ids,
        small_boxes=roi_cfg.small_boxes,
        label_rows=torch.arange(num_classes + 1) if coco_rows else None,
        **_static_heads_options(static),
    )


def _build_transform(cfg: ModelParams) -> DetectronTransform:
    inputs, roi_cfg, static = cfg.input, cfg.roi_heads, cfg.static_shapes
    return DetectronTransform(
        min_size_train=inputs.min_size_train,
        min_size_test=inputs.min_size_test,
        max_size=inputs.max_size,
        pixel_mean=inputs.pixel_mean,
        pixel_std=inputs.pixel_std,
        pixel_scale=inputs.pixel_scale,
        input_format=inputs.format,
        size_divisibility=inputs.size_divisibility,
        resize_rounding=inputs.resize_rounding,
        resize_interpolation=inputs.resize_interpolation,
        clip_detections=roi_cfg.clip_after_rescale,
        drop_empty_detections=roi_cfg.small_boxes == "detectron2",
        fixed_size=inputs.fixed_size,
        max_gt_boxes=static.max_gt_boxes if static.enabled else None,
    )
