"""Folding the backbone's norms into its convs for inference."""

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.modeling.backbone import fold_norms_into_convs

NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def _randomise_norms(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, NORMS):
            for name in ("weight", "bias", "running_mean"):
                getattr(module, name).data.normal_(0.0, 0.5, generator=generator)
            module.running_var.data.uniform_(0.5, 2.0, generator=generator)


@pytest.mark.parametrize(("depth", "norm"), [(18, "bn"), (50, "frozen_bn")])
def test_folded_backbone_gives_the_same_features(depth, norm):
    torch.manual_seed(0)
    model = build_model({"backbone": {"depth": depth, "norm": norm, "freeze_at": 0}}, num_classes=3).eval()
    _randomise_norms(model)
    images = torch.rand(1, 3, 96, 128) * 255
    body = model.backbone.body
    with torch.inference_mode():
        expected = body(images)
        fold_norms_into_convs(body)
        folded = body(images)

    assert not [m for m in body.modules() if isinstance(m, NORMS)]
    for name, feature in expected.items():
        torch.testing.assert_close(folded[name], feature, rtol=1e-4, atol=1e-4 * feature.abs().max().item())


def test_folding_a_training_batch_norm_is_refused():
    model = build_model({"backbone": {"depth": 18, "norm": "bn", "freeze_at": 0}}, num_classes=3).train()
    with pytest.raises(ValueError, match="training mode; fold norms only for inference"):
        fold_norms_into_convs(model.backbone.body)
