"""CPU inference: every backend of our Faster R-CNN side by side against torchvision's stock detector.

One run, one table. The reference is torchvision's fasterrcnn_resnet50_fpn as it ships (frozen BN and our
proposal counts: references.py), fp32, at 800 px. Ours is the detectron2 R-50-FPN (the card's model) at
800/1333, random weights, batch of one, on the same random images:
- torch fp32: the model as built, contiguous memory (the evaluate/predict defaults);
- torch optimised: norms folded into the convs, channels_last (opt-in: `fold_batch_norm`, `channels_last`);
- torch optimised bf16: the same with a bf16-autocast backbone (only where the CPU has AVX512-BF16 or AMX:
  elsewhere bf16 is emulated; `--force-bf16` measures it anyway);
- onnxruntime: the dynamic ONNX graph (`frcnn_pipeline.export`) in ONNX Runtime, fp32.
The models take turns image by image, so load from other processes slows every side alike: compare the
ratios of one run, not figures across runs. With a demo-trained model (`--demo-model`, default: the newest
data/06_models/trained_model.safetensors) each backend's demo val AP is printed with its difference to
torch fp32 (the issue's budget: 0.2 points; the export check's: 0.1).

    python benchmarks/bench_inference.py [--rounds 3] [--images 2] [--demo-model PATH] [--demo-root DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from references import stock_fasterrcnn_resnet50_fpn

from frcnn_pipeline.config import InferenceParams, ModelParams
from frcnn_pipeline.evaluation.cpu_precision import native_bf16_instructions
from frcnn_pipeline.evaluation.inference import prepare_for_inference
from frcnn_pipeline.export import OnnxDetector, export_detector
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.modeling.saved import TRAINED_MODEL, SavedDetector
from frcnn_pipeline.runtime.world import WorldConfig

REFERENCE = "torchvision stock fp32"
OPTIMISED = {"fold_batch_norm": True, "channels_last": True}
TORCH_BACKENDS = {
    "torch fp32": InferenceParams(),
    "torch optimised fp32": InferenceParams(**OPTIMISED, cpu_precision="float32"),
    "torch optimised bf16": InferenceParams(**OPTIMISED, cpu_precision="bfloat16"),
}
ONNXRUNTIME = "onnxruntime fp32"
NUM_CLASSES = 80


def time_round_robin(models: dict, inputs: dict, rounds: int) -> dict[str, float]:
    """Images/s of each model. Models take turns image by image, so load from other processes on a shared
    machine slows every side alike instead of whichever happened to run at the time."""
    seconds = dict.fromkeys(models, 0.0)
    with torch.inference_mode():
        for name, model in models.items():
            model(inputs[name][0])  # warm-up: allocator, oneDNN kernels, ONNX Runtime's first run
        for _ in range(rounds):
            for index in range(len(next(iter(inputs.values())))):
                for name, model in models.items():
                    start = time.perf_counter()
                    model(inputs[name][index])
                    seconds[name] += time.perf_counter() - start
    count = rounds * len(next(iter(inputs.values())))
    return {name: count / total for name, total in seconds.items()}


def card_model() -> SavedDetector:
    """detectron2's R-50-FPN (800/1333), random weights, as a saved model (what the export takes)."""
    torch.manual_seed(0)
    model = build_model(ModelParams(), NUM_CLASSES)
    categories = [{"label": i, "category_id": i + 1, "name": f"class {i + 1}"} for i in range(NUM_CLASSES)]
    return SavedDetector(model.state_dict(), TRAINED_MODEL, model.config, categories)


