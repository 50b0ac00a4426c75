"""Calibration of engine/memory_budget.py: the memory of real CPU training steps against its estimate.

Each configuration trains 3 SGD steps (momentum 0.9, 2 boxes per image) in a fresh process, with glibc's
MALLOC_MMAP_THRESHOLD_=65536 so freed memory leaves the process at once and the peak resident set follows the
live tensors. Prints the measured peak growth over the process before the model was built, the estimate
(`estimate_training_step`: weights, gradients, optimizer state, saved activations), their ratio, and the
activation bytes per input pixel, measured (from two sizes) and estimated.

    python benchmarks/bench_memory.py [--sizes 320 576] [--images 1] [--configs r50 demo]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from frcnn_pipeline.config import ModelParams
from frcnn_pipeline.engine.memory_budget import estimate_training_step

CONFIGS = {
    "r50": {},  # the card's R-50-FPN, frozen BN, stem + res2 frozen
    "demo": {
        "backbone": {"depth": 18, "norm": "bn", "freeze_at": 0, "fpn_channels": 64},
        "roi_heads": {"batch_size_per_image": 64, "fc_dim": 256},
    },
}

_STEP = """
import json, resource, sys
import psutil, torch
from frcnn_pipeline.config import ModelParams
from frcnn_pipeline.modeling import build_model
torch.set_num_threads(1)
cfg, size, images, steps = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
start = psutil.Process().memory_info().rss
model = build_model(ModelParams.parse(cfg, "model"), 3).train()
optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)
box = [[8.0, 8.0, size / 2, size / 2], [size / 3, size / 4, size - 5.0, size - 9.0]]
targets = [{"boxes": torch.tensor(box), "labels": torch.tensor([1, 2])} for _ in range(images)]
batch = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8) for _ in range(images)]
for _ in range(steps):
    losses = model(batch, targets)
    optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    optimizer.step()
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start))
"""


def measured_peak(cfg: dict, size: int, images: int, steps: int = 3) -> int:
    """Peak resident-set growth of `steps` SGD steps in a fresh process (tests/engine/test_memory_budget.py
    uses it too)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run(
        [sys.executable, "-c", _STEP, json.dumps(cfg), str(size), str(images), str(steps)],
        capture_output=True, text=True, env=env, check=True, timeout=600,
    )  # fmt: skip
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[320, 576])
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS))
    args = parser.parse_args()
    mib = 2**20
    for name in args.configs:
        rows = []
        for size in args.sizes:
            cfg = {**CONFIGS[name], "input": {"min_size_train": [size], "max_size": size}}
            estimate = estimate_training_step(ModelParams.parse(cfg, "model"), 3, args.images)
            peak = measured_peak(cfg, size, args.images)
            rows.append((size, peak, estimate))
            print(
                f"{name} {size}px x{args.images}: measured {peak / mib:.0f} MiB, estimate "
                f"{estimate.total_bytes / mib:.0f} MiB (ratio {peak / estimate.total_bytes:.2f}), "
                f"estimated activations {estimate.bytes_per_pixel:.0f} B/px"
            )
        (small, small_peak, _), (large, large_peak, _) = rows
        slope = (large_peak - small_peak) / (args.images * (large**2 - small**2))
        print(f"{name}: measured {slope:.0f} B/px between {small} and {large} px")


if __name__ == "__main__":
    main()
