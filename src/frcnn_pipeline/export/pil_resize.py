"""Pillow's bilinear resize of a uint8 image as tensor ops with the sizes as tensors: for the dynamic graph.

`model.input.resize_interpolation: detectron2` resizes uint8 images with PIL (`modeling.transform`), which a
trace cannot follow, and no ONNX Resize reproduces it (ONNX Runtime's antialiased Resize is up to 18 grey
levels off). This is Pillow 13's algorithm (src/libImaging/Resample.c): `precompute_coeffs` in float64,
`normalize_coeffs_8bpc` to 22-bit integers, each pass an int32 sum over the window rounded by `clip8`, and
the vertical pass first when the height shrinks by more than twice as many pixels as the width
(`ImagingResampleInner`). The window length follows the scale, so it is a tensor too (`arange` of a tensor
is an ONNX Range): the graph follows every image size.
"""

import torch
from torch import Tensor
from torch.onnx.operators import shape_as_tensor

PRECISION_BITS = 22  # Resample.c: 32 - 8 - 2


def _window(in_size: Tensor, out_size: Tensor) -> tuple[Tensor, Tensor]:
    """One axis's source indices [out, ksize] (int64, clamped into the image) and the integer coefficients
    of those taps (int32, 0 beyond each output pixel's window), as Pillow computes them."""
    # [1], not 0-dim: the ONNX exporter types arithmetic on 0-dim tensors as float32 scalars
    in_float, out_float = in_size.reshape(1).to(torch.float64), out_size.reshape(1).to(torch.float64)
    scale = in_float / out_float
    filterscale = torch.clamp(scale, min=1.0)
    support = filterscale  # the bilinear filter's support, 1.0, times filterscale
    ksize = torch.ceil(support).to(torch.int64)[0] * 2 + 1
    ss = 1.0 / filterscale
    center = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    xmin = torch.floor(torch.clamp(center - support + 0.5, min=0.0))  # (int)(x + 0.5), clamped at 0
    count = torch.minimum(torch.floor(center + support + 0.5), in_float) - xmin
    taps = torch.arange(ksize, dtype=torch.float64)
    source = xmin[:, None] + taps
    distance = torch.abs((source - center[:, None] + 0.5) * ss)
    weights = torch.where((taps < count[:, None]) & (distance < 1.0), 1.0 - distance, 0.0)
    total = torch.cumsum(weights, dim=1)[:, -1:]  # Pillow's `ww`, summed tap after tap
    normalised = torch.where(total != 0.0, weights / total, weights)
    coefficients = torch.floor(0.5 + normalised * float(1 << PRECISION_BITS)).to(torch.int32)
    return torch.minimum(source, in_float - 1).to(torch.int64), coefficients


def _resample(pixels: Tensor, in_size: Tensor, out_size: Tensor) -> Tensor:
    """One pass along the last dimension of int32 pixels: Pillow's int32 sums and `clip8`."""
    index, coefficients = _window(in_size, out_size)
    taps = pixels.index_select(-1, index.flatten()).unflatten(-1, (index.shape[0], index.shape[1]))
    sums = (taps * coefficients).sum(dim=-1, dtype=torch.int32) + (1 << (PRECISION_BITS - 1))
    return torch.clamp(torch.div(sums, 1 << PRECISION_BITS, rounding_mode="floor"), 0, 255)


def _horizontal(pixels: Tensor, in_size: Tensor, out_size: Tensor) -> Tensor:
    return _resample(pixels, in_size, out_size)


def _vertical(pixels: Tensor, in_size: Tensor, out_size: Tensor) -> Tensor:
    return _resample(pixels.transpose(-1, -2), in_size, out_size).transpose(-1, -2)


def pil_bilinear_resize(image: Tensor, size: Tensor) -> Tensor:
    """`PIL.Image.resize((w, h), BILINEAR)` of a uint8 image [C, H, W] to `size` (int64 [2]: h, w), bit for
    bit, as int32 values 0-255. A pass whose size does not change is the identity, as Pillow skips it."""
    height, width = shape_as_tensor(image)[-2:].unbind()
    new_h, new_w = size.unbind()
    pixels = image.to(torch.int32)
    shrink_h, shrink_w = height - new_h, width - new_w
    vertical_first = (shrink_h > 0) & (shrink_h > shrink_w * 2)
    if not torch.jit.is_tracing():  # eager: the one order Pillow takes
        if vertical_first:
            return _horizontal(_vertical(pixels, height, new_h), width, new_w)
        return _vertical(_horizontal(pixels, width, new_w), height, new_h)
    # a trace follows no branch on the data: both orders, one kept (ONNX Where)
    return torch.where(
        vertical_first,
        _horizontal(_vertical(pixels, height, new_h), width, new_w),
        _vertical(_horizontal(pixels, width, new_w), height, new_h),
    )
