"""Checks of the image files a split names: safe file names, readable, the size the JSON says."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from frcnn_pipeline.data.images import UnconvertibleImageError, oriented_size, rgb_pixels

_PROGRESS_MIN_IMAGES = 2000  # below this, image checks finish too fast for a progress bar to help


def _unsafe_file_names(file_names: pd.Series) -> np.ndarray:
    """Absolute paths, Windows drives and `..` components would read outside the image folder."""
    absolute = file_names.str.match(r"^([/\\]|[A-Za-z]:)")
    parent = file_names.str.contains(r"(?:^|[/\\])\.\.(?:[/\\]|$)", regex=True)
    return (absolute | parent).to_numpy(dtype=bool)


def _probe_image(path: str, width: int, height: int, decode: bool) -> tuple[str, str] | None:
    """None when the image is usable, else (check, reason). ``decode`` converts the pixels as training does
    (frcnn_pipeline.data.images.rgb_pixels); its note on transparent pixels comes back as a reported check."""
    note = ""
    try:
        with Image.open(path) as image:
            size = oriented_size(image)
            if decode:
                _, note = rgb_pixels(image)
    except FileNotFoundError:
        return "missing_image_file", f"file not found: {path}"
    except UnconvertibleImageError as error:
        return "unconvertible_image", f"{path}: {error}"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return "unreadable_image", f"cannot decode {path}: {error}"
    if size != (width, height):
        return (
            "image_size_mismatch",
            f"{path} is {size[0]}x{size[1]} (EXIF orientation applied) but the JSON says {width}x{height}",
        )
    return ("transparent_image", f"{path}: {note}") if note else None


def _probe_images(paths: list[str], widths, heights, *, decode: bool, workers: int, split: str) -> list:
    # Opening files is I/O-bound: threads overlap the waits; PIL releases the GIL while decoding.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(_probe_image, paths, widths.tolist(), heights.tolist(), [decode] * len(paths))
        return list(
            tqdm(
                results,
                total=len(paths),
                desc=f"checking {split} images",
                unit="img",
                disable=len(paths) < _PROGRESS_MIN_IMAGES,
            )
        )
