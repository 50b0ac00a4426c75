"""Layer 1½: detection ops (NMS, RoIAlign) that run on any device torch runs on.

Each op picks, per device, torchvision's kernel where one is registered, Ascend's kernels on NPU, or a
pure-PyTorch implementation made of ordinary tensor ops (`frcnn_pipeline.layers.backend`).
"""

from frcnn_pipeline.layers.nms import batched_nms, fixed_round_nms, nms_keep_mask
from frcnn_pipeline.layers.roi_align import roi_align

__all__ = ["batched_nms", "fixed_round_nms", "nms_keep_mask", "roi_align"]
