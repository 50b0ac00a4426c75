"""Inference speed: our Faster R-CNN (R-50-FPN, detectron2 config) against torchvision's stock model.

torchvision's fasterrcnn_resnet50_fpn (frozen BN and our proposal counts: references.py) and ours get the
same random input images (each model resizes them to 800/1333) with random weights, batch of one, on CPU.
Two comparisons, like with like:
- the model alone: ours in plain fp32 against torchvision in plain fp32;
- with the inference options: ours with folded norms + channels_last (+ bf16 when asked) against torchvision
  with the generic one that applies to it, channels_last.
With ``--demo-weights``
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
from references import stock_fasterrcnn_resnet50_fpn

from frcnn_pipeline.config import InferenceParams
from frcnn_pipeline.evaluation.inference import prepare_for_inference
from frcnn_pipeline.modeling import build_model, default_model_config

VARIANTS = {
    "fp32": InferenceParams(fold_batch_norm=False, channels_last=False),
    "folded+channels_last": InferenceParams(channels_last=True),
    "folded+channels_last+bf16": InferenceParams(channels_last=True, cpu_bf16=True),
}
REFERENCE_FOR = {  # torchvision's counterpart of each variant: what applies to it of the same options
    "fp32": "torchvision fp32",
    "folded+channels_last": "torchvision channels_last",
    "folded+channels_last+bf16": "torchvision channels_last",
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
        default=["fp32", "folded+channels_last"],
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
    models, inputs = {}, {}
    for name in sorted({REFERENCE_FOR[variant] for variant in args.variants}):
        torch.manual_seed(0)
        reference = stock_fasterrcnn_resnet50_fpn(80, 800, 1333).eval()
        if "channels_last" in name:
            reference = reference.to(memory_format=torch.channels_last)
        models[name] = reference
        inputs[name] = [image.float() / 255 for image in images]
    for name in args.variants:
        torch.manual_seed(0)
        model = build_model(default_model_config(), num_classes=80)  # detectron2's R-50-FPN: test 800/1333
        models[f"ours {name}"] = prepare_for_inference(model, cpu, VARIANTS[name])
        inputs[f"ours {name}"] = images
    speeds = time_round_robin(models, inputs, args.rounds)
    print(f"{'':44s}{'images/s':>9s}   {'reference':26s}{'images/s':>9s}{'ratio':>8s}")
    for name in args.variants:
        ours, reference = speeds[f"ours {name}"], speeds[REFERENCE_FOR[name]]
        ratio = ours / reference
        print(f"{'ours ' + name:44s}{ours:9.3f}   {REFERENCE_FOR[name]:26s}{reference:9.3f}{ratio:7.2f}x")

    if args.demo_weights:
        demo_ap(args.demo_weights, args.demo_root)
    else:
        print("\nNo --demo-weights given: the fp32 vs bf16 AP check on the demo val split was not run.")


if __name__ == "__main__":
    main()
