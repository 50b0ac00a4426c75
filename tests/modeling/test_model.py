import pytest
import torch
from model_configs import model_params
from torchvision.models import resnet
from torchvision.ops import FrozenBatchNorm2d

from frcnn_pipeline.modeling import FasterRCNN, build_model
from frcnn_pipeline.modeling.backbone import build_resnet_fpn_backbone

TINY = {
    "backbone": {"depth": 18, "norm": "bn", "freeze_at": 0, "fpn_channels": 16},
    "input": {"min_size_train": [64, 80], "min_size_test": 64, "max_size": 100},
    "anchors": {"sizes": [8, 16, 32, 64, 128]},
    "rpn": {"batch_size_per_image": 32, "pre_nms_topk_train": 100, "post_nms_topk_train": 50},
    "roi_heads": {"batch_size_per_image": 16, "fc_dim": 32},
}


def test_defaults_are_detectron2_r50_fpn():
    config = model_params().model_dump()
    assert config["backbone"] == {
        "depth": 50, "norm": "frozen_bn", "freeze_at": 2, "stride_in_1x1": True, "fpn_channels": 256,
        "frozen_bn_arithmetic": "detectron2", "frozen_bn_eps": 1e-5,
    }  # fmt: skip
    assert config["input"]["min_size_train"] == list(range(640, 801, 32))
    assert (config["input"]["max_size"], config["input"]["min_size_test"]) == (1333, 800)
    assert config["input"]["pixel_mean"] == [103.53, 116.28, 123.675]
    assert config["rpn"]["pre_nms_topk_train"] == 2000 and config["rpn"]["post_nms_topk_test"] == 1000
    assert (
        config["roi_heads"]["batch_size_per_image"] == 512
        and config["roi_heads"]["positive_fraction"] == 0.25
    )
    assert config["roi_heads"]["pooler_aligned"] is True and config["roi_heads"]["smooth_l1_beta"] == 0.0


def test_partial_config_takes_the_defaults():
    config = model_params({"backbone": {"depth": 18}, "input": {"min_size_train": 800}}).model_dump()
    assert config["backbone"] == {**model_params().model_dump()["backbone"], "depth": 18}
    assert config["input"]["min_size_train"] == [800]  # one size in YAML means a list of one
    assert config["roi_heads"] == model_params().model_dump()["roi_heads"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"backbone": {"detph": 50}},
            r"model.backbone.detph: unknown parameter; did you mean model.backbone.depth\?",
        ),
        ({"heads": {}}, r"model.heads: unknown parameter; did you mean model.roi_heads\?"),
        ({"zzz": {}}, r"model.zzz: unknown parameter; valid keys here: backbone, input, anchors"),
        ({"backbone": {"depth": 152}}, r"model.backbone.depth: 152 is not one of 18, 34, 50 or 101"),
        (
            {"anchors": {"sizes": [32, 64]}},
            r"model.anchors.sizes: \[32, 64\] has 2 item\(s\), needs 5 \(one per level P2..P6\)",
        ),
    ],
)
def test_bad_config_is_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_model(model_params(overrides), num_classes=3)


def test_stride_in_1x1_moves_the_stride_from_the_3x3():
    msra = build_resnet_fpn_backbone(model_params({"backbone": {"stride_in_1x1": True}}).backbone).body
    torchvision_style = build_resnet_fpn_backbone(
        model_params({"backbone": {"stride_in_1x1": False}}).backbone
    ).body
    for stage in ("layer2", "layer3", "layer4"):
        assert getattr(msra, stage)[0].conv1.stride == (2, 2) and getattr(msra, stage)[0].conv2.stride == (
            1,
            1,
        )
        block = getattr(torchvision_style, stage)[0]
        assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert isinstance(msra.layer1[0], resnet.Bottleneck) and msra.layer1[0].conv1.stride == (1, 1)


def test_freeze_at_freezes_stem_and_res2_with_frozen_batchnorm():
    backbone_cfg = model_params({"backbone": {**TINY["backbone"], "freeze_at": 2}}).backbone
    body = build_resnet_fpn_backbone(backbone_cfg).body
    assert not any(p.requires_grad for p in [*body.conv1.parameters(), *body.layer1.parameters()])
    assert all(p.requires_grad for p in body.layer2.parameters())
    assert isinstance(body.bn1, FrozenBatchNorm2d) and isinstance(body.layer1[0].bn1, FrozenBatchNorm2d)
    assert isinstance(body.layer2[0].bn1, torch.nn.BatchNorm2d)


def _tiny_batch():
    images = [
        torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8),
        torch.randint(0, 256, (3, 72, 50), dtype=torch.uint8),
    ]
    targets = [
        {
            "boxes": torch.tensor([[5.0, 6.0, 40.0, 50.0], [30.0, 10.0, 70.0, 30.0]]),
            "labels": torch.tensor([1, 3]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image without objects
    ]
    return images, targets


@pytest.mark.parametrize("depth", [18, 50])
def test_train_forward_backward(depth):
    torch.manual_seed(0)
    model = build_model(
        model_params({**TINY, "backbone": {**TINY["backbone"], "depth": depth}}), num_classes=3
    )
    assert isinstance(model, FasterRCNN) and model.num_classes == 3
    assert model.roi_heads.box_predictor.cls_score.out_features == 4
    model.train()
    losses = model(*_tiny_batch())
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.body.layer4[0].conv1.weight.grad is not None
    assert model.roi_heads.box_predictor.bbox_pred.weight.grad.abs().sum() > 0


def test_eval_predictions_are_in_input_pixels_with_labels_1_to_k():
    torch.manual_seed(0)
    model = build_model(
        model_params({**TINY, "roi_heads": {**TINY["roi_heads"], "score_thresh_test": 0.0}}), num_classes=3
    ).eval()
    images, _ = _tiny_batch()
    with torch.no_grad():
        predictions = model(images)
    for image, prediction in zip(images, predictions, strict=True):
        assert set(prediction) == {"boxes", "scores", "labels"}
        assert len(prediction["boxes"]) > 0
        height, width = image.shape[-2:]
        boxes = prediction["boxes"]
        assert boxes[:, 0::2].max() <= width and boxes[:, 1::2].max() <= height and boxes.min() >= 0
        # The resized image (64 px short side) is larger than the input, so unmapped boxes would overflow.
        assert boxes[:, 2].max() > 0.75 * width or boxes[:, 3].max() > 0.75 * height
        assert prediction["labels"].min() >= 1 and prediction["labels"].max() <= 3


def test_model_is_channels_last_compatible():
    torch.manual_seed(0)
    model = build_model(model_params(TINY), num_classes=2).to(memory_format=torch.channels_last).eval()
    with torch.no_grad():
        model([torch.rand(3, 64, 64) * 255])


def test_boxes_are_decoded_in_float32_under_autocast():
    torch.manual_seed(0)
    model = build_model(
        model_params({**TINY, "roi_heads": {**TINY["roi_heads"], "score_thresh_test": 0.0}}), num_classes=2
    )
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        anchors = model.rpn.anchor_generator(
            model.transform([torch.rand(3, 64, 64) * 255])[0], [torch.zeros(1, 1, 16, 16)] * 5
        )
        prediction = model.eval()([torch.rand(3, 64, 64) * 255])[0]
    assert anchors[0].dtype == torch.float32
    assert prediction["boxes"].dtype == torch.float32 and len(prediction["boxes"]) > 0


def test_a_single_training_size_may_be_a_plain_number():
    model = build_model(
        model_params({**TINY, "input": {**TINY["input"], "min_size_train": 72}}), num_classes=2
    )
    assert model.transform.min_size == (72,)
