"""The `torchvision` recipe gives torchvision's fasterrcnn_resnet50_fpn detections, bit for bit.

torchvision's model is built as `fasterrcnn_resnet50_fpn` builds it for pretrained weights (frozen BN, its own
GeneralizedRCNNTransform untouched); ours from the recipe as `kedro run` resolves it (globals.yml `recipe`),
with torchvision's state dict through the weights converter. Both run the same photo-sized images once; every
stage is recorded on the way, so a difference names the first stage it appears in.
"""

import shutil

import pytest
import torch
from model_configs import model_params
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d
from torchvision_like import photo, realistic_

from frcnn_pipeline.framework.parameter_docs import CONF, load_parameters
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.modeling.anchors import FixedStrideAnchorGenerator
from frcnn_pipeline.modeling.backbone import FEATURE_STRIDES
from frcnn_pipeline.weights import convert_state_dict

NUM_CLASSES = 3  # foreground; torchvision counts the background too
# Inputs H x W of at least 800 x 1200 px, resized to 800 on the short side: landscape 800 x 1200, padded to
# 800 x 1216 (25 and 38 cells of 32: odd and even); portrait 1240 x 800 (1240.89 floored, detectron2 would
# round), padded to 1248 x 800 (39 and 25 cells: P6's inferred stride is off on both axes).
IMAGE_SIZES = {"landscape": (900, 1350), "portrait": (1396, 900)}
PADDED_SIZES = {"landscape": (800, 1216), "portrait": (1248, 800)}
# (name, module path, what to keep of the module's output), in the order the data flows
STAGES = (
    ("normalised batch", "transform", lambda out: out[0].tensors),
    ("backbone and FPN", "backbone", lambda out: list(out.values())),
    ("anchors", "rpn.anchor_generator", lambda out: out),
    ("RPN objectness and deltas", "rpn.head", lambda out: [*out[0], *out[1]]),
    ("proposals", "rpn", lambda out: out[0]),
    ("RoIAlign", "roi_heads.box_roi_pool", lambda out: out),
    ("box head", "roi_heads.box_head", lambda out: out),
    ("box predictor", "roi_heads.box_predictor", list),
)


def torchvision_recipe(tmp_path) -> dict:
    """`params:model` with `recipe: torchvision` in an env's globals.yml, as `kedro run --env` reads it."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF / "base", conf / "base")
    (conf / "torchvision_env").mkdir()
    (conf / "torchvision_env" / "globals.yml").write_text("recipe: torchvision\n")
    return load_parameters("torchvision_env", conf_source=conf)["model"]


def _record(model: torch.nn.Module, image: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """Each stage's output tensors on one image, and the detections."""
    outputs, hooks = {}, []
    for name, path, keep in STAGES:

        def hook(_module, _inputs, output, name=name, keep=keep):
            kept = keep(output)
            outputs[name] = kept if isinstance(kept, list) else [kept]

        hooks.append(model.get_submodule(path).register_forward_hook(hook))
    try:
        with torch.no_grad():
            (detections,) = model([image])
    finally:
        for hook in hooks:
            hook.remove()
    outputs["detections"] = [detections["boxes"], detections["scores"], detections["labels"]]
    return outputs


