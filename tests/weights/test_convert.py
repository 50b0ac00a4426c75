import pickle
import re

import numpy as np
import pytest
import torch
import torchvision
from c2_layout import c2_from_torchvision, c2_resnet_shapes
from model_configs import model_params

from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.weights import WeightsConversionError, convert_state_dict, load_checkpoint
from frcnn_pipeline.weights.convert import FROZEN_BN_BATCH_COUNT

MSRA_R50 = {"backbone": {"depth": 50, "norm": "frozen_bn", "stride_in_1x1": True}}


def _meta_model_state(depth: int, norm: str = "frozen_bn") -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return build_model(
            model_params({"backbone": {"depth": depth, "norm": norm}}), num_classes=3
        ).state_dict()


def _zeros(shapes):
    return {key: np.zeros(shape, np.float32) for key, shape in shapes.items()}


@pytest.mark.parametrize(
    ("depth", "layout", "count"), [(50, "A", 214), (50, "B", 268), (101, "A", 418), (101, "B", 523)]
)
def test_every_backbone_key_maps_with_real_shapes(depth, layout, count):
    shapes = c2_resnet_shapes(depth, layout)
    assert len(shapes) == count
    model_state = _meta_model_state(depth)
    state, report = convert_state_dict(_zeros(shapes), model_state, source_name=f"R-{depth}_{layout}.pkl")
    body_keys = {
        k for k in model_state if k.startswith("backbone.body.") and not k.endswith("num_batches_tracked")
    }
    mapped = report[report.status == "mapped"]
    assert set(mapped.target_key) == body_keys
    assert (
        not report.target_key[report.status.isin(["missing", "shape_mismatch"])]
        .str.startswith("backbone.body")
        .any()
    )
    assert (report.status != "unused").all()
    expected_unused = set(report.source_key[report.status == "expected_unused"])
    zero_biases = {k for k in shapes if re.match(r"res\d_\d+_branch(1|2a|2b|2c)_b$", k)}
    assert expected_unused == {"conv1_b", "fc1000_w", "fc1000_b"} | zero_biases
    assert len(zero_biases) == (0 if layout == "B" else {50: 52, 101: 103}[depth])
    assert state["backbone.body.layer3.0.conv1.weight"].shape == (256, 512, 1, 1)
    if layout == "A":
        assert (state["backbone.body.bn1.running_mean"] == 0).all()
        assert state["backbone.body.layer1.0.bn1.running_var"].allclose(torch.tensor(1 - 1e-5))


