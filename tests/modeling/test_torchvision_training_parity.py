"""One training step of the `torchvision` recipe gives torchvision's losses and gradients.

torchvision's fasterrcnn_resnet50_fpn is built as its builder builds it for pretrained weights (frozen BN,
conv1 and layer1 frozen, its own GeneralizedRCNNTransform untouched but for the test's min/max size); ours
from the recipe as `kedro run` resolves it, with the same sizes. The weights are one state dict as torchvision
saves it (BatchNorm2d, with num_batches_tracked), through the weights converter. Same images, targets and
seed: the same anchors and RoIs are drawn (both models use torchvision's BalancedPositiveNegativeSampler, in
the same order, and torchvision's RoIHeads adds the ground truth to the proposals in both), and the losses
are bit-identical. So are the gradients, except where our CPU RoIAlign backward (`layers.cpu_roi_align`)
sums in another order than torchvision's kernel: the backbone's and FPN's, measured at most 1.5e-6 of each
tensor's largest gradient (2 images, 2 cores); with torchvision's backward kernel forced, they are too.
"""

import shutil

import pytest
import torch
import torchvision
from model_configs import model_params
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FasterRCNN as TorchvisionFasterRCNN
from torchvision.ops import FrozenBatchNorm2d

from frcnn_pipeline.framework.parameter_docs import CONF, load_parameters
from frcnn_pipeline.layers import cpu_roi_align
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.weights import convert_state_dict, load_checkpoint

NUM_CLASSES = 3  # foreground; torchvision counts the background too
MIN_SIZE, MAX_SIZE = 256, 384
# Landscape 300 x 450 resized to 256 x 384; portrait 410 x 300 to 349 x 256 (349.87 floored, detectron2
# rounds). The batch is padded to 352 x 384: 11 cells of 32 down, so P6's stride is torchvision's inferred
# 352 // 6 = 58, not 64.
IMAGE_SIZES = [(300, 450), (410, 300)]
# The last box of the first image is 111.99996 px square once resized: torchvision's level rule pools it
# (a ground-truth RoI, always sampled) on P3, detectron2's on P2.
TARGETS = [
    {"boxes": [[15.0, 20.0, 200.0, 170.0], [220.0, 40.0, 440.0, 290.0], [90.0, 130.0, 130.0, 170.0],
               [100.0, 60.0, 231.24995, 191.24995]],
     "labels": [1, 2, 3, 1]},
    {"boxes": [[10.0, 10.0, 290.0, 330.0], [160.0, 100.0, 270.0, 210.0]], "labels": [2, 1]},
]  # fmt: skip
SEED = 5
LOSSES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")
# Gradients that reach the backbone through RoIAlign's backward: ours sums its products in another order.
ROI_ALIGN_UPSTREAM = ("backbone.",)
# Allowed difference there, as a fraction of the tensor's largest gradient (measured: at most 1.5e-6).
ROI_ALIGN_BACKWARD_TOLERANCE = 2e-5


def torchvision_recipe(tmp_path) -> dict:
    """`params:model` with `recipe: torchvision` in an env's globals.yml, at the test's image sizes."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF / "base", conf / "base")
    (conf / "torchvision_env").mkdir()
    (conf / "torchvision_env" / "globals.yml").write_text("recipe: torchvision\n")
    model = load_parameters("torchvision_env", conf_source=conf)["model"]
    model["input"].update(min_size_train=[MIN_SIZE], min_size_test=MIN_SIZE, max_size=MAX_SIZE)
    return model


class RecordingSampler:
    """A model's own fg/bg sampler, keeping what it drew."""

    def __init__(self, sampler) -> None:
        self.sampler = sampler
        self.drawn: list[torch.Tensor] = []

    def __call__(self, labels: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        positive, negative = self.sampler(labels)
        self.drawn += [*positive, *negative]
        return positive, negative


def _images() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in IMAGE_SIZES]


def _targets(label_ids: list[int] | None = None) -> list[dict[str, torch.Tensor]]:
    """TARGETS, each label k replaced by `label_ids[k]` where given."""
    ids = label_ids or list(range(NUM_CLASSES + 1))
    return [{"boxes": torch.tensor(t["boxes"]), "labels": torch.tensor(t["labels"]).apply_(ids.__getitem__)}
            for t in TARGETS]  # fmt: skip