def _build_both(recipe: dict, depth: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """torchvision's model as its builder makes it for pretrained weights, and ours from `recipe` with
    torchvision's state dict through the weights converter."""
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(
        backbone_name=f"resnet{depth}", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3
    )
    reference = TorchvisionFasterRCNN(backbone, num_classes=NUM_CLASSES + 1).eval()
    realistic_(reference)
    ours = build_model(
        model_params({**recipe, "backbone": {**recipe["backbone"], "depth": depth}}), NUM_CLASSES
    ).eval()
    state, report = convert_state_dict(reference.state_dict(), ours.state_dict())
    assert set(report.status) == {"mapped"}
    ours.load_state_dict(state)
    return reference, ours


@pytest.fixture(scope="module")
def recipe(module_tmp):
    return torchvision_recipe(module_tmp("recipe"))


@pytest.fixture(scope="module")
def both_models(recipe):
    return _build_both(recipe, depth=50)


@pytest.fixture(scope="module")
def recorded(both_models):
    """Per orientation: (torchvision's stages, ours)."""
    reference, ours = both_models
    runs = {}
    for seed, (orientation, size) in enumerate(IMAGE_SIZES.items()):
        image = photo(*size, seed)
        # torchvision takes 0-1 floats, made the usual way (ToTensor, convert_image_dtype): uint8 / 255
        runs[orientation] = (_record(reference, image.float() / 255), _record(ours, image))
    return runs


@pytest.mark.parametrize("orientation", IMAGE_SIZES)
@pytest.mark.parametrize("stage", [name for name, _, _ in STAGES] + ["detections"])
def test_every_stage_is_bit_identical(recorded, orientation, stage):
    theirs, ours = (run[stage] for run in recorded[orientation])
    assert len(ours) == len(theirs)
    for position, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        assert mine.shape == reference.shape, f"{stage} [{position}]: shapes differ"
        assert mine.dtype == reference.dtype, f"{stage} [{position}]: dtypes differ"
        difference = (mine.double() - reference.double()).abs().max().item() if mine.numel() else 0.0
        assert torch.equal(mine, reference), f"{stage} [{position}]: differs by up to {difference}"


@pytest.mark.parametrize("orientation", IMAGE_SIZES)
def test_the_images_are_photo_sized_and_fully_detected(recorded, orientation):
    theirs, _ = recorded[orientation]
    assert tuple(theirs["normalised batch"][0].shape[-2:]) == PADDED_SIZES[orientation]
    assert len(theirs["detections"][0]) == 100


def test_the_default_stride_rule_differs_from_torchvision_on_p6_only(both_models):
    """At 800 px P6 has 13 cells: torchvision infers the stride 800 // 13 = 61; the default rule keeps 64."""
    reference, _ = both_models
    images = ImageList(torch.zeros(1, 3, 800, 1216), [(800, 1216)])
    features = [torch.zeros(1, 1, -(-800 // s), 1216 // s) for s in FEATURE_STRIDES]
    anchors = model_params({"anchors": {"round": True}}).anchors
    assert anchors.stride_rule == "detectron2"
    by_rule = {
        rule: FixedStrideAnchorGenerator(
            anchors.sizes, anchors.aspect_ratios, FEATURE_STRIDES, True, stride_rule=rule
        )(images, features)[0]
        for rule in ("detectron2", "torchvision")
    }
    with torch.no_grad():
        assert torch.equal(by_rule["torchvision"], reference.rpn.anchor_generator(images, features)[0])
    p6 = 13 * 19 * 3  # P6's anchors come last
    assert torch.equal(by_rule["torchvision"][:-p6], by_rule["detectron2"][:-p6])
    # the last anchor: P6's bottom-right cell, aspect ratio 2 (362 px above and below its centre)
    assert by_rule["torchvision"][-1, 1].item() == 12 * 61 - 362
    assert by_rule["detectron2"][-1, 1].item() == 12 * 64 - 362


def test_float64_matches_torchvision_in_float64(recipe):
    """`model.double()` runs in float64 throughout (anchors, RPN, RoIAlign, box head), as torchvision does.

    R-18 at 64 px with 100 proposals, the same in both (float64 convolutions are slow on a CPU)."""
    reference, ours = (model.double() for model in _build_both(recipe, depth=18))
    reference.transform.min_size, reference.transform.max_size = (64,), 96
    ours.transform.min_size_test, ours.transform.max_size = 64, 96
    for model in (reference, ours):
        model.rpn._post_nms_top_n["testing"] = 100
    image = photo(80, 120, seed=7)
    with torch.no_grad():
        (theirs,) = reference([image.double() / 255])
        (mine,) = ours([image])
    assert mine["boxes"].dtype == torch.float64 and len(mine["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(mine[key], theirs[key]), key


@pytest.mark.parametrize("static", [False, True])
def test_a_small_model_trains_and_predicts_in_float64(static):
    config = {
        "backbone": {"depth": 18, "norm": "bn", "freeze_at": 0, "fpn_channels": 16},
        "input": {"min_size_train": [64], "min_size_test": 64, "max_size": 96, "fixed_size": [96, 96]},
        "anchors": {"sizes": [8, 16, 32, 64, 128]},
        "roi_heads": {"fc_dim": 32, "score_thresh_test": 0.0},
        "static_shapes": {"enabled": static, "max_gt_boxes": 4},
    }
    torch.manual_seed(0)
    model = build_model(model_params(config), num_classes=2).double()
    image = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)
    target = {
        "boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0]], dtype=torch.float64),
        "labels": torch.tensor([1]),
    }
    losses = model.train()([image], [target])
    assert {name: loss.dtype for name, loss in losses.items()} == dict.fromkeys(losses, torch.float64)
    sum(losses.values()).backward()
    assert model.roi_heads.box_predictor.bbox_pred.weight.grad.dtype == torch.float64
    with torch.no_grad():
        (detections,) = model.eval()([image])
    assert detections["boxes"].dtype == detections["scores"].dtype == torch.float64
    assert len(detections["boxes"]) > 0


@pytest.mark.parametrize("static", [False, True])
def test_pixel_scale_1_normalises_as_torchvision_in_either_shape_mode(recipe, static):
    small = {"min_size_test": 64, "max_size": 96, "fixed_size": [64, 96] if static else None}
    config = {
        **recipe,
        "backbone": {**recipe["backbone"], "depth": 18, "fpn_channels": 16},
        "input": {**recipe["input"], **small},
        "static_shapes": {"enabled": static},
    }
    transform = build_model(model_params(config), NUM_CLASSES).eval().transform
    image = photo(64, 96, seed=3)
    reference = GeneralizedRCNNTransform(64, 96, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    with torch.no_grad():
        expected = reference.normalize(image.float() / 255)
        assert torch.equal(transform([image])[0].tensors[0], expected)
