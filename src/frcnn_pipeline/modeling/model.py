"""`build_model`: Faster R-CNN R-FPN from torchvision detection components, configured by `model:` alone."""

from typing import Any

from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from frcnn_pipeline.modeling.anchors import FixedStrideAnchorGenerator
from frcnn_pipeline.modeling.backbone import FEATURE_NAMES, FEATURE_STRIDES, build_resnet_fpn_backbone
from frcnn_pipeline.modeling.config import resolve_model_config
from frcnn_pipeline.modeling.pooler import LevelRoIAlign
from frcnn_pipeline.modeling.roi_heads import DetectronRoIHeads, StaticRoIHeads, box_head_and_predictor
from frcnn_pipeline.modeling.rpn import DetectronRPN, Float32RPNHead, StaticRPN
from frcnn_pipeline.modeling.transform import DetectronTransform


class FasterRCNN(GeneralizedRCNN):
    """GeneralizedRCNN that remembers its resolved configuration and number of foreground classes."""

    def __init__(
        self, backbone, rpn, roi_heads, transform, *, config: dict[str, Any], num_classes: int
    ) -> None:
        super().__init__(backbone, rpn, roi_heads, transform)
        self.config = config
        self.num_classes = num_classes


def build_model(model_cfg: dict[str, Any] | None, num_classes: int) -> FasterRCNN:
    """Faster R-CNN with a ResNet-FPN backbone, randomly initialised (load weights afterwards).

    Args:
        model_cfg: the `model:` parameter section, possibly partial (missing keys take detectron2's values).
        num_classes: number of foreground classes K; labels in and out are 1..K, 0 is background.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 foreground classes, got {num_classes}")
    cfg = resolve_model_config(model_cfg)
    inputs, anchors, rpn_cfg, roi_cfg = cfg["input"], cfg["anchors"], cfg["rpn"], cfg["roi_heads"]
    static = cfg["static_shapes"]
    # The static-shape mode swaps in variants of the RPN and box head with the same weights.
    static_kwargs = {"detection_candidates": static["detection_candidates"]} if static["enabled"] else {}

    backbone = build_resnet_fpn_backbone(cfg["backbone"])
    anchor_generator = FixedStrideAnchorGenerator(
        anchors["sizes"], anchors["aspect_ratios"], FEATURE_STRIDES, round_cell_anchors=anchors["round"]
    )
    background_iou, foreground_iou = rpn_cfg["iou_thresholds"]
    rpn = (StaticRPN if static["enabled"] else DetectronRPN)(
        anchor_generator,
        Float32RPNHead(backbone.out_channels, anchor_generator.num_anchors_per_location()[0]),
        fg_iou_thresh=foreground_iou,
        bg_iou_thresh=background_iou,
        batch_size_per_image=rpn_cfg["batch_size_per_image"],
        positive_fraction=rpn_cfg["positive_fraction"],
        pre_nms_top_n={"training": rpn_cfg["pre_nms_topk_train"], "testing": rpn_cfg["pre_nms_topk_test"]},
        post_nms_top_n={"training": rpn_cfg["post_nms_topk_train"], "testing": rpn_cfg["post_nms_topk_test"]},
        nms_thresh=rpn_cfg["nms_thresh"],
        smooth_l1_beta=rpn_cfg["smooth_l1_beta"],
    )
    box_head, box_predictor = box_head_and_predictor(
        backbone.out_channels, roi_cfg["pooler_resolution"], roi_cfg["fc_dim"], num_classes
    )
    roi_heads = (StaticRoIHeads if static["enabled"] else DetectronRoIHeads)(
        LevelRoIAlign(
            FEATURE_NAMES[:4],
            FEATURE_STRIDES[:4],
            roi_cfg["pooler_resolution"],
            roi_cfg["pooler_sampling_ratio"],
            aligned=roi_cfg["pooler_aligned"],
            static_shapes=static["enabled"],
        ),
        box_head,
        box_predictor,
        fg_iou_thresh=roi_cfg["iou_threshold"],
        bg_iou_thresh=roi_cfg["iou_threshold"],
        batch_size_per_image=roi_cfg["batch_size_per_image"],
        positive_fraction=roi_cfg["positive_fraction"],
        bbox_reg_weights=tuple(roi_cfg["bbox_reg_weights"]),
        score_thresh=roi_cfg["score_thresh_test"],
        nms_thresh=roi_cfg["nms_thresh_test"],
        detections_per_img=roi_cfg["detections_per_image"],
        smooth_l1_beta=roi_cfg["smooth_l1_beta"],
        label_smoothing=roi_cfg["label_smoothing"],
        **static_kwargs,
    )
    transform = DetectronTransform(
        min_size_train=inputs["min_size_train"],
        min_size_test=inputs["min_size_test"],
        max_size=inputs["max_size"],
        pixel_mean=inputs["pixel_mean"],
        pixel_std=inputs["pixel_std"],
        input_format=inputs["format"],
        size_divisibility=inputs["size_divisibility"],
        resize_rounding=inputs["resize_rounding"],
        fixed_size=inputs["fixed_size"],
        max_gt_boxes=static["max_gt_boxes"] if static["enabled"] else None,
    )
    return FasterRCNN(backbone, rpn, roi_heads, transform, config=cfg, num_classes=num_classes)
