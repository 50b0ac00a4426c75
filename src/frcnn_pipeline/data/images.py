"""Reading images the way every pipeline sees them: RGB, with the EXIF orientation applied.

Phone photos store pixels unrotated plus an EXIF orientation tag; annotation tools draw boxes on the rotated
view. Ingest's size check, training, evaluation and prediction all use these two functions, so they agree.
PIL reads what ingest validated (more formats than torchvision's decoders).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}  # 90° rotations (with or without a mirror): width and height swap


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) after the EXIF orientation, from the header alone."""
    width, height = image.size
    if image.getexif().get(_ORIENTATION_TAG) in _TRANSPOSING_ORIENTATIONS:
        return height, width
    return width, height


def read_rgb(path: str | Path) -> torch.Tensor:
    """uint8 [3, H, W] RGB, EXIF orientation applied. Raises OSError (or ValueError) on an unreadable file."""
    with Image.open(path) as file:
        image = ImageOps.exif_transpose(file).convert("RGB")
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
