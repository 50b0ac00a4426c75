"""The card recipe's model against detectron2 itself (issue #26), stage by stage and end to end.

tests/fixtures/detectron2/ was written by tools/detectron2_reference.py (its docstring: source, commit, how to
regenerate): detectron2's Faster R-CNN R-18-FPN with narrow heads, seeded weights in model-zoo layout, two
generated photos at 800 px. Our model is the card recipe at the same sizes, loaded through our converter.
Each stage starts from detectron2's own input to it (its resized pixels, its proposals, its sampled anchors
and RoIs), so a difference is that stage's own; the end-to-end test starts from the photos.
"""

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL
import pytest
import torch
from model_configs import model_params
from PIL import Image
from torch import Tensor
from torchvision.models.detection.image_list import ImageList

from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.weights.convert import convert_state_dict

FIXTURE = Path(__file__).parents[1] / "fixtures" / "detectron2"
# The card recipe (defaults) at the fixture's sizes; one training size, as the reference step used.
MODEL_CFG = {
    "backbone": {"depth": 18, "fpn_channels": 64},
    "roi_heads": {"fc_dim": 256},
    "input": {"min_size_train": [800]},
}
FEATURES = {"p2": "0", "p3": "1", "p4": "2", "p5": "3", "p6": "pool"}
# Losses are sums over the sampled anchors and RoIs, which detectron2 adds in another order (anchor order, or
# foreground first) than torchvision (sorted indices): float32 rounding of a 512-term sum.
LOSS_RTOL = 1e-5
# Stages whose arithmetic involves no conv or matmul kernel (bit-identical on any CPU).
KERNEL_FREE_STAGES = ("resize_and_normalise", "anchors", "roi_levels")
NUMERIC_STAGES = (
    *(f"backbone_{name}" for name in FEATURES),
    "rpn_logits",
    "rpn_deltas",
    "box_features",
    "class_logits",
    "box_deltas",
)
STAGES = (
    *KERNEL_FREE_STAGES,
    *NUMERIC_STAGES,
    "proposals",
    "detections_from_proposals",
    "end_to_end",
)
# On other kernels: float32 rounding of the convs' and FCs' sums, relative to the stage's largest value (two
# threads instead of one: at most 7e-7 here).
KERNEL_RTOL = 1e-5
LOSS_NAMES = {
    "loss_rpn_cls": "loss_objectness",
    "loss_rpn_loc": "loss_rpn_box_reg",
    "loss_cls": "loss_classifier",
    "loss_box_reg": "loss_box_reg",
}


REFERENCE_TOOL = Path(__file__).parents[2] / "tools" / "detectron2_reference.py"


def _load_tool():
    """tools/detectron2_fixture.py for the fixture's weights and digest layout (it imports no detectron2)."""
    path = Path(__file__).parents[2] / "tools" / "detectron2_fixture.py"
    spec = importlib.util.spec_from_file_location("detectron2_fixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL = _load_tool()


def difference(ours: Tensor, stored: Tensor | dict) -> tuple[bool, float]:
    """(bit-identical, max abs difference) of our tensor and the fixture's: whole, or a digest (sha256 of the
    float32 bytes; the difference is then over its sample, a lower bound)."""
    ours = ours.detach().float().contiguous()
    if isinstance(stored, Tensor):
        assert ours.shape == stored.shape, f"shape {tuple(ours.shape)} vs detectron2's {tuple(stored.shape)}"
        return torch.equal(ours, stored), (ours - stored).abs().max().item() if ours.numel() else 0.0
    assert tuple(ours.shape) == tuple(stored["shape"]), f"shape {tuple(ours.shape)} vs {stored['shape']}"
    flat = ours.reshape(-1)
    sample = flat[TOOL.sample_positions(flat.numel(), len(stored["values"]))]
    identical = hashlib.sha256(flat.numpy().tobytes()).hexdigest() == stored["sha256"]
    return identical, (sample - stored["values"]).abs().max().item()


def _rgb(path: Path) -> Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)


