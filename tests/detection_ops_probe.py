"""What ran in a model: calls of the portable NMS and RoIAlign, and the namespaces of all dispatched ops.

For the tests that compare a training step or an evaluation with `runtime.detection_ops: portable` against
torchvision's kernels.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from unittest import mock

import torchvision
from torch.utils._python_dispatch import TorchDispatchMode

import frcnn_pipeline.layers

# The package exports functions under their modules' names.
nms_module = importlib.import_module("frcnn_pipeline.layers.nms")
roi_align_module = importlib.import_module("frcnn_pipeline.layers.roi_align")


@dataclass
class DetectionOpsProbe:
    portable_nms_calls: int = 0
    portable_roi_align_calls: int = 0
    namespaces: set[str] = field(default_factory=set)  # e.g. {"aten", "torchvision"}


class _NamespaceRecorder(TorchDispatchMode):
    def __init__(self, namespaces: set[str]):
        super().__init__()
        self.namespaces = namespaces

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.namespaces.add(func.namespace)
        return func(*args, **(kwargs or {}))


@contextmanager
def probe_detection_ops(*, route_torchvision_nms: bool) -> Iterator[DetectionOpsProbe]:
    """Count the portable implementations' calls and record every op's namespace while inside.

    `route_torchvision_nms`: torchvision's RegionProposalNetwork and RoIHeads call
    `torchvision.ops.boxes.batched_nms` themselves; send those calls to `frcnn_pipeline.layers.batched_nms`
    (only with the portable setting, which never calls back into torchvision).
    """
    probe = DetectionOpsProbe()
    greedy_nms, portable_roi_align = nms_module._greedy_nms, roi_align_module.portable_roi_align

    def counted_nms(*args, **kwargs):
        probe.portable_nms_calls += 1
        return greedy_nms(*args, **kwargs)

    def counted_roi_align(*args, **kwargs):
        probe.portable_roi_align_calls += 1
        return portable_roi_align(*args, **kwargs)

    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(nms_module, "_greedy_nms", counted_nms))
        stack.enter_context(mock.patch.object(roi_align_module, "portable_roi_align", counted_roi_align))
        if route_torchvision_nms:
            stack.enter_context(
                mock.patch.object(torchvision.ops.boxes, "batched_nms", frcnn_pipeline.layers.batched_nms)
            )
        stack.enter_context(_NamespaceRecorder(probe.namespaces))
        yield probe
