"""Reading images the way every pipeline sees them: 8-bit RGB, with the EXIF orientation applied.

Phone photos store pixels unrotated plus an EXIF orientation tag; annotation tools draw boxes on the rotated
view. Ingest's checks, training, evaluation and prediction all use these functions, so they agree.
PIL reads what ingest validated (more formats than torchvision's decoders).

Every mode Pillow opens becomes 8-bit RGB by one rule (`rgb_pixels`): 16-bit gray is scaled by its range
(65535 -> 255; Pillow's own `convert("RGB")` clips it to white), transparent pixels are shown over black, and
pixels with no faithful 8-bit form raise `UnconvertibleImageError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from frcnn_pipeline.errors import UserFacingError

_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}  # 90° rotations (with or without a mirror): width and height swap
# 16-bit gray in every byte order. Pillow < 11 opens 16-bit PNGs (and Pillow 13 16-bit PPMs) as "I": 32-bit
# integers holding the 16-bit values, so "I" is read on the same 0-65535 scale.
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_SIXTEEN_BIT_MAX = 65535
_SAVE_HINT = "save it as an 8-bit or 16-bit PNG or a JPEG, or drop it from the annotation file"


class UnconvertibleImageError(UserFacingError, ValueError):
    """An image whose pixels have no faithful 8-bit RGB form (e.g. 32-bit float data of unknown scale)."""


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) after the EXIF orientation, from the header alone."""
    width, height = image.size
    if image.getexif().get(_ORIENTATION_TAG) in _TRANSPOSING_ORIENTATIONS:
        return height, width
    return width, height


def read_rgb(path: str | Path) -> torch.Tensor:
    """uint8 [3, H, W] RGB, EXIF orientation applied.

    Raises OSError (or ValueError) on an unreadable file, UnconvertibleImageError (a ValueError) on pixels
    `rgb_pixels` cannot convert faithfully.
    """
    with Image.open(path) as file:
        pixels, _ = rgb_pixels(ImageOps.exif_transpose(file))
    return torch.from_numpy(pixels).permute(2, 0, 1)


def rgb_pixels(image: Image.Image) -> tuple[np.ndarray, str]:
    """(uint8 [H, W, 3] RGB pixels of any mode, a note: "" or how transparent pixels were shown).

    Raises:
        UnconvertibleImageError: "I" values outside 0-65535; "F" values non-finite, outside 0-255 (Pillow's
            scale for float images) or all within 0-1 (0-1 data or a black image: no way to tell); a mode
            Pillow cannot convert to RGB.
    """
    mode = image.mode
    transparent_value = image.info.get("transparency")
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        values = np.asarray(image)
        gray = _gray_from_float(values) if mode == "F" else _gray_from_sixteen_bit(values, mode)
        alpha = None
        if isinstance(transparent_value, int | float):  # a tRNS key value of 16-bit gray PNGs
            alpha = np.where(values == transparent_value, 0, 255).astype(np.uint8)
        return _over_black(np.repeat(gray[..., None], 3, axis=2), alpha)
    has_alpha = bool({"A", "a"} & set(image.getbands())) or transparent_value is not None
    target = "RGBA" if has_alpha else "RGB"
    try:
        converted = np.array(image if mode == target else image.convert(target))
    except ValueError as error:  # Pillow has no conversion for this mode
        raise UnconvertibleImageError(f"mode {mode}: {error}; {_SAVE_HINT}") from error
    if has_alpha:
        return _over_black(converted[..., :3], converted[..., 3])
    return converted, ""


def _gray_from_sixteen_bit(values: np.ndarray, mode: str) -> np.ndarray:
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > _SIXTEEN_BIT_MAX:
        raise UnconvertibleImageError(
            f"mode {mode} (integers) has values {low}..{high}, outside 0-65535 (the 16-bit range this "
            f"project scales to 0-255); map them to 0-65535 (e.g. a window of CT values) and {_SAVE_HINT}"
        )
    # Rounded to nearest: 65535 -> 255, 257 k -> k.
    return ((values.astype(np.uint32) * 255 + _SIXTEEN_BIT_MAX // 2) // _SIXTEEN_BIT_MAX).astype(np.uint8)


def _gray_from_float(values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise UnconvertibleImageError(f"mode F (32-bit float) has NaN or infinite values; {_SAVE_HINT}")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 255:
        raise UnconvertibleImageError(
            f"mode F (32-bit float) has values {low:g}..{high:g}, outside Pillow's 0-255 scale; map them to "
            f"0-255 and {_SAVE_HINT}"
        )
    if 0 < high <= 1:
        raise UnconvertibleImageError(
            f"mode F (32-bit float) has values {low:g}..{high:g}: a 0-1 scale, or a near-black image on "
            f"Pillow's 0-255 scale, cannot be told apart; scale them to 0-255 and {_SAVE_HINT}"
        )
    return np.rint(values).astype(np.uint8)


def _over_black(rgb: np.ndarray, alpha: np.ndarray | None) -> tuple[np.ndarray, str]:
    """The pixels as shown over a black background, and a note when any pixel is not opaque."""
    if alpha is None or alpha.min(initial=255) == 255:
        return np.ascontiguousarray(rgb), ""
    weight = alpha.astype(np.uint32)[..., None]
    shown = ((rgb.astype(np.uint32) * weight + 127) // 255).astype(np.uint8)
    share = float((alpha < 255).mean())
    return shown, f"{share:.1%} of its pixels are transparent or translucent: they are shown over black"
