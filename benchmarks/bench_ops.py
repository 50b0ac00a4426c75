"""Detection-ops benchmark: our RoIAlign and NMS against torchvision's kernels on CPU.

RoIAlign: the box pooler's work, each RoI pooled on its level (detectron2's level mapper), aligned,
adaptive (sampling_ratio 0, the default) and fixed (2) sampling; forward, and forward + backward. Two
workloads: COCO (2 padded 800×1216 images, FPN maps P2–P5 of 256 channels, `--rois` proposals per image,
sides 16–800 px) and the demo (4 images of 96×96, 64 channels, 64 RoIs per image, sides 8–96 px). Ours:
the portable op, and on the forward + backward rows also `frcnn_pipeline.layers.roi_align` as training
on CPU runs it (torchvision's forward, the backward as matrix products where cheaper).
NMS: RPN-like proposals (clusters around objects, 5 levels as classes) at 2,000–10,000 boxes, IoU 0.7;
`batched_nms` (per-class, data-dependent) and `nms_keep_mask` (fixed shapes).
Prints the median seconds of both (their runs alternating), the ratio ours / torchvision and
the largest difference (RoIAlign: max |difference| of the outputs and of the feature gradients; NMS: kept
indices identical or not).

    python benchmarks/bench_ops.py [--rois 1000] [--images 2] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms as tv_batched_nms
from torchvision.ops import roi_align as tv_roi_align
from torchvision.ops.poolers import initLevelMapper

from frcnn_pipeline.layers import backend, batched_nms, nms_keep_mask, roi_align
from frcnn_pipeline.layers.portable_roi_align import portable_roi_align

STRIDES = (4, 8, 16, 32)
IMAGE_HW = (800, 1216)


@dataclass(frozen=True)
class Workload:
    name: str
    image_hw: tuple[int, int]
    images: int
    channels: int
    rois_per_image: int
    box_sides: tuple[float, float]  # px, log-uniform


def _median_seconds(reference: Callable[[], object], ours: Callable[[], object], repeats: int):
    """Median seconds of each, the two runs alternating (a busy machine slows both alike)."""
    reference(), ours()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for run, samples in zip((reference, ours), times, strict=True):
            start = time.perf_counter()
            run()
            samples.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def _proposals(
    images: int,
    per_image: int,
    generator: torch.Generator,
    image_hw: tuple[int, int] = IMAGE_HW,
    sides: tuple[float, float] = (16, 800),
) -> list[torch.Tensor]:
    """Boxes with sides log-uniform in `sides` px, aspect 1:3–3:1, inside the image."""
    height, width = image_hw
    boxes = []
    for _ in range(images):
        size = torch.exp(torch.empty(per_image).uniform_(*map(math.log, sides), generator=generator))
        aspect = torch.exp(torch.empty(per_image).uniform_(-math.log(3), math.log(3), generator=generator))
        w, h = (size * aspect.sqrt()).clamp(max=width), (size / aspect.sqrt()).clamp(max=height)
        x1 = torch.rand(per_image, generator=generator) * (width - w)
        y1 = torch.rand(per_image, generator=generator) * (height - h)
        boxes.append(torch.stack([x1, y1, x1 + w, y1 + h], dim=1))
    return boxes


def bench_roi_align(workload: Workload, repeats: int, generator: torch.Generator) -> list[tuple]:
    features = [
        torch.randn(
            workload.images,
            workload.channels,
            math.ceil(workload.image_hw[0] / s),
            math.ceil(workload.image_hw[1] / s),
            generator=generator,
        )
        for s in STRIDES
    ]
    boxes = _proposals(
        workload.images, workload.rois_per_image, generator, workload.image_hw, workload.box_sides
    )
    rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)])
    levels = initLevelMapper(2, 5)(boxes)
    per_level = [rois[levels == level] for level in range(len(STRIDES))]
    print(
        f"RoIAlign, {workload.name}: {len(rois)} RoIs on levels P2–P5: {[len(r) for r in per_level]}, "
        f"{workload.channels} channels, 7×7"
    )

    rows = []
    for ratio in (0, 2):

        def pool(op, backward: bool, ratio=ratio):
            inputs = [f.detach().requires_grad_(backward) for f in features]
            pooled = [
                op(f, r, 7, 1.0 / s, ratio, True) for f, r, s in zip(inputs, per_level, STRIDES, strict=True)
            ]
            if not backward:
                return pooled, None
            grad_outputs = [torch.ones_like(p) for p in pooled]
            return pooled, torch.autograd.grad(pooled, inputs, grad_outputs)

        for ours_name, ours, backward in (
            ("portable", portable_roi_align, False),
            ("portable", portable_roi_align, True),
            ("training on CPU", roi_align, True),
        ):
            passes = "fwd+bwd" if backward else "fwd"
            name = f"{workload.name} sampling {ratio} {passes}, {ours_name}"
            reference, candidate = (functools.partial(pool, op, backward) for op in (tv_roi_align, ours))
            reference_s, ours_s = _median_seconds(reference, candidate, repeats)
            expected, result = pool(tv_roi_align, backward), pool(ours, backward)
            notes = [_difference("output", expected[0], result[0])]
            if backward:
                notes.append(_difference("gradient", expected[1], result[1]))
            rows.append((name, reference_s, ours_s, "; ".join(notes)))
    return rows


def _difference(what: str, expected: list[torch.Tensor], actual: list[torch.Tensor]) -> str:
    pairs = [(e, a) for e, a in zip(expected, actual, strict=True) if e.numel()]  # a level may have no RoIs
    largest = max(e.abs().max().item() for e, _ in pairs)
    diff = max((e - a).abs().max().item() for e, a in pairs)
    return f"{what} max |diff| {diff:.1e} (max |value| {largest:.1f})"


def _rpn_like_boxes(
    count: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Proposals jittered around 100 objects (heavy overlaps, as the RPN's), scores in (0, 1), 5 levels."""
    height, width = IMAGE_HW
    objects = _proposals(1, 100, generator)[0]
    owner = torch.randint(0, 100, (count,), generator=generator)
    size = (objects[owner, 2:] - objects[owner, :2]).repeat(1, 2)
    boxes = objects[owner] + torch.randn(count, 4, generator=generator) * size * 0.15
    boxes = torch.stack(
        [
            boxes[:, 0].clamp(0, width),
            boxes[:, 1].clamp(0, height),
            boxes[:, 2].clamp(0, width),
            boxes[:, 3].clamp(0, height),
        ],
        dim=1,
    )
    # Distinct scores: torchvision's per-class path (> 1000 boxes) orders equal scores with an unstable sort.
    scores = (torch.randperm(count, generator=generator).float() + 0.5) / count
    return boxes, scores, torch.randint(0, 5, (count,), generator=generator)


