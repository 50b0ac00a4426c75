"""Reference outputs of detectron2 itself, for tests/modeling/test_detectron2_parity.py.

    python tools/detectron2_reference.py [--source URL_OR_PATH] [--commit SHA] [--workdir DIR] [--out DIR]

What it does, from detectron2's public source:
1. `git clone --source` (default https://github.com/facebookresearch/detectron2) into WORKDIR/detectron2 and
   check out `--commit` (default REFERENCE_COMMIT, the one the committed fixture was made with).
2. `pip install --no-deps --target WORKDIR/deps` of detectron2's pure-Python dependencies that the project's
   venv lacks (DETECTRON2_DEPENDENCIES); torch, torchvision, Pillow, numpy, pycocotools come from the venv.
3. No compiled extension is built: Faster R-CNN R-FPN runs on torchvision's RoIAlign and NMS, and nothing
   it imports needs detectron2's `_C` (deformable conv, rotated boxes, its COCO evaluator).
4. Runs itself again with PYTHONPATH=WORKDIR/deps:WORKDIR/detectron2 to build detectron2's Faster R-CNN
   R-18-FPN with narrow heads (REFERENCE_CONFIG) and the seeded model-zoo-layout weights of
   `reference_weights`, on two generated photos at 800 px, and writes into OUT (tests/fixtures/detectron2):
   the photos (PNG), detectron2's resized uint8 images (PNG) and `reference.pt`: per-stage outputs at
   inference and the four losses of one training step with the sampled indices it drew.

The fixture's inputs and format (commit, configuration, seeded weights, photos, targets, digests) are in
tools/detectron2_fixture.py, which the test loads without detectron2.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

# A sibling module: this file runs as a script, so tools/ is on sys.path.
from detectron2_fixture import (
    NUM_CLASSES,
    PHOTO_SIZES,
    REFERENCE_COMMIT,
    REFERENCE_CONFIG,
    generated_photo,
    kernel_probe,
    reference_targets,
    reference_weights,
    state_dict_sha256,
    stored_tensor,
)

DETECTRON2_URL = "https://github.com/facebookresearch/detectron2"
DETECTRON2_DEPENDENCIES = [
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "yacs>=0.1.8",
    "termcolor>=1.1",
    "tabulate",
    "portalocker",
]


# ---------------------------------------------------------------------------------------------- setup


def prepare(source: str, commit: str, workdir: Path) -> tuple[Path, Path]:
    """detectron2's source at `commit` and its missing pure-Python dependencies, under `workdir`."""
    checkout, deps = workdir / "detectron2", workdir / "deps"
    if not checkout.exists():
        subprocess.run(["git", "clone", "--quiet", source, str(checkout)], check=True)
    subprocess.run(["git", "-C", str(checkout), "checkout", "--quiet", commit], check=True)
    if not deps.exists():
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(deps)]
        subprocess.run([*pip, *DETECTRON2_DEPENDENCIES], check=True)
    return checkout, deps


# ---------------------------------------------------------------------------------------------- run