class FixedDraw:
    """The sampler of torchvision's heads, drawing what detectron2 drew: per image, masks of its positive and
    negative indices. Our labels must agree there (positive > 0, negative 0), or the matching differs."""

    def __init__(self, draws: list[dict[str, Tensor]]) -> None:
        self.draws = draws

    def __call__(self, labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        positives, negatives = [], []
        for image_labels, draw in zip(labels, self.draws, strict=True):
            assert (image_labels[draw["positive"]] > 0).all(), "a detectron2 positive is not ours"
            assert (image_labels[draw["negative"]] == 0).all(), "a detectron2 negative is not ours"
            for masks, indices in ((positives, draw["positive"]), (negatives, draw["negative"])):
                mask = torch.zeros_like(image_labels, dtype=torch.uint8)
                mask[indices] = 1
                masks.append(mask)
        return positives, negatives


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE / "reference.pt", weights_only=True)


def reference_model(reference: dict, model_cfg: dict) -> torch.nn.Module:
    """Our model with detectron2's weights (regenerated, checked by sha256) through our converter."""
    weights = TOOL.reference_weights(reference["weight_shapes"])
    assert TOOL.state_dict_sha256(weights) == reference["weights_sha256"]
    model = build_model(model_params(model_cfg), num_classes=reference["num_classes"])
    state, report = convert_state_dict({"model": weights}, model.state_dict(), source_name="reference")
    assert set(report["status"]) <= {"mapped", "expected_unused"}, report[report["status"] != "mapped"]
    model.load_state_dict(state)
    return model.eval()