def _random_msra_resnet50() -> torch.nn.Module:
    """A torchvision ResNet-50 with random weights and BN statistics, stride on the 1x1 like MSRA's."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50()
    with torch.no_grad():
        for module in resnet.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.0)
                module.bias.uniform_(-0.1, 0.1)
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    for stage in (resnet.layer2, resnet.layer3, resnet.layer4):
        stage[0].conv1.stride, stage[0].conv2.stride = (2, 2), (1, 1)
    return resnet.eval()


def _resnet_features(resnet, x):
    x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
    features = []
    for stage in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
        x = stage(x)
        features.append(x)
    return features


@pytest.mark.parametrize("layout", ["A", "B"])
def test_msra_pickle_gives_the_same_features(layout, tmp_path):
    reference = _random_msra_resnet50()
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps(c2_from_torchvision(reference.state_dict(), 50, layout), protocol=2))
    torch.manual_seed(1)
    model = build_model(model_params(MSRA_R50), num_classes=3).eval()
    state, _ = convert_state_dict(load_checkpoint(path), model.state_dict(), source_name=str(path))
    model.load_state_dict(state)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours = list(model.backbone.body(x).values())
        expected = _resnet_features(reference, x)
    for level, (got, want) in enumerate(zip(ours, expected, strict=True)):
        assert got.shape == want.shape
        assert (got - want).abs().max() < 1e-5, f"res{level + 2}"


def test_detectron2_bn_fold_keeps_running_var_one(tmp_path):
    blobs = _zeros(c2_resnet_shapes(50, "A"))
    state, report = convert_state_dict(blobs, _meta_model_state(50), bn_fold="detectron2")
    assert (state["backbone.body.layer4.2.bn3.running_var"] == 1).all()
    assert report.note.str.contains("running_var = 1$").any()


def _torchvision_like_config():
    return {
        "backbone": {"depth": 50, "norm": "bn", "freeze_at": 0, "stride_in_1x1": False},
        "input": {
            "format": "RGB",
            "pixel_mean": [123.675, 116.28, 103.53],
            "pixel_std": [58.395, 57.12, 57.375],
            "min_size_test": 64,
            "max_size": 64,
            "resize_rounding": "torchvision",
        },
        "anchors": {"round": True},
        "roi_heads": {"pooler_aligned": False, "pooler_sampling_ratio": 2},
    }


def test_torchvision_detector_state_dict_round_trips_including_legacy_names():
    torch.manual_seed(0)
    reference = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=4, min_size=64, max_size=64
    ).eval()
    legacy = {  # torchvision < 0.13 names of the FPN and RPN convs
        re.sub(
            r"^(backbone\.fpn\.\w+_blocks\.\d)\.0\.",
            r"\1.",
            re.sub(r"^rpn\.head\.conv\.0\.0\.", "rpn.head.conv.", k),
        ): v
        for k, v in reference.state_dict().items()
    }
    assert "rpn.head.conv.weight" in legacy and "backbone.fpn.inner_blocks.0.weight" in legacy
    torch.manual_seed(1)
    model = build_model(model_params(_torchvision_like_config()), num_classes=3).eval()
    state, report = convert_state_dict(legacy, model.state_dict())
    assert set(report.status) == {"mapped"}
    model.load_state_dict(state)
    image = torch.randint(0, 256, (3, 64, 64)).float()
    with torch.no_grad():
        batch = model.transform([image])[0].tensors
        expected, ours = reference.backbone(batch), model.backbone(batch)
        # Our detectron2-style modules configured like torchvision's must detect what torchvision does.
        reference.transform = model.transform
        reference_detections, our_detections = reference([image]), model([image])
    for name in expected:
        torch.testing.assert_close(ours[name], expected[name], rtol=0, atol=1e-5)
    assert len(our_detections[0]["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(our_detections[0][key], reference_detections[0][key], rtol=1e-5, atol=1e-5)


# BatchNorm2d layers of a ResNet-50: the stem's, 3 per bottleneck (16), one per stage's shortcut (4).
R50_BATCH_NORMS = 53


def _saved_by_torchvision(kind: str, path) -> dict[str, torch.Tensor]:
    """What torchvision saves with BatchNorm2d (its choice without pretrained weights): a detector or a
    ResNet-50, each with a num_batches_tracked per norm; written by torch.save."""
    torch.manual_seed(0)
    if kind == "detector":
        module = torchvision.models.detection.fasterrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=4
        )
    else:
        module = torchvision.models.resnet50(weights=None)
    torch.save(module.state_dict(), path)
    return module.state_dict()


@pytest.mark.parametrize("kind", ["detector", "resnet50"])
def test_frozen_bn_ignores_the_batch_counts_torchvision_saves(kind, tmp_path):
    saved = _saved_by_torchvision(kind, tmp_path / f"{kind}.pth")
    assert sum(key.endswith("num_batches_tracked") for key in saved) == R50_BATCH_NORMS
    model = build_model(model_params({"backbone": {"depth": 50, "stride_in_1x1": False}}), num_classes=3)
    state, report = convert_state_dict(
        load_checkpoint(tmp_path / f"{kind}.pth"), model.state_dict(), source_name=f"{kind}.pth"
    )
    counts = report[report.source_key.str.endswith("num_batches_tracked")]
    assert len(counts) == R50_BATCH_NORMS
    assert set(counts.status) == {"expected_unused"} and set(counts.note) == {FROZEN_BN_BATCH_COUNT}
    assert counts.target_key.str.startswith("backbone.body.").all()
    model.load_state_dict(state)  # strict: every key of the model, none extra
    for key, value in saved.items():
        target = key if kind == "detector" else f"backbone.body.{key}"
        if target in state:
            assert torch.equal(state[target], value), key
    if kind == "detector":
        assert set(report.status) == {"mapped", "expected_unused"}
    else:  # an ImageNet ResNet: the classifier is left out, FPN and heads keep their initialisation
        assert set(report.source_key[report.status == "expected_unused"]) - set(counts.source_key) == {
            "fc.weight",
            "fc.bias",
        }
        classifier = report[report.source_key.str.startswith("fc.")]
        assert set(classifier.note) == {"ImageNet classifier, not part of a detector"}
        assert not report.target_key[report.status == "missing"].str.startswith("backbone.body.").any()


def test_trainable_bn_takes_the_batch_counts_and_frozen_stages_ignore_theirs(tmp_path):
    """norm: bn with freeze_at 2: the stem's and res2's norms are frozen, the later stages' train."""
    saved = _saved_by_torchvision("detector", tmp_path / "detector.pth")
    saved["backbone.body.layer4.2.bn3.num_batches_tracked"].fill_(7)
    model = build_model(
        model_params({"backbone": {"depth": 50, "norm": "bn", "stride_in_1x1": False}}), num_classes=3
    )
    state, report = convert_state_dict(saved, model.state_dict())
    counts = report[report.source_key.str.endswith("num_batches_tracked")]
    frozen = counts.target_key.str.match(r"backbone\.body\.(bn1|layer1)\.")
    assert set(counts.status[frozen]) == {"expected_unused"} and frozen.sum() == 1 + 3 * 3 + 1
    assert set(counts.status[~frozen]) == {"mapped"}
    assert state["backbone.body.layer4.2.bn3.num_batches_tracked"] == 7
    model.load_state_dict(state)


