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

Large tensors are stored as a digest (`tensor_digest`: sha256 of the float32 bytes plus a sample), so the
fixture stays small; the weights are regenerated from `reference_weights` (pure integer arithmetic,
reproducible anywhere) and checked against the sha256 detectron2's state dict had.
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch

REFERENCE_COMMIT = "02b5c4e295e990042a714712c21dc79b731e8833"
DETECTRON2_URL = "https://github.com/facebookresearch/detectron2"
DETECTRON2_DEPENDENCIES = [
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "yacs>=0.1.8",
    "termcolor>=1.1",
    "tabulate",
    "portalocker",
]
NUM_CLASSES = 80
# detectron2 config keys set on top of configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml (the card recipe).
REFERENCE_CONFIG = {
    "MODEL.DEVICE": "cpu",
    "MODEL.WEIGHTS": "",
    "MODEL.RESNETS.DEPTH": 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
    "MODEL.FPN.OUT_CHANNELS": 64,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 256,
    "MODEL.ROI_HEADS.NUM_CLASSES": NUM_CLASSES,
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
}
# (height, width): one upscaled by exactly 2, one downscaled by 0.8 (antialiased by PIL), both to 800 px.
PHOTO_SIZES = [(400, 600), (1000, 1250)]
DIGEST_SAMPLE = 8192
# tensors up to this many elements are stored whole
WHOLE_LIMIT = 65536