def _saved_state_dict(path, num_classes: int = NUM_CLASSES + 1) -> dict[str, torch.Tensor]:
    """fasterrcnn_resnet50_fpn without pretrained weights (so BatchNorm2d), saved and loaded as a user would,
    its BN statistics those of small images like the test's: activations keep their scale, as when trained."""
    torch.manual_seed(0)
    source = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes
    )
    for layer in source.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.momentum = None  # running statistics = this batch's
    with torch.no_grad():
        source.backbone.body.train()(source.transform.normalize(torch.rand(3, 128, 128))[None])
    torch.save(source.state_dict(), path)
    return load_checkpoint(path)


def _torchvision_model(
    state: dict[str, torch.Tensor], num_classes: int = NUM_CLASSES + 1
) -> TorchvisionFasterRCNN:
    """What fasterrcnn_resnet50_fpn builds for pretrained weights: FrozenBatchNorm2d, layer2-4 trainable."""
    body = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    model = TorchvisionFasterRCNN(
        _resnet_fpn_extractor(body, trainable_layers=3),
        num_classes=num_classes,
        min_size=MIN_SIZE,
        max_size=MAX_SIZE,
    )
    model.load_state_dict(state)  # FrozenBatchNorm2d drops num_batches_tracked itself
    return model


def _training_step(
    model, images: list[torch.Tensor], backwards: dict[str, int], targets: list[dict] | None = None
) -> dict:
    """Losses, the anchors and RoIs drawn, and the gradients of the losses' sum: one set per entry of
    `backwards`, RoIAlign's CPU backward taking its products up to that many map cells per sample."""
    model.train()
    model.rpn.fg_bg_sampler = RecordingSampler(model.rpn.fg_bg_sampler)
    model.roi_heads.fg_bg_sampler = RecordingSampler(model.roi_heads.fg_bg_sampler)
    torch.manual_seed(SEED)
    losses = model(images, targets or _targets())
    names, parameters = zip(*((n, p) for n, p in model.named_parameters() if p.requires_grad), strict=True)
    gradients = {}
    for position, (backward, cells) in enumerate(backwards.items()):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(cpu_roi_align, "SEPARABLE_MAX_CELLS_PER_SAMPLE", cells)
            grads = torch.autograd.grad(
                sum(losses.values()), parameters, retain_graph=position < len(backwards) - 1
            )
        gradients[backward] = dict(zip(names, grads, strict=True))
    return {
        "losses": {name: loss.detach() for name, loss in losses.items()},
        "anchors drawn": model.rpn.fg_bg_sampler.drawn,
        "RoIs drawn": model.roi_heads.fg_bg_sampler.drawn,
        "gradients": gradients,
    }


# RoIAlign's CPU backward: ours (its products where they are cheaper, as in training), torchvision's kernel.
OURS = {"our RoIAlign backward": cpu_roi_align.SEPARABLE_MAX_CELLS_PER_SAMPLE}
KERNEL = {"torchvision's RoIAlign backward": 0}


@pytest.fixture(scope="module")
def steps(module_tmp) -> tuple[dict, dict]:
    """torchvision's training step and ours, from the same saved weights, images, targets and seed."""
    tmp_path = module_tmp("training_parity")
    images = _images()
    state = _saved_state_dict(tmp_path / "fasterrcnn_resnet50_fpn.pth")
    reference = _training_step(_torchvision_model(state), [image / 255 for image in images], KERNEL)
    model = build_model(model_params(torchvision_recipe(tmp_path)), NUM_CLASSES)
    converted, _ = convert_state_dict(state, model.state_dict())
    model.load_state_dict(converted)
    return _training_step(model, images, {**OURS, **KERNEL}), reference


def _relative_differences(ours: dict, reference: dict) -> dict[str, float]:
    """max |ours - torchvision| / max |torchvision| per gradient tensor."""
    return {
        name: ((ours[name] - grad).abs().max() / grad.abs().max().clamp(min=1e-30)).item()
        for name, grad in reference.items()
    }