def _build(checkout: Path):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(str(checkout / "configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list([str(item) for pair in REFERENCE_CONFIG.items() for item in pair])
    cfg.freeze()
    model = build_model(cfg)
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    model.load_state_dict(reference_weights(shapes), strict=True)
    return cfg, model, shapes


def _inputs(cfg, photos: list[np.ndarray]) -> list[dict]:
    """What detectron2's DefaultPredictor feeds the model: BGR, resized by ResizeShortestEdge (PIL)."""
    import detectron2.data.transforms as T

    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    inputs = []
    for photo in photos:
        bgr = photo[:, :, ::-1]
        resized = resize.get_transform(bgr).apply_image(bgr)
        inputs.append(
            {
                "image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))).float(),
                "height": photo.shape[0],
                "width": photo.shape[1],
                "resized_rgb": np.ascontiguousarray(resized[:, :, ::-1]),
            }
        )
    return inputs


def _inference(model, inputs: list[dict]) -> dict:
    from detectron2.modeling.poolers import assign_boxes_to_levels

    rpn, heads = model.proposal_generator, model.roi_heads
    out: dict = {}
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        out["image_sizes"] = [tuple(size) for size in images.image_sizes]
        out["batch"] = stored_tensor(images.tensor)
        features = model.backbone(images.tensor)
        for name in ("p2", "p3", "p4", "p5", "p6"):
            out[name] = stored_tensor(features[name])
        levels = [features[name] for name in rpn.in_features]
        anchors = rpn.anchor_generator(levels)
        out["anchors"] = [stored_tensor(a.tensor) for a in anchors]
        logits, deltas = rpn.rpn_head(levels)
        out["rpn_logits"] = [
            stored_tensor(x) for x in logits
        ]  # per level, (N, A, H, W) as the head gives them
        out["rpn_deltas"] = [stored_tensor(x) for x in deltas]
        proposals, _ = rpn(images, features)
        out["proposals"] = [p.proposal_boxes.tensor.clone() for p in proposals]
        out["proposal_logits"] = [p.objectness_logits.clone() for p in proposals]
        boxes = [p.proposal_boxes for p in proposals]
        out["proposal_levels"] = assign_boxes_to_levels(
            boxes, heads.box_pooler.min_level, heads.box_pooler.max_level,
            heads.box_pooler.canonical_box_size, heads.box_pooler.canonical_level,
        ).to(torch.int8)  # fmt: skip
        pooled = heads.box_pooler([features[f] for f in heads.box_in_features], boxes)
        out["box_features"] = stored_tensor(pooled)
        class_logits, box_deltas = heads.box_predictor(heads.box_head(pooled))
        out["class_logits"] = stored_tensor(class_logits)
        out["box_deltas"] = stored_tensor(box_deltas)
        detections = model.inference(inputs)
    out["detections"] = [
        {
            "boxes": d["instances"].pred_boxes.tensor.clone(),
            "scores": d["instances"].scores.clone(),
            "classes": d["instances"].pred_classes.clone(),
        }
        for d in detections
    ]
    return out


def _training_step(model, inputs: list[dict]) -> dict:
    """One training forward with the reference targets; the sampled indices are captured as drawn."""
    import detectron2.modeling.proposal_generator.rpn as rpn_module
    import detectron2.modeling.roi_heads.roi_heads as roi_heads_module
    from detectron2.modeling.sampling import subsample_labels
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    drawn: dict[str, list] = {"rpn": [], "roi_heads": []}

    def capture(kind):
        def sample(*args, **kwargs):
            positive, negative = subsample_labels(*args, **kwargs)
            drawn[kind].append({"positive": positive.clone(), "negative": negative.clone()})
            return positive, negative

        return sample

    proposals_seen = []
    label_and_sample = model.roi_heads.label_and_sample_proposals

    def record_proposals(proposals, targets):
        proposals_seen.extend(p.proposal_boxes.tensor.clone() for p in proposals)
        return label_and_sample(proposals, targets)

    batched = []
    for item, target in zip(inputs, reference_targets(), strict=True):
        scale_y = item["image"].shape[1] / item["height"]
        scale_x = item["image"].shape[2] / item["width"]
        instances = Instances(tuple(item["image"].shape[1:]))
        instances.gt_boxes = Boxes(target["boxes"] * torch.tensor([scale_x, scale_y, scale_x, scale_y]))
        instances.gt_classes = target["classes"]
        batched.append({**item, "instances": instances})
    torch.manual_seed(0)
    model.train()
    rpn_module.subsample_labels, roi_heads_module.subsample_labels = capture("rpn"), capture("roi_heads")
    model.roi_heads.label_and_sample_proposals = record_proposals
    try:
        with EventStorage():
            losses = model(batched)
    finally:
        rpn_module.subsample_labels = roi_heads_module.subsample_labels = subsample_labels
        del model.roi_heads.label_and_sample_proposals
        model.eval()
    return {
        "gt_boxes": [b["instances"].gt_boxes.tensor.clone() for b in batched],
        "losses": {name: value.detach().clone() for name, value in losses.items()},
        "sampled": drawn,
        "proposals": proposals_seen,
    }


def generate(checkout: Path, commit: str, out: Path) -> None:
    """Writes the fixture into `out`, all files at the end (a failed run leaves the old fixture whole)."""
    import PIL
    from PIL import Image

    torch.set_num_threads(1)
    cfg, model, shapes = _build(checkout)
    model.eval()
    photos = [generated_photo(h, w, seed=100 + i) for i, (h, w) in enumerate(PHOTO_SIZES)]
    inputs = _inputs(cfg, photos)
    images = {f"photo_{i}.png": photo for i, photo in enumerate(photos)}
    images.update({f"resized_{i}.png": item.pop("resized_rgb") for i, item in enumerate(inputs)})
    reference = {
        "detectron2_commit": commit,
        "torch_version": str(torch.__version__),
        "pillow_version": PIL.__version__,  # its bilinear resize made the resized PNGs
        "config": REFERENCE_CONFIG,
        "num_classes": NUM_CLASSES,
        "weight_shapes": shapes,
        "weights_sha256": state_dict_sha256(model.state_dict()),
        "kernel_probe": kernel_probe(),
        "inference": _inference(model, inputs),
        "targets": reference_targets(),
        "training": _training_step(model, inputs),
    }
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as staging:
        for name, pixels in images.items():
            Image.fromarray(pixels).save(Path(staging) / name, optimize=True)
        torch.save(reference, Path(staging) / "reference.pt")
        for name in [*images, "reference.pt"]:
            os.replace(Path(staging) / name, out / name)
    counts = [len(d["scores"]) for d in reference["inference"]["detections"]]
    print(f"wrote {out}: detections per photo {counts}, losses {reference['training']['losses']}")


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--source", default=DETECTRON2_URL, help="detectron2 git URL or local clone")
    parser.add_argument("--commit", default=REFERENCE_COMMIT)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "detectron2_reference")
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "tests/fixtures/detectron2")
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)  # the step-4 re-run
    args = parser.parse_args()
    checkout = args.workdir / "detectron2"
    if args.generate:
        generate(checkout, args.commit, args.out)
        return
    try:
        checkout, deps = prepare(args.source, args.commit, args.workdir)
        commit = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
        ).stdout.strip()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(deps), str(checkout)])}
        command = [sys.executable, __file__, "--generate", "--commit", commit, "--workdir", str(args.workdir)]
        subprocess.run([*command, "--out", str(args.out)], env=env, check=True)
    except subprocess.CalledProcessError as error:
        sys.exit(
            f"detectron2_reference: `{' '.join(map(str, error.cmd))}` failed (exit {error.returncode}), "
            "output above. Without GitHub, pass --source a local clone of detectron2; to start over, delete "
            f"{args.workdir}. The fixture in {args.out} is replaced only by a run that gets to its end."
        )


if __name__ == "__main__":
    main()