def _uniform(count: int, stream: int) -> np.ndarray:
    """`count` floats in [0, 1) with 24 random bits each: splitmix64 of (stream, position), integers only."""
    with np.errstate(over="ignore"):
        mix = np.arange(1, count + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        mix += np.uint64(stream) * np.uint64(0xD1B54A32D192ED03)
        mix = (mix ^ (mix >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        mix = (mix ^ (mix >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        mix ^= mix >> np.uint64(31)
    return (mix >> np.uint64(40)).astype(np.float64) / 2.0**24


def _weight_range(key: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """Uniform range of one detectron2 parameter: He-uniform convs and FCs, BN statistics away from the
    identity, residual branches damped so that activations keep their scale through the network, a
    classifier confident enough that detections pass the 0.05 score threshold."""
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if ".norm." in key:
        last_of_branch = ".conv2.norm." in key or ".shortcut.norm." in key
        return {
            "weight": (0.2, 0.6) if last_of_branch else (0.5, 1.5),
            "bias": (-0.2, 0.2),
            "running_mean": (-0.2, 0.2),
            "running_var": (0.5, 2.0),
        }[key.rsplit(".", 1)[1]]
    if key.endswith("bias"):
        return {
            "roi_heads.box_predictor.cls_score.bias": (-1.0, 1.0),
            "proposal_generator.rpn_head.objectness_logits.bias": (-1.0, 1.0),
            # sparse box-head features, so that the classes differ from RoI to RoI
            "roi_heads.box_head.fc1.bias": (-3.0, 0.0),
            "roi_heads.box_head.fc2.bias": (-3.0, 0.0),
        }.get(key, (-0.05, 0.05))
    gain = {
        "backbone.bottom_up.stem.conv1.weight": 1 / 64,  # pixels are 0-255, not unit-scale
        "proposal_generator.rpn_head.anchor_deltas.weight": 0.05,  # proposals near their anchors
        "roi_heads.box_predictor.bbox_pred.weight": 0.05,
        # logits far beyond float32 sigmoid's saturation (about 17), where ranking by probability ties
        "proposal_generator.rpn_head.objectness_logits.weight": 4.0,
    }.get(key, 1.0)
    if key.startswith("backbone.fpn_"):
        gain = 1 / np.sqrt(2)  # no ReLU after the FPN convs
    bound = gain * float(np.sqrt(6.0 / fan_in))
    return -bound, bound


def reference_weights(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Seeded weights in detectron2's (model-zoo) layout: each key's stream is the crc32 of its name."""
    weights = {}
    for key, shape in shapes.items():
        low, high = _weight_range(key, tuple(shape))
        values = low + (high - low) * _uniform(int(np.prod(shape)), zlib.crc32(key.encode()))
        weights[key] = torch.from_numpy(values.astype(np.float32).reshape(shape))
    return weights


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def tensor_digest(tensor: torch.Tensor) -> dict:
    """A large tensor as its sha256 (float32 bytes), shape and DIGEST_SAMPLE evenly spread elements: those at
    flat positions `sample_positions(numel, DIGEST_SAMPLE)`."""
    flat = tensor.detach().float().contiguous().reshape(-1)
    return {
        "sha256": hashlib.sha256(flat.numpy().tobytes()).hexdigest(),
        "shape": tuple(tensor.shape),
        "values": flat[sample_positions(flat.numel(), DIGEST_SAMPLE)].clone(),
    }


def sample_positions(numel: int, count: int) -> torch.Tensor:
    return torch.arange(count, dtype=torch.int64) * numel // count


def _stored(tensor: torch.Tensor) -> torch.Tensor | dict:
    tensor = tensor.detach()
    return tensor.clone() if tensor.numel() <= WHOLE_LIMIT else tensor_digest(tensor)


def kernel_probe() -> dict:
    """Digest of a few float32 convs and a matmul like the model's (run in one thread, as the reference).
    Where it differs from the fixture's, this CPU's kernels (or torch's) round differently, and no stage after
    the first conv can be bit-identical to the fixture: the test then checks tolerances only."""
    pixels = torch.from_numpy(_uniform(3 * 64 * 96, 11).astype(np.float32).reshape(1, 3, 64, 96) * 255)
    outputs, features = [], pixels
    layers = [(64, 7, 2), (64, 3, 1), (128, 3, 2), (64, 1, 1)]  # (out channels, kernel, stride)
    for stream, (out_channels, kernel, stride) in enumerate(layers):
        shape = (out_channels, features.shape[1], kernel, kernel)
        weight = (_uniform(int(np.prod(shape)), 20 + stream) - 0.5).astype(np.float32)
        weight = torch.from_numpy(weight.reshape(shape))
        features = torch.nn.functional.conv2d(features, weight / kernel, stride=stride, padding=kernel // 2)
        outputs.append(features.reshape(-1))
    matrix = torch.from_numpy((_uniform(features[0].numel() * 256, 30) - 0.5).astype(np.float32))
    outputs.append(features.reshape(1, -1) @ matrix.reshape(-1, 256))
    return tensor_digest(torch.cat([output.reshape(-1) for output in outputs]))


def generated_photo(height: int, width: int, seed: int) -> np.ndarray:
    """An RGB uint8 'photo': a lit gradient, 40 striped shapes with sharp edges."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    draws = iter(_uniform(1000, seed))
    image = np.stack(
        [60 + 120 * (rows / height) * next(draws) + 60 * (cols / width) * next(draws) for _ in range(3)], -1
    )
    for _ in range(40):
        center_y, center_x = next(draws) * height, next(draws) * width
        radius_y, radius_x = (0.03 + 0.2 * next(draws)) * height, (0.03 + 0.2 * next(draws)) * width
        colour = np.array([next(draws), next(draws), next(draws)]) * 255
        if next(draws) < 0.5:
            inside = ((rows - center_y) / radius_y) ** 2 + ((cols - center_x) / radius_x) ** 2 <= 1
        else:
            inside = (abs(rows - center_y) <= radius_y) & (abs(cols - center_x) <= radius_x)
        period = 3 + 12 * next(draws)
        stripes = 0.75 + 0.25 * np.sign(np.sin((rows + cols * next(draws)) * 2 * np.pi / period))
        image[inside] = (colour * stripes[..., None])[inside]
    return np.clip(image, 0, 255).round().astype(np.uint8)


def reference_targets() -> list[dict[str, torch.Tensor]]:
    """Ground truth in original-image pixels: multiples of 5, so that both libraries' resizes (x2, x0.8) are
    exact in float32 and the training step starts from the same boxes."""
    boxes = [
        [[50, 40, 250, 200], [300, 100, 560, 380], [10, 220, 120, 390], [400, 20, 470, 90]],
        [[100, 100, 600, 500], [650, 200, 1200, 950], [50, 600, 400, 980], [700, 30, 900, 180]],
    ]
    classes = [[0, 5, 17, 79], [2, 40, 5, 61]]  # detectron2's 0-based ids
    return [
        {"boxes": torch.tensor(b, dtype=torch.float32), "classes": torch.tensor(c)}
        for b, c in zip(boxes, classes, strict=True)
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
        out["batch"] = _stored(images.tensor)
        features = model.backbone(images.tensor)
        for name in ("p2", "p3", "p4", "p5", "p6"):
            out[name] = _stored(features[name])
        levels = [features[name] for name in rpn.in_features]
        anchors = rpn.anchor_generator(levels)
        out["anchors"] = [_stored(a.tensor) for a in anchors]
        logits, deltas = rpn.rpn_head(levels)
        out["rpn_logits"] = [_stored(x) for x in logits]  # per level, (N, A, H, W) as the head gives them
        out["rpn_deltas"] = [_stored(x) for x in deltas]
        proposals, _ = rpn(images, features)
        out["proposals"] = [p.proposal_boxes.tensor.clone() for p in proposals]
        out["proposal_logits"] = [p.objectness_logits.clone() for p in proposals]
        boxes = [p.proposal_boxes for p in proposals]
        out["proposal_levels"] = assign_boxes_to_levels(
            boxes, heads.box_pooler.min_level, heads.box_pooler.max_level,
            heads.box_pooler.canonical_box_size, heads.box_pooler.canonical_level,
        ).to(torch.int8)  # fmt: skip
        pooled = heads.box_pooler([features[f] for f in heads.box_in_features], boxes)
        out["box_features"] = _stored(pooled)
        class_logits, box_deltas = heads.box_predictor(heads.box_head(pooled))
        out["class_logits"] = _stored(class_logits)
        out["box_deltas"] = _stored(box_deltas)
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
