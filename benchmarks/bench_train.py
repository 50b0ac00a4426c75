"""Training speed: our Faster R-CNN (R-50-FPN, detectron2 config) against torchvision's stock model.

Both train from random weights with the same recipe pieces (frozen BN, stem + res2 frozen, SGD momentum 0.9,
the same proposal counts: see references.py),
on the same random images and boxes, same batch, at a moderate size (shorter side --size), on this machine.
A step is forward + backward + optimizer step, as in the engine's loop. The sides take turns step by step, so
load from other processes on a shared machine slows both alike. Ours is also timed with the engine's options
(runtime.channels_last, runtime.amp bf16 on CPU) to show whether each pays for itself.

    python benchmarks/bench_train.py [--size 256] [--batch 2] [--steps 3] [--variants fp32 channels_last bf16]
"""

from __future__ import annotations

import argparse
import time

import torch
from references import stock_fasterrcnn_resnet50_fpn

from frcnn_pipeline.config import AmpParams, ModelParams
from frcnn_pipeline.engine.amp import MixedPrecision
from frcnn_pipeline.modeling import build_model

NUM_CLASSES = 80
VARIANTS = {
    "fp32": {"channels_last": False, "amp": {"enabled": False}},
    "channels_last": {"channels_last": True, "amp": {"enabled": False}},
    "bf16": {"channels_last": False, "amp": {"enabled": True, "dtype": "bfloat16"}},
}


class Side:
    """One model, its optimizer and precision, and the inputs in the form it expects."""

    def __init__(self, model, images, targets, channels_last: bool, amp: dict):
        self.model = model.train()
        self.precision = MixedPrecision(AmpParams.parse(amp, "runtime.amp"), torch.device("cpu"))
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)
        self.images, self.targets = images, targets

    def step(self) -> float:
        start = time.perf_counter()
        with self.precision.autocast():
            losses = self.model(self.images, self.targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(sum(losses.values()), self.optimizer)
        self.precision.step(self.optimizer)
        return time.perf_counter() - start


def make_batch(batch: int, size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (3, size, size * 4 // 3), dtype=torch.uint8, generator=generator)]
    images *= batch
    targets = []
    for _ in range(batch):
        xy = torch.rand(3, 2, generator=generator) * size * 0.6
        wh = 20 + torch.rand(3, 2, generator=generator) * size * 0.3
        targets.append(
            {"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, NUM_CLASSES + 1, (3,))}
        )
    return images, targets


def build_sides(args) -> dict[str, Side]:
    images, targets = make_batch(args.batch, args.size, seed=0)
    max_size = args.size * 5 // 3
    # detectron2 R-50-FPN: frozen BN, freeze_at 2, BGR, pixel std 1
    ours_cfg = ModelParams().replaced(
        input={"min_size_train": [args.size], "min_size_test": args.size, "max_size": max_size}
    )
    sides = {}
    for variant in args.variants:
        torch.manual_seed(0)
        sides[f"ours[{variant}]"] = Side(
            build_model(ours_cfg, NUM_CLASSES), images, targets, **VARIANTS[variant]
        )
    torch.manual_seed(0)
    reference = stock_fasterrcnn_resnet50_fpn(NUM_CLASSES, args.size, max_size)
    sides["torchvision"] = Side(
        reference, [i.float() / 255 for i in images], targets, channels_last=False, amp={"enabled": False}
    )
    return sides


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=256, help="shorter image side (both models resize to it)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side")
    parser.add_argument("--variants", nargs="+", default=["fp32", "channels_last"], choices=VARIANTS)
    args = parser.parse_args()

    sides = build_sides(args)
    for side in sides.values():
        side.step()  # warm-up: oneDNN kernels, allocator
    seconds = dict.fromkeys(sides, 0.0)
    for step in range(args.steps):
        for name, side in sides.items():
            seconds[name] += side.step()
        print(
            f"step {step + 1}/{args.steps}: " + ", ".join(f"{n} {s:.1f}s" for n, s in seconds.items()),
            flush=True,
        )
    rate = {name: args.steps * args.batch / total for name, total in seconds.items()}

    print(f"training images/s, CPU ({torch.get_num_threads()} threads), batch {args.batch}, "
          f"shorter side {args.size}, {args.steps} steps per side, R-50-FPN from random weights")  # fmt: skip
    reference = rate["torchvision"]
    print(f"  torchvision fasterrcnn_resnet50_fpn: {reference:7.3f} images/s")
    for name, value in rate.items():
        if name != "torchvision":
            print(f"  {name:<35} {value:7.3f} images/s   ratio {value / reference:.3f}")
    print(f"ratio ours[fp32] / torchvision = {rate['ours[fp32]'] / reference:.3f} (target >= 1.0)")


if __name__ == "__main__":
    main()