def _d2_block(m: re.Match[str]) -> str:
    return f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}."


_TO_D2 = [
    (r"^backbone\.body\.conv1\.", "backbone.bottom_up.stem.conv1."),
    (r"^backbone\.body\.bn1\.", "backbone.bottom_up.stem.conv1.norm."),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.", lambda m: _d2_block(m) + "shortcut."),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.", lambda m: _d2_block(m) + "shortcut.norm."),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.conv(\d)\.", lambda m: _d2_block(m) + f"conv{m[3]}."),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.bn(\d)\.", lambda m: _d2_block(m) + f"conv{m[3]}.norm."),
    (r"^backbone\.fpn\.inner_blocks\.(\d)\.0\.", lambda m: f"backbone.fpn_lateral{int(m[1]) + 2}."),
    (r"^backbone\.fpn\.layer_blocks\.(\d)\.0\.", lambda m: f"backbone.fpn_output{int(m[1]) + 2}."),
    (r"^rpn\.head\.conv\.0\.0\.", "proposal_generator.rpn_head.conv."),
    (r"^rpn\.head\.cls_logits\.", "proposal_generator.rpn_head.objectness_logits."),
    (r"^rpn\.head\.bbox_pred\.", "proposal_generator.rpn_head.anchor_deltas."),
    (r"^roi_heads\.box_head\.fc6\.", "roi_heads.box_head.fc1."),
    (r"^roi_heads\.box_head\.fc7\.", "roi_heads.box_head.fc2."),
]


def _d2_name(key: str) -> str:
    for pattern, replacement in _TO_D2:
        key = re.sub(pattern, replacement, key)
    return key


def _as_detectron2_checkpoint(state):
    """A detectron2 model-zoo checkpoint of the same weights: d2 names, background LAST, no bg box rows."""
    model = {}
    for key, tensor in state.items():
        name, value = _d2_name(key), tensor.numpy()
        if name.startswith("roi_heads.box_predictor.cls_score."):
            value = np.concatenate([value[1:], value[:1]])
        if name.startswith("roi_heads.box_predictor.bbox_pred."):
            value = value[4:]
        model[name] = value
    return {"model": model, "__author__": "Detectron2 Model Zoo"}