def test_the_same_anchors_and_rois_are_drawn_and_the_losses_are_bit_identical(steps):
    ours, reference = steps
    for draws in ("anchors drawn", "RoIs drawn"):
        assert len(ours[draws]) == len(reference[draws]) == 4  # positives, negatives of 2 images
        assert all(torch.equal(a, b) for a, b in zip(ours[draws], reference[draws], strict=True)), draws
    assert ours["losses"].keys() == set(LOSSES) == reference["losses"].keys()
    differences = {n: (ours["losses"][n] - reference["losses"][n]).abs().item() for n in LOSSES}
    assert all(torch.equal(ours["losses"][n], reference["losses"][n]) for n in LOSSES), differences


def test_gradients_are_bit_identical_but_upstream_of_roi_align_within_its_tolerance(steps):
    ours, reference = steps
    (expected,) = reference["gradients"].values()
    differences = _relative_differences(ours["gradients"][next(iter(OURS))], expected)
    downstream = {name: d for name, d in differences.items() if not name.startswith(ROI_ALIGN_UPSTREAM)}
    assert set(downstream.values()) == {0.0}, downstream  # RPN and box head: bit for bit
    upstream = {name: d for name, d in differences.items() if name.startswith(ROI_ALIGN_UPSTREAM)}
    assert max(upstream.values()) < ROI_ALIGN_BACKWARD_TOLERANCE, upstream


def test_with_torchvisions_roi_align_backward_every_gradient_is_bit_identical(steps):
    """The one difference above is the order of RoIAlign's backward sums: with torchvision's kernel
    there too (ours takes it where its own products would cost more), nothing differs."""
    ours, reference = steps
    (expected,) = reference["gradients"].values()
    differences = _relative_differences(ours["gradients"][next(iter(KERNEL))], expected)
    assert set(differences.values()) == {0.0}, {name: d for name, d in differences.items() if d}


# COCO category ids (and torchvision's names) of labels 1..3 in the coco_category_ids test
COCO_CATEGORIES = [(3, "car"), (17, "cat"), (88, "teddy bear")]
COCO_ROWS = 91


@pytest.fixture(scope="module")
def coco_steps(module_tmp) -> tuple[dict, dict]:
    """A 91-class torchvision detector trained on labels that are COCO category ids, and ours with
    `predictor_rows: coco_category_ids` on labels 1..3, from the same saved weights, images and seed."""
    tmp_path = module_tmp("coco_rows")
    images = _images()
    state = _saved_state_dict(tmp_path / "fasterrcnn_resnet50_fpn_91.pth", COCO_ROWS)
    reference_targets = _targets([0, *(category_id for category_id, _ in COCO_CATEGORIES)])
    reference = _training_step(
        _torchvision_model(state, COCO_ROWS), [image / 255 for image in images], KERNEL, reference_targets
    )
    recipe = torchvision_recipe(tmp_path)
    recipe["roi_heads"]["predictor_rows"] = "coco_category_ids"
    model = build_model(model_params(recipe), NUM_CLASSES)
    converted, report = convert_state_dict(state, model.state_dict(), categories=COCO_CATEGORIES)
    model.load_state_dict(converted)
    return _training_step(model, images, KERNEL), reference, report


def test_coco_category_rows_train_as_torchvision_on_category_ids(coco_steps):
    """All 91 rows stay; labels 1..3 train the rows of ids 3, 17, 88: the same losses and gradients."""
    ours, reference, report = coco_steps
    assert all(torch.equal(ours["losses"][n], reference["losses"][n]) for n in LOSSES)
    assert all(torch.equal(a, b) for a, b in zip(ours["RoIs drawn"], reference["RoIs drawn"], strict=True))
    (expected,) = reference["gradients"].values()
    differences = _relative_differences(ours["gradients"][next(iter(KERNEL))], expected)
    assert set(differences.values()) == {0.0}, {name: d for name, d in differences.items() if d}
    [rows] = report[report.target_key == "roi_heads.label_rows"].itertuples()
    assert rows.status == "mapped" and rows.note.endswith("ids [3, 17, 88] by label")
