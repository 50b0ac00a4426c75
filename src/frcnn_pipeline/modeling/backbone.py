"""ResNet + FPN (P2-P6) backbone from torchvision parts, with detectron2's stride placement and freezing."""

import itertools
from collections.abc import Callable
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from frcnn_pipeline.config.model import BackboneParams
from frcnn_pipeline.errors import UserFacingError

# Feature map names and strides of P2..P6, as BackboneWithFPN names them ("pool" is LastLevelMaxPool's P6).
FEATURE_NAMES = ("0", "1", "2", "3", "pool")
FEATURE_STRIDES = (4, 8, 16, 32, 64)

_RESNETS: dict[int, Callable[..., resnet.ResNet]] = {
    18: resnet.resnet18,
    34: resnet.resnet34,
    50: resnet.resnet50,
    101: resnet.resnet101,
}
# detectron2 stage names, freeze_at counts them in this order.
_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


class DetectronFrozenBatchNorm2d(FrozenBatchNorm2d):
    """FrozenBatchNorm2d with detectron2's arithmetic (detectron2/layers/batch_norm.py:45-66): F.batch_norm
    where no gradient flows (one fused kernel, ~1e-5 relative from the product below), torchvision's
    x * scale + shift where one does. Same buffers, so checkpoints load either way."""

    def forward(self, x: Tensor) -> Tensor:
        if x.requires_grad:
            return super().forward(x)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )


_FROZEN_NORMS = {"detectron2": DetectronFrozenBatchNorm2d, "torchvision": FrozenBatchNorm2d}


def _norm_layer(norm: str, frozen_class: Callable[..., FrozenBatchNorm2d]) -> Callable[[int], nn.Module]:
    if norm == "frozen_bn":
        return frozen_class
    if norm == "gn":
        return partial(nn.GroupNorm, 32)
    # sync_bn too: its layers are BatchNorm2d (the same weights) until training converts them.
    return nn.BatchNorm2d


class SyncBatchNormError(UserFacingError, ValueError):
    """`model.backbone.norm: sync_bn` in a training run that cannot synchronise batch statistics."""


# torch's SyncBatchNorm refuses CPU inputs in training (torch/nn/modules/batchnorm.py); NPU is torch_npu's
# PrivateUse1 backend, which it accepts.
SYNC_BATCHNORM_DEVICES = ("cuda", "npu")


def convert_to_sync_batchnorm(model: nn.Module, norm: str, world_size: int, device_type: str) -> nn.Module:
    """`model.backbone.norm: sync_bn`, in a training worker once the process group exists: every BatchNorm2d
    (the trainable ones; frozen stages hold FrozenBatchNorm2d) becomes a SyncBatchNorm, whose batch
    statistics are those of all the workers' images (detectron2's SyncBN). Other norms: `model` unchanged.

    Raises:
        SyncBatchNormError: one process (nothing to synchronise with), or a device SyncBatchNorm refuses.
    """
    if norm != "sync_bn":
        return model
    if world_size == 1:
        raise SyncBatchNormError(
            "model.backbone.norm is sync_bn, but this training run has one process: there is nothing to "
            "synchronise the batch statistics with. Set model.backbone.norm: bn (the same layers, statistics "
            "of this process's images), or train on several devices (runtime.nproc_per_node, num_nodes)."
        )
    if device_type not in SYNC_BATCHNORM_DEVICES:
        raise SyncBatchNormError(
            f"model.backbone.norm is sync_bn, but this run trains on {device_type}: torch's SyncBatchNorm "
            f"runs on {' and '.join(SYNC_BATCHNORM_DEVICES)} only. Set model.backbone.norm: bn (each worker "
            "normalises over its own images)."
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _move_stride_to_1x1(body: resnet.ResNet) -> None:
    """MSRA's ResNet strides on the first 1x1 conv of a stage; torchvision's v1.5 on the 3x3.

    The shapes are identical, so weights load either way: only the numbers tell them apart.
    """
    for stage in (body.layer2, body.layer3, body.layer4):
        first = stage[0]
        if isinstance(first, resnet.Bottleneck):
            first.conv1.stride, first.conv2.stride = first.conv2.stride, first.conv1.stride


def _to_frozen_batchnorm(module: nn.Module, frozen_class: Callable[..., FrozenBatchNorm2d]) -> nn.Module:
    """BatchNorm2d -> `frozen_class` with the same statistics (detectron2's convert_frozen_batchnorm)."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = frozen_class(module.num_features)
        frozen.weight.copy_(module.weight.detach())
        frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        module.add_module(name, _to_frozen_batchnorm(child, frozen_class))
    return module


def _freeze_stages(
    body: resnet.ResNet, freeze_at: int, frozen_class: Callable[..., FrozenBatchNorm2d]
) -> None:
    for stage in _STAGES[:freeze_at]:
        modules = (body.conv1, body.bn1) if stage == "stem" else (getattr(body, stage),)
        for module in modules:
            module.requires_grad_(False)
        if stage == "stem":
            body.bn1 = _to_frozen_batchnorm(body.bn1, frozen_class)
        else:
            setattr(body, stage, _to_frozen_batchnorm(getattr(body, stage), frozen_class))


def fold_norms_into_convs(module: nn.Module) -> nn.Module:
    """Inference only: fold each BatchNorm2d / FrozenBatchNorm2d into the conv it follows, in place.

    torchvision's ResNet registers every norm right after the conv it normalises (``conv1, bn1``,
    ``downsample.0, downsample.1``), so adjacent (conv, norm) children are exactly those pairs. Saves one
    elementwise pass over every feature map; the outputs change only by float rounding.
    """
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for (_, conv), (norm_name, norm) in itertools.pairwise(children):
            if isinstance(conv, nn.Conv2d) and isinstance(norm, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                if isinstance(norm, nn.BatchNorm2d) and norm.training:
                    raise ValueError(f"{norm_name} is in training mode; fold norms only for inference")
                weight, bias = fuse_conv_bn_weights(
                    conv.weight,
                    conv.bias,
                    norm.running_mean,
                    norm.running_var,
                    norm.eps,
                    norm.weight,
                    norm.bias,
                )
                conv.weight, conv.bias = nn.Parameter(weight.detach()), nn.Parameter(bias.detach())
                setattr(parent, norm_name, nn.Identity())
    return module


def build_resnet_fpn_backbone(backbone_cfg: BackboneParams) -> BackboneWithFPN:
    """ResNet-{18,34,50,101} body (random init; weights come from the weights pipeline) with an FPN.

    The state-dict names are torchvision's (`body.layer1.0.conv1.weight`, `fpn.inner_blocks.0.0.weight`),
    so torchvision detector checkpoints load as they are.
    """
    frozen_class = partial(_FROZEN_NORMS[backbone_cfg.frozen_bn_arithmetic], eps=backbone_cfg.frozen_bn_eps)
    body = _RESNETS[backbone_cfg.depth](weights=None, norm_layer=_norm_layer(backbone_cfg.norm, frozen_class))
    if backbone_cfg.stride_in_1x1:
        _move_stride_to_1x1(body)
    _freeze_stages(body, backbone_cfg.freeze_at, frozen_class)
    expansion = body.layer1[0].expansion  # 1 for R-18/34, 4 for R-50/101
    in_channels_list = [64 * expansion * 2**i for i in range(4)]
    return BackboneWithFPN(
        body,
        return_layers={f"layer{i + 1}": FEATURE_NAMES[i] for i in range(4)},
        in_channels_list=in_channels_list,
        out_channels=backbone_cfg.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