def measure_speed(backends: list[str], size: tuple[int, int], count: int, rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    images = [torch.randint(0, 256, (3, *size), dtype=torch.uint8) for _ in range(count)]
    torch.manual_seed(0)
    reference = stock_fasterrcnn_resnet50_fpn(NUM_CLASSES, 800, 1333).eval()
    models = {REFERENCE: lambda image: reference([image])}
    inputs = {REFERENCE: [image.float() / 255 for image in images]}  # torchvision takes 0-1 floats
    saved = card_model()
    for name in backends:
        if name == ONNXRUNTIME:
            models[name] = OnnxDetector(export_detector(saved, saved.model_config).dynamic)
        else:
            model = build_model(saved.model_config, NUM_CLASSES)
            model.load_state_dict(saved.state_dict)
            model = prepare_for_inference(model, torch.device("cpu"), TORCH_BACKENDS[name])
            models[name] = lambda image, model=model: model([image])
        inputs[name] = images  # ours take RGB 0-255 (uint8) and normalise themselves
    return time_round_robin(models, inputs, rounds)


def newest_demo_model() -> Path | None:
    found = sorted(Path("data/06_models/trained_model.safetensors").glob("*/trained_model.safetensors"))
    return found[-1] if found else None


def demo_ap(backends: list[str], model_path: Path, demo_root: Path) -> dict[str, float]:
    """Demo val AP (COCO, ours = pycocotools) of each backend on a demo-trained model."""
    from frcnn_pipeline.data.coco import SplitSource, build_ground_truth, read_coco_split
    from frcnn_pipeline.data.demo import annotation_file, image_dir
    from frcnn_pipeline.evaluation.coco_eval import evaluate_boxes
    from frcnn_pipeline.evaluation.inference import (
        category_ids_by_label,
        coco_results,
        run_inference,
        run_onnx_inference,
    )

    saved = SavedDetector.from_bytes(model_path.read_bytes())
    train = read_coco_split(
        SplitSource("train", annotation_file(demo_root, "train"), image_dir(demo_root, "train"))
    )
    val = read_coco_split(
        SplitSource("val", annotation_file(demo_root, "val"), image_dir(demo_root, "val")),
        categories=train.categories,
    )
    paths, image_ids = val.images["path"].tolist(), val.images["image_id"].tolist()
    aps = {}
    for name in backends:
        if name == ONNXRUNTIME:
            graph = export_detector(saved, saved.model_config).dynamic
            records = run_onnx_inference(graph, paths)
        else:
            options = TORCH_BACKENDS[name]
            records = run_inference(
                saved.state_dict,
                saved.model_config,
                len(saved.categories),
                paths,
                world=WorldConfig(),
                options=options,
            )
        detections = coco_results(records, image_ids, category_ids_by_label(train.categories))
        aps[name] = evaluate_boxes(build_ground_truth(val), detections).metrics()["AP"] * 100
    return aps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--force-bf16", action="store_true", help="measure bf16 without native instructions")
    parser.add_argument("--demo-model", type=Path, default=newest_demo_model())
    parser.add_argument("--demo-root", type=Path, default=Path("data/01_raw/demo"))
    args = parser.parse_args()

    native = native_bf16_instructions()
    backends = ["torch fp32", "torch optimised fp32", ONNXRUNTIME]
    if native or args.force_bf16:
        backends.insert(2, "torch optimised bf16")
    print(
        f"CPU, {torch.get_num_threads()} threads, native bf16: {' and '.join(native) or 'none'}; "
        f"{args.images} image(s) of {args.size[1]}x{args.size[0]}, {args.rounds} round(s)"
    )
    speeds = measure_speed(backends, tuple(args.size), args.images, args.rounds)
    aps = demo_ap(backends, args.demo_model, args.demo_root) if args.demo_model else {}

    reference = speeds[REFERENCE]
    print(f"\n{'backend':28}{'images/s':>10}{'vs stock':>10}{'demo AP':>10}{'AP - fp32':>11}")
    for name, speed in speeds.items():
        ap = (
            f"{aps[name]:10.2f}{aps[name] - aps['torch fp32']:+11.2f}"
            if name in aps
            else f"{'-':>10}{'-':>11}"
        )
        print(f"{name:28}{speed:10.3f}{speed / reference:9.2f}x{ap}")
    if not aps:
        print("\nNo demo model (run `kedro run`, or give --demo-model): the AP column was not measured.")
    else:
        print(f"\nDemo AP: {args.demo_model}, val split of {args.demo_root} (AP in points, 0-100).")


if __name__ == "__main__":
    main()
