"""The detectron2 parity fixture's inputs and format, without detectron2: tools/detectron2_reference.py
writes the fixture with them, tests/modeling/test_detectron2_parity.py loads this file to read it.

The commit and configuration of the reference model, its seeded weights (`reference_weights`: pure integer
arithmetic, reproducible anywhere, checked against the sha256 detectron2's state dict had), the generated
photos and targets, the kernel probe, and how large tensors are stored (`tensor_digest`: sha256 of the float32
bytes plus a sample), so that the fixture stays small.
"""

import hashlib
import zlib

import numpy as np
import torch

REFERENCE_COMMIT = "02b5c4e295e990042a714712c21dc79b731e8833"
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


def stored_tensor(tensor: torch.Tensor) -> torch.Tensor | dict:
    """Small tensors whole, large ones as their `tensor_digest`."""
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
