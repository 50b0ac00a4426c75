"""Inputs of the tests that compare the model with torchvision's: seeded weights in a trained model's ranges
and generated photos."""

from __future__ import annotations

import torch
from torchvision.ops.misc import FrozenBatchNorm2d


def realistic_(module: torch.nn.Module) -> None:
    """Seeded weights in a trained model's ranges, in place: frozen BN statistics and affine far from 0 and 1,
    small nonzero biases."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, FrozenBatchNorm2d):
                layer.weight.uniform_(0.3, 1.0)
                layer.bias.uniform_(-0.2, 0.2)
                layer.running_mean.uniform_(-0.3, 0.3)
                layer.running_var.uniform_(0.5, 2.0)
            elif isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)) and layer.bias is not None:
                layer.bias.uniform_(-0.05, 0.05)


def photo(height: int, width: int, seed: int, *, objects: int = 12, min_side: int = 40) -> torch.Tensor:
    """uint8 RGB [3, H, W] with a photo's structure: smooth shading, overlapping objects, sensor noise."""
    generator = torch.Generator().manual_seed(seed)
    rows, columns = torch.linspace(0, 1, height)[:, None], torch.linspace(0, 1, width)[None, :]
    image = 60 + 120 * torch.stack(torch.broadcast_tensors(rows * columns, rows, 1 - columns))
    for _ in range(objects):
        top, left = (torch.rand(2, generator=generator) * torch.tensor([height, width]) * 0.8).long()
        box_h, box_w = (
            torch.rand(2, generator=generator) * torch.tensor([height, width]) / 3
        ).long() + min_side
        image[:, top : top + box_h, left : left + box_w] = torch.rand(3, 1, 1, generator=generator) * 255
    image += torch.randn(image.shape, generator=generator) * 6
    return image.clamp(0, 255).round().to(torch.uint8)