D2_TINY = {"backbone": {"depth": 18, "fpn_channels": 16}, "roi_heads": {"fc_dim": 32}}


def test_detectron2_model_zoo_checkpoint_round_trips(tmp_path):
    torch.manual_seed(0)
    original = build_model(model_params(D2_TINY), num_classes=3).state_dict()
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps(_as_detectron2_checkpoint(original)))
    torch.manual_seed(1)
    state, report = convert_state_dict(
        load_checkpoint(path), build_model(model_params(D2_TINY), 3).state_dict()
    )
    assert set(report.status) == {"mapped"}
    for key, value in original.items():
        if key.startswith("roi_heads.box_predictor.bbox_pred."):
            assert (state[key][:4] == 0).all()
            torch.testing.assert_close(state[key][4:], value[4:])
        else:
            torch.testing.assert_close(state[key], value, msg=key)


def test_a_checkpoint_with_other_classes_keeps_new_predictor_heads(tmp_path):
    torch.manual_seed(0)
    checkpoint = _as_detectron2_checkpoint(build_model(model_params(D2_TINY), num_classes=80).state_dict())
    model_state = build_model(model_params(D2_TINY), num_classes=3).state_dict()
    state, report = convert_state_dict(checkpoint, model_state)
    mismatched = report[report.status == "shape_mismatch"]
    assert set(mismatched.target_key) == {
        f"roi_heads.box_predictor.{m}.{p}" for m in ("cls_score", "bbox_pred") for p in ("weight", "bias")
    }
    torch.testing.assert_close(
        state["roi_heads.box_predictor.cls_score.weight"],
        model_state["roi_heads.box_predictor.cls_score.weight"],
    )


def test_r101_weights_for_an_r50_model_are_refused_with_the_keys():
    blobs = _zeros(c2_resnet_shapes(101, "B"))
    with pytest.raises(
        WeightsConversionError,
        match=(
            r"R-101.pkl \(caffe2\) leaves 255 backbone weight\(s\) unloaded:\n  unused: res4_6_branch2a_w "
            r"\(256, 1024, 1, 1\) -> backbone.body.layer3.6.conv1.weight\n(.|\n)*and 240 more\n"
            r"Whole blocks missing or unused: does model.backbone.depth match"
        ),
    ):
        convert_state_dict(blobs, _meta_model_state(50), source_name="R-101.pkl")


def test_r50_weights_for_an_r101_model_are_refused():
    with pytest.raises(
        WeightsConversionError, match=r"missing: - -> backbone.body.layer3.6.conv1.weight \(256, 1024, 1, 1\)"
    ):
        convert_state_dict(_zeros(c2_resnet_shapes(50, "B")), _meta_model_state(101), source_name="R-50.pkl")


def test_folded_bn_into_trainable_batchnorm_is_refused():
    with pytest.raises(WeightsConversionError, match=r"need frozen BN.*model\.backbone\.norm: frozen_bn"):
        convert_state_dict(_zeros(c2_resnet_shapes(50, "A")), _meta_model_state(50, norm="bn"))


def test_a_non_zero_branch_bias_is_not_silently_dropped():
    blobs = _zeros(c2_resnet_shapes(50, "A"))
    blobs["res3_1_branch2b_b"] = np.ones(128, np.float32)
    with pytest.raises(WeightsConversionError, match="unused: res3_1_branch2b_b"):
        convert_state_dict(blobs, _meta_model_state(50))


@pytest.mark.parametrize(
    ("checkpoint", "message"),
    [
        ({"conv1_w": "not an array"}, r"x.pkl: unsupported value for 'conv1_w' \(str\)"),
        (
            {"encoder.weight": np.zeros(2)},
            r"x.pkl: unrecognised checkpoint layout \(first keys: \['encoder.weight'\]\)",
        ),
        ([np.zeros(2)], "x.pkl: expected a mapping of weights, got list"),
    ],
)
def test_unusable_checkpoints_are_clear_errors(checkpoint, message):
    with pytest.raises(WeightsConversionError, match=message):
        convert_state_dict(checkpoint, _meta_model_state(50), source_name="x.pkl")
