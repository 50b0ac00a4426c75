"""Folding the backbone's norms into its convs for inference; sync_bn's conversion and refusals."""

import pytest
import torch
from model_configs import model_params
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.modeling.backbone import (
    SyncBatchNormError,
    convert_to_sync_batchnorm,
    fold_norms_into_convs,
)

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
    model = build_model(
        model_params({"backbone": {"depth": depth, "norm": norm, "freeze_at": 0}}), num_classes=3
    ).eval()
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
    model = build_model(
        model_params({"backbone": {"depth": 18, "norm": "bn", "freeze_at": 0}}), num_classes=3
    ).train()
    with pytest.raises(ValueError, match="training mode; fold norms only for inference"):
        fold_norms_into_convs(model.backbone.body)


def _sync_bn_model():
    torch.manual_seed(0)
    return build_model(
        model_params({"backbone": {"depth": 18, "norm": "sync_bn", "freeze_at": 2}}), num_classes=3
    )


def test_sync_bn_builds_batch_norms_that_training_turns_into_sync_batch_norms():
    """The conversion, without a process group (converting needs none); torch's SyncBatchNorm refuses CPU
    tensors in training, so a 2-process gloo group cannot run one here."""
    model = _sync_bn_model()
    plain = build_model(
        model_params({"backbone": {"depth": 18, "norm": "bn", "freeze_at": 2}}), num_classes=3
    )
    assert model.state_dict().keys() == plain.state_dict().keys()  # checkpoints load either way
    weights = {name: parameter for name, parameter in model.named_parameters()}
    trainable_norms = sum(isinstance(module, nn.BatchNorm2d) for module in model.modules())

    converted = convert_to_sync_batchnorm(model, "sync_bn", world_size=2, device_type="cuda")
    synced = [module for module in converted.modules() if isinstance(module, nn.SyncBatchNorm)]
    assert len(synced) == trainable_norms > 0
    assert not [module for module in converted.modules() if type(module) is nn.BatchNorm2d]
    frozen = converted.backbone.body.layer1  # freeze_at 2: stem and res2 stay frozen
    assert all(type(module) is not nn.SyncBatchNorm for module in frozen.modules())
    assert any(isinstance(module, FrozenBatchNorm2d) for module in frozen.modules())
    assert all(parameter is weights[name] for name, parameter in converted.named_parameters())  # the same

    other = build_model(
        model_params({"backbone": {"depth": 18, "norm": "bn", "freeze_at": 2}}), num_classes=3
    )
    assert convert_to_sync_batchnorm(other, "bn", world_size=2, device_type="cuda") is other


@pytest.mark.parametrize(
    ("world_size", "device_type", "message"),
    [
        (1, "cuda", r"this training run has one process: there is nothing to synchronise .*norm: bn"),
        (
            2,
            "cpu",
            r"trains on cpu: torch's SyncBatchNorm runs on cuda and npu only\. Set model\.backbone\.norm: bn",
        ),
    ],
)
def test_sync_bn_is_refused_on_one_process_and_on_cpu(world_size, device_type, message):
    with pytest.raises(SyncBatchNormError, match=message):
        convert_to_sync_batchnorm(_sync_bn_model(), "sync_bn", world_size, device_type)


def test_torchs_sync_batch_norm_refuses_cpu_training_in_a_process_group(tmp_path):
    """What the CPU refusal above stands for, asked of this torch in a 1-process gloo group."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        norm = nn.SyncBatchNorm(4).train()
        with pytest.raises(ValueError, match="SyncBatchNorm expected input tensor to be on GPU"):
            norm(torch.randn(2, 4, 3, 3))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize(
    ("backbone", "frozen_eps"),
    [
        ({"norm": "frozen_bn"}, 1e-5),
        ({"norm": "frozen_bn", "frozen_bn_eps": 0.0, "frozen_bn_arithmetic": "torchvision"}, 0.0),
        ({"norm": "bn", "freeze_at": 2, "frozen_bn_eps": 0.0}, 0.0),  # frozen stages; the rest BN's 1e-5
    ],
)
def test_frozen_norms_take_frozen_bn_eps(backbone, frozen_eps):
    """torchvision's COCO weights run with eps 0 (its builder's overwrite_eps(model, 0.0))."""
    with torch.device("meta"):
        model = build_model(model_params({"backbone": {"depth": 18, **backbone}}), num_classes=3)
    frozen = [m.eps for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    trainable = [m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert frozen and set(frozen) == {frozen_eps}
    assert set(trainable) <= {1e-5}
