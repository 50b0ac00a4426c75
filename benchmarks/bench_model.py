"""Model micro-benchmark: `build_model` (demo config) vs torchvision's own FasterRCNN of the same size.

Prints the median seconds per training step and per inference batch of both, measured interleaved in this
run, and the ratio ours / torchvision: the detectron2 options on torchvision's parts should cost nothing.

    python benchmarks/bench_model.py [--iterations 20] [--batch 4] [--size 128]
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torchvision.models import resnet
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from frcnn_pipeline.config import ModelParams
from frcnn_pipeline.framework.parameter_docs import load_parameters
from frcnn_pipeline.modeling import build_model


def torchvision_reference(cfg: ModelParams, num_classes: int) -> FasterRCNN:
    """torchvision's FasterRCNN with the same depth, widths, sizes and sampling as `cfg`."""
    backbone_cfg, inputs, rpn, roi = cfg.backbone, cfg.input, cfg.rpn, cfg.roi_heads
    body = getattr(resnet, f"resnet{backbone_cfg.depth}")(norm_layer=torch.nn.BatchNorm2d)
    expansion = body.layer1[0].expansion
    backbone = BackboneWithFPN(
        body,
        {f"layer{i + 1}": str(i) for i in range(4)},
        [64 * expansion * 2**i for i in range(4)],
        backbone_cfg.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    channels, resolution = backbone.out_channels, roi.pooler_resolution
    return FasterRCNN(
        backbone,
        min_size=tuple(inputs.min_size_train),
        max_size=inputs.max_size,
        image_mean=[m / 255 for m in inputs.pixel_mean],
        image_std=[s / 255 for s in inputs.pixel_std],
        rpn_anchor_generator=AnchorGenerator(
            tuple((s,) for s in cfg.anchors.sizes), (tuple(cfg.anchors.aspect_ratios),) * 5
        ),
        rpn_pre_nms_top_n_train=rpn.pre_nms_topk_train,
        rpn_post_nms_top_n_train=rpn.post_nms_topk_train,
        rpn_pre_nms_top_n_test=rpn.pre_nms_topk_test,
        rpn_post_nms_top_n_test=rpn.post_nms_topk_test,
        rpn_batch_size_per_image=rpn.batch_size_per_image,
        box_head=TwoMLPHead(channels * resolution**2, roi.fc_dim),
        box_predictor=FastRCNNPredictor(roi.fc_dim, num_classes + 1),
        box_batch_size_per_image=roi.batch_size_per_image,
    )


def median_seconds(runs: dict[str, Callable[[], None]], iterations: int) -> dict[str, float]:
    """Median wall time per call, candidates interleaved so that a busy machine slows both alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for iteration in range(iterations + 1):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if iteration:  # the first round is a warm-up
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelParams.parse(load_parameters("base")["model"], "model")  # the demo's
    images = [torch.randint(0, 256, (3, args.size, args.size), dtype=torch.uint8) for _ in range(args.batch)]
    boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [50.0, 40.0, 110.0, 90.0]])
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 2])} for _ in images]
    train_steps, inferences = {}, {}
    reference = torchvision_reference(cfg, num_classes=4)
    for name, model, inputs in (
        ("ours", build_model(cfg, num_classes=4), images),
        ("torchvision", reference, [image.float() / 255 for image in images]),
    ):
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def train_step(model=model, inputs=inputs, optimizer=optimizer):
            losses = model.train()(inputs, targets)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()

        def infer(model=model, inputs=inputs):
            with torch.no_grad():
                model.eval()(inputs)

        train_steps[name], inferences[name] = train_step, infer
    results = {"train step": median_seconds(train_steps, args.iterations)}
    reference.transform.min_size = (cfg.input.min_size_test,)  # torchvision tests at min_size[-1]
    results["inference"] = median_seconds(inferences, args.iterations)
    print(f"batch {args.batch} x {args.size}px, {args.threads} thread(s), median of {args.iterations}")
    for what, seconds in results.items():
        ours, reference = seconds["ours"], seconds["torchvision"]
        print(
            f"{what:>10}: ours {ours * 1000:7.1f} ms   torchvision {reference * 1000:7.1f} ms   "
            f"ratio {ours / reference:.2f}"
        )


if __name__ == "__main__":
    main()
