"""Evaluation batches grouped by aspect ratio against batches in path order, same run, same model.

COCO val mixes landscape and portrait photos; a batch holding both is padded to a square. The images here
alternate 640x480 and 480x640 (random pixels), the model is the demo's R-18-FPN at COCO's test size (800 px,
max 1333), random weights: the work per pixel is what counts, not the detections.

    python benchmarks/bench_eval_batching.py [--images 16] [--batch-size 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from frcnn_pipeline.config import InferenceParams, ModelParams
from frcnn_pipeline.evaluation.inference import run_inference
from frcnn_pipeline.framework.parameter_docs import load_parameters
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.runtime.world import WorldConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_parameters("base")["model"]
    cfg = ModelParams.parse(
        {**model, "input": {**model["input"], "min_size_test": 800, "max_size": 1333}}, "model"
    )
    torch.manual_seed(0)
    weights = build_model(cfg, 4).state_dict()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i in range(args.images):
            shape = (480, 640, 3) if i % 2 == 0 else (640, 480, 3)
            path = Path(folder) / f"{i:03d}.jpg"
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path)
            paths.append(str(path))
        results = {}
        for grouped in (False, True, False, True):  # interleaved: machine noise hits both alike
            options = InferenceParams(batch_size=args.batch_size, group_by_aspect=grouped)
            start = time.perf_counter()
            run_inference(weights, cfg, 4, paths, world=WorldConfig(), options=options)
            results.setdefault(grouped, []).append(time.perf_counter() - start)
    ours, reference = min(results[True]), min(results[False])
    print(f"{'batches':<28}{'seconds':>10}{'images/s':>10}")
    print(f"{'path order (reference)':<28}{reference:>10.2f}{args.images / reference:>10.3f}")
    print(f"{'grouped by aspect (ours)':<28}{ours:>10.2f}{args.images / ours:>10.3f}")
    setting = f"best of 2 runs each, {args.images} images, batch {args.batch_size}"
    print(f"speed-up: {reference / ours:.2f}x ({setting})")


if __name__ == "__main__":
    main()