def detectron2_batch(reference: dict) -> ImageList:
    """detectron2's input batch, from its resized pixels: BGR minus the mean, zero-padded to 32."""
    sizes = reference["inference"]["image_sizes"]
    pixels = [_rgb(FIXTURE / f"resized_{i}.png").flip(0).float() for i in range(len(sizes))]
    mean = torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1)
    height, width = (-(-max(size[axis] for size in sizes) // 32) * 32 for axis in (0, 1))
    batch = torch.zeros(len(sizes), 3, height, width)
    for position, image in enumerate(pixels):
        batch[position, :, : image.shape[1], : image.shape[2]] = image - mean
    return ImageList(batch, [tuple(size) for size in sizes])


def photos() -> list[Tensor]:
    return [_rgb(FIXTURE / f"photo_{i}.png") for i in range(2)]


def _detections_difference(ours: list[dict], theirs: list[dict]) -> tuple[bool, float]:
    """Detections as detectron2 lists them (classes 0-based): identical, and the boxes' and scores' max abs
    difference where the counts agree (inf where not)."""
    identical, worst = True, 0.0
    for mine, reference_image in zip(ours, theirs, strict=True):
        if len(mine["scores"]) != len(reference_image["scores"]):
            return False, float("inf")
        identical &= torch.equal(mine["labels"] - 1, reference_image["classes"])
        for key in ("boxes", "scores"):
            same, diff = difference(mine[key], reference_image[key])
            identical, worst = identical and same, max(worst, diff)
    return identical, worst


def _worst(ours: list[Tensor], stored: list) -> tuple[bool, float]:
    """`difference` over parts (levels, images): all identical, and the largest difference."""
    results = [difference(mine, reference) for mine, reference in zip(ours, stored, strict=True)]
    return all(same for same, _ in results), max(diff for _, diff in results)


def numeric_stages(model: torch.nn.Module, reference: dict, features: dict[str, Tensor]) -> dict:
    """The stages that only convolve and multiply, from detectron2's batch (its `features` through our
    backbone) and its proposals: (bit-identical, max abs difference) each."""
    stored = reference["inference"]
    stages = {f"backbone_{name}": difference(features[ours], stored[name]) for name, ours in FEATURES.items()}
    logits, deltas = model.rpn.head([features[name] for name in FEATURES.values()])
    stages["rpn_logits"] = _worst(logits, stored["rpn_logits"])
    stages["rpn_deltas"] = _worst(deltas, stored["rpn_deltas"])
    pooled = model.roi_heads.box_roi_pool(features, stored["proposals"], stored["image_sizes"])
    stages["box_features"] = difference(pooled, stored["box_features"])
    class_logits, box_deltas = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
    # detectron2's layout: background last, no background box rows
    stages["class_logits"] = difference(class_logits.roll(-1, dims=1), stored["class_logits"])
    stages["box_deltas"] = difference(box_deltas[:, 4:], stored["box_deltas"])
    return stages


def _proposals_and_scores(model, batch: ImageList, features: dict) -> tuple[list[Tensor], list[Tensor]]:
    """The RPN's proposals and their scores (logits under the card's `rank_on`), which its forward drops."""
    filter_proposals, kept = model.rpn.filter_proposals, []

    def keep(*args):
        kept.append(filter_proposals(*args))
        return kept[-1]

    model.rpn.filter_proposals = keep
    try:
        model.rpn(batch, features)
    finally:
        del model.rpn.filter_proposals
    return kept[0]


def inference_stages(model: torch.nn.Module, reference: dict) -> dict[str, tuple[bool, float]]:
    """Each inference stage from detectron2's input to it, and end to end: (bit-identical, max abs
    difference)."""
    stored, stages = reference["inference"], {}
    d2_batch = detectron2_batch(reference)
    assert difference(d2_batch.tensors, stored["batch"])[0], "the resized PNGs are not detectron2's batch"
    seen = {}
    hook = model.backbone.register_forward_hook(lambda _, args, out: seen.update(batch=args[0], features=out))
    with torch.no_grad():
        try:
            stages["end_to_end"] = _detections_difference(model(photos()), stored["detections"])
        finally:
            hook.remove()
        stages["resize_and_normalise"] = difference(seen["batch"], stored["batch"])
        # the end-to-end pass's features are those of detectron2's batch when the batches are equal
        same_batch = torch.equal(seen["batch"], d2_batch.tensors)
        features = seen["features"] if same_batch else model.backbone(d2_batch.tensors)
        stages.update(numeric_stages(model, reference, features))
        levels = [features[name] for name in FEATURES.values()]
        anchors = model.rpn.anchor_generator(d2_batch, levels)[0]
        per_level = [ref["shape"][0] if isinstance(ref, dict) else len(ref) for ref in stored["anchors"]]
        stages["anchors"] = _worst(anchors.split(per_level), stored["anchors"])
        proposals, logits = _proposals_and_scores(model, d2_batch, features)
        stages["proposals"] = _worst(
            [*proposals, *logits], [*stored["proposals"], *stored["proposal_logits"]]
        )
        d2_proposals = stored["proposals"]
        levels = model.roi_heads.box_roi_pool.map_levels(d2_proposals)
        stages["roi_levels"] = difference(levels, stored["proposal_levels"])
        detections, _ = model.roi_heads(features, d2_proposals, d2_batch.image_sizes)
        originals = [tuple(photo.shape[-2:]) for photo in photos()]
        detections = model.transform.postprocess(detections, d2_batch.image_sizes, originals)
        stages["detections_from_proposals"] = _detections_difference(detections, stored["detections"])
    return stages


def training_losses(model: torch.nn.Module, reference: dict) -> tuple[dict[str, Tensor], list[Tensor]]:
    """One training forward with detectron2's targets, sampled anchors and RoIs, and its RoI proposals:
    our losses under detectron2's names, and our resized ground truth."""
    stored = reference["training"]
    targets = [{"boxes": t["boxes"], "labels": t["classes"] + 1} for t in reference["targets"]]
    samplers = model.rpn.fg_bg_sampler, model.roi_heads.fg_bg_sampler
    model.train()
    try:
        model.rpn.fg_bg_sampler = FixedDraw(stored["sampled"]["rpn"])
        model.roi_heads.fg_bg_sampler = FixedDraw(stored["sampled"]["roi_heads"])
        images, resized_targets = model.transform(photos(), targets)
        features = model.backbone(images.tensors)
        _, rpn_losses = model.rpn(images, features, resized_targets)
        _, roi_losses = model.roi_heads(features, stored["proposals"], images.image_sizes, resized_targets)
    finally:
        model.rpn.fg_bg_sampler, model.roi_heads.fg_bg_sampler = samplers
        model.eval()
    losses = {**rpn_losses, **roi_losses}
    named = {theirs: losses[ours] for theirs, ours in LOSS_NAMES.items()}
    return named, [target["boxes"] for target in resized_targets]


@pytest.fixture(scope="module")
def one_thread():
    """The reference ran in one thread: oneDNN's convolutions split their sums by the thread count, so two
    threads already round P2 differently (2.6e-6)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def same_kernels(reference, one_thread) -> bool:
    """Whether this machine's conv and matmul kernels round as the fixture machine's did."""
    return TOOL.kernel_probe()["sha256"] == reference["kernel_probe"]["sha256"]


@pytest.fixture(scope="module")
def model(reference, one_thread) -> torch.nn.Module:
    return reference_model(reference, MODEL_CFG)


@pytest.fixture(scope="module")
def stages(model, reference) -> dict[str, tuple[bool, float]]:
    return inference_stages(model, reference)


@pytest.fixture(scope="module")
def stages_in_two_threads(model, reference) -> dict[str, tuple[bool, float]]:
    """`numeric_stages` in two threads: kernels that split their sums otherwise than the reference's one
    thread, as another CPU's would (P2 2.6e-6 apart here)."""
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            features = model.backbone(detectron2_batch(reference).tensors)
            return numeric_stages(model, reference, features)
    finally:
        torch.set_num_threads(1)


def test_the_fixture_is_detectron2s_at_the_recorded_commit(reference):
    assert reference["detectron2_commit"] == TOOL.REFERENCE_COMMIT
    assert [len(d["scores"]) for d in reference["inference"]["detections"]] == [100, 100]


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_is_bit_identical_to_detectron2(reference, stages, same_kernels, stage):
    if stage not in KERNEL_FREE_STAGES and not same_kernels:
        pytest.skip(
            "this CPU's conv/matmul kernels round differently from the fixture machine's (kernel probe): "
            "bit-identity holds only on alike kernels; the float-rounding tolerances are checked instead"
        )
    identical, max_difference = stages[stage]
    versions = (
        f"fixture made with torch {reference['torch_version']}, Pillow {reference['pillow_version']}; "
        f"here torch {torch.__version__}, Pillow {PIL.__version__}"
    )
    assert identical, f"{stage}: max abs difference {max_difference:.3g} from detectron2 ({versions})"


@pytest.mark.parametrize("stage", NUMERIC_STAGES)
def test_numeric_stages_on_other_kernels_are_within_float_rounding(reference, stages_in_two_threads, stage):
    stored = reference["inference"][stage.removeprefix("backbone_")]
    parts = stored if isinstance(stored, list) else [stored]
    magnitude = max((part["values"] if isinstance(part, dict) else part).abs().max().item() for part in parts)
    _, max_difference = stages_in_two_threads[stage]
    assert max_difference <= KERNEL_RTOL * magnitude, f"{stage}: {max_difference:.3g} of {magnitude:.3g}"


def test_one_training_step_has_detectron2s_losses(model, reference):
    losses, resized_boxes = training_losses(model, reference)
    for ours, theirs in zip(resized_boxes, reference["training"]["gt_boxes"], strict=True):
        assert torch.equal(ours, theirs)
    for name, value in losses.items():
        torch.testing.assert_close(value, reference["training"]["losses"][name], rtol=LOSS_RTOL, atol=0)


def test_the_reference_tool_says_which_step_failed_and_keeps_the_fixture(tmp_path):
    out = tmp_path / "fixture"
    arguments = ["--source", tmp_path / "no-clone", "--workdir", tmp_path / "work", "--out", out]
    result = subprocess.run(
        [sys.executable, str(REFERENCE_TOOL), *map(str, arguments)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "`git clone" in result.stderr and "pass --source a local clone" in result.stderr
    assert not out.exists()
