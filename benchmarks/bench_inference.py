"""Inference speed: our Faster R-CNN (R-50-FPN, detectron2 config) against torchvision's stock model.

torchvision's fasterrcnn_resnet50_fpn and ours get the same random input images (each model resizes them to
800/1333) with random weights (the layouts differ: frozen BN, stride in the 1x1 conv), batch of one, on CPU.
Ours is timed in fp32 and with the inference options (channels_last, bf16 backbone). With ``--demo-weights``
(a state dict trained on the demo, e.g. data/06_models/trained_model.safetensors/<version>/
trained_model.safetensors) it also compares the demo val AP of fp32 against each option (budget: 0.2 points).

    python benchmarks/bench_inference.py [--rounds 3] [--variants fp32 channels_last channels_last+bf16]
        [--demo-weights PATH --demo-root DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from frcnn_pipeline.config import InferenceParams
from frcnn_pipeline.evaluation.inference import prepare_for_inference
from frcnn_pipeline.modeling import build_model, default_model_config

VARIANTS = {
    "fp32": InferenceParams(channels_last=False),
    "channels_last": InferenceParams(channels_last=True),
    "channels_last+bf16": InferenceParams(channels_last=True, cpu_bf16=True),
}


def time_round_robin(models: dict, inputs: dict, rounds: int) -> dict[str, float]:
    """Images/s of each model. Models take turns image by image, so load from other processes on a shared
    machine slows every side alike instead of whichever happened to run at the time."""
    seconds = dict.fromkeys(models, 0.0)
    with torch.inference_mode():
        for name, model in models.items():
            model([inputs[name][0]])  # warm-up: allocator, oneDNN kernels
        for _ in range(rounds):
            for index in range(len(next(iter(inputs.values())))):
                for name, model in models.items():
                    start = time.perf_counter()
                    model([inputs[name][index]])
                    seconds[name] += time.perf_counter() - start
    count = rounds * len(next(iter(inputs.values())))
    return {name: count / total for name, total in seconds.items()}


def demo_ap(weights_path: Path, demo_root: Path) -> None:
    """Demo val AP (COCO, ours = pycocotools) of a demo-trained model: fp32 against each variant."""
    from frcnn_pipeline.data.coco import SplitSource, build_ground_truth, read_coco_split
    from frcnn_pipeline.data.demo import annotation_file, image_dir
    from frcnn_pipeline.evaluation.coco_eval import evaluate_boxes
    from frcnn_pipeline.evaluation.inference import category_ids_by_label, coco_results, run_inference
    from frcnn_pipeline.parameters import load_parameters

    if weights_path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state_dict = load_file(weights_path)
    else:
        state_dict = torch.load(weights_path, weights_only=True)
    model_cfg = load_parameters("base")["model"]  # the demo's
    train = read_coco_split(
        SplitSource("train", annotation_file(demo_root, "train"), image_dir(demo_root, "train"))
    )
    val = read_coco_split(
        SplitSource("val", annotation_file(demo_root, "val"), image_dir(demo_root, "val")),
        categories=train.categories,
    )
    ground_truth = build_ground_truth(val)
    print(f"\nDemo val AP ({len(val.images)} images), {weights_path}:")
    reference = None
    for name, options in VARIANTS.items():
        records = run_inference(
            state_dict, model_cfg, len(train.categories), val.images["path"].tolist(), options=options
        )
        detections = coco_results(
            records, val.images["image_id"].tolist(), category_ids_by_label(train.categories)
        )
        ap = evaluate_boxes(ground_truth, detections).metrics()["AP"] * 100
        reference = ap if reference is None else reference
        print(f"  {name:20s} AP {ap:6.2f}   difference to fp32 {ap - reference:+.2f} points")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=["fp32", "channels_last"],
        help="bf16 pays off only on CPUs with bf16 instructions (AVX512-BF16/AMX); elsewhere it is emulated",
    )
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--demo-weights", type=Path)
    parser.add_argument("--demo-root", type=Path, default=Path("data/01_raw/demo"))
    args = parser.parse_args()

    torch.manual_seed(0)
    images = [torch.randint(0, 256, (3, *args.size), dtype=torch.uint8) for _ in range(args.images)]
    cpu = torch.device("cpu")
    print(f"CPU, {torch.get_num_threads()} threads, {args.images} image(s) of {args.size[1]}x{args.size[0]}")

    # torchvision takes 0-1 floats, ours RGB 0-255 (it normalises itself).
    models = {"torchvision fp32": fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()}
    inputs = {"torchvision fp32": [image.float() / 255 for image in images]}
    for name in args.variants:
        torch.manual_seed(0)
        model = build_model(default_model_config(), num_classes=80)  # detectron2's R-50-FPN: test 800/1333
        models[f"ours {name}"] = prepare_for_inference(model, cpu, VARIANTS[name])
        inputs[f"ours {name}"] = images
    speeds = time_round_robin(models, inputs, args.rounds)
    reference = speeds.pop("torchvision fp32")
    print(f"{'torchvision fasterrcnn_resnet50_fpn fp32':42s} {reference:7.3f} images/s")
    for name, speed in speeds.items():
        print(f"{name:42s} {speed:7.3f} images/s   ratio to torchvision {speed / reference:.2f}x")
    print(f"best ratio ours / torchvision: {max(speeds.values()) / reference:.2f}x (target >= 1.5x)")

    if args.demo_weights:
        demo_ap(args.demo_weights, args.demo_root)
    else:
        print("\nNo --demo-weights given: the fp32 vs bf16 AP check on the demo val split was not run.")


if __name__ == "__main__":
    main()