def bench_nms(args: argparse.Namespace, generator: torch.Generator) -> list[tuple]:
    rows = []
    for count in (2000, 5000, 10000):
        boxes, scores, levels = _rpn_like_boxes(count, generator)
        expected = tv_batched_nms(boxes, scores, levels, 0.7)
        backend.configure("portable")
        kept = batched_nms(boxes, scores, levels, 0.7)
        mask = nms_keep_mask(boxes, scores, 0.7, levels)
        reference = functools.partial(tv_batched_nms, boxes, scores, levels, 0.7)
        reference_s, portable_s = _median_seconds(
            reference, functools.partial(batched_nms, boxes, scores, levels, 0.7), args.repeats
        )
        mask_reference_s, mask_s = _median_seconds(
            reference, functools.partial(nms_keep_mask, boxes, scores, 0.7, levels), args.repeats
        )
        backend.configure("auto")
        kept_note = "identical" if torch.equal(kept, expected) else "DIFFERENT"
        rows.append((f"batched_nms {count} boxes", reference_s, portable_s, f"{kept_note}, {len(kept)} kept"))
        mask_note = "identical" if torch.equal(torch.where(mask)[0], expected.sort().values) else "DIFFERENT"
        rows.append((f"nms_keep_mask {count} boxes", mask_reference_s, mask_s, mask_note))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rois", type=int, default=1000, help="proposals per image")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU")
    generator = torch.Generator().manual_seed(0)
    workloads = (
        Workload("COCO", IMAGE_HW, args.images, 256, args.rois, (16, 800)),
        Workload("demo", (96, 96), 4, 64, 64, (8, 96)),
    )
    rows = [row for w in workloads for row in bench_roi_align(w, args.repeats, generator)]
    rows += bench_nms(args, generator)
    print(f"{'op':<50} {'torchvision':>12} {'ours':>10} {'ratio':>7}  difference")
    for name, reference_s, ours_s, difference in rows:
        ratio = ours_s / reference_s
        print(f"{name:<50} {reference_s:>10.4f} s {ours_s:>8.4f} s {ratio:>6.2f}×  {difference}")


if __name__ == "__main__":
    main()
