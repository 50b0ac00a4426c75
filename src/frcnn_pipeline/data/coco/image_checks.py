"""A split's images: the records checked (unique ids, positive sizes, safe file names) and the files they
name probed (readable, the size the JSON says); which images are dropped, and the findings that say why."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from frcnn_pipeline.console.progress import Progress
from frcnn_pipeline.data.coco.findings import (
    DEFAULT_SEVERITY,
    UNUSABLE_IMAGE_CHECKS,
    Findings,
    ValidationPolicy,
)
from frcnn_pipeline.data.coco.json_file import ImageRecord, column, float_column, raise_duplicates
from frcnn_pipeline.data.images import UnconvertibleImageError, oriented_size, rgb_pixels

_PROGRESS_MIN_IMAGES = 2000  # below this, image checks finish too fast for a progress bar to help


@dataclass
class SplitImages:
    """A split's image records by position, and which of them are kept."""

    ids: np.ndarray
    file_names: pd.Series
    paths: pd.Series
    widths: np.ndarray  # 0 where the JSON's size is not a positive finite number
    heights: np.ndarray
    alive: np.ndarray
    drop_reason: dict[int, tuple[str, str]]  # position -> (check, reason) of a dropped image
    reported: dict[int, tuple[str, str]]  # kept images with a reported finding (transparency)


def check_images(
    path: Path, records: list[ImageRecord], image_dir: Path, policy: ValidationPolicy, split: str
) -> SplitImages:
    """The image records, with the images whose record or file is unusable marked dropped."""
    ids = column(records, "id", np.int64)
    file_names = pd.Series([r.file_name for r in records], dtype="str")
    size_written = float_column(records, "width"), float_column(records, "height")
    bad_size = ~np.isfinite(size_written).all(axis=0) | (np.stack(size_written) <= 0).any(axis=0)
    widths, heights = (np.where(bad_size, 0, values).astype(np.int64) for values in size_written)
    raise_duplicates(path, "image", ids, file_names.tolist())
    paths = (str(Path(image_dir).resolve()) + "/" + file_names).astype("str")
    images = SplitImages(ids, file_names, paths, widths, heights, np.ones(len(ids), dtype=bool), {}, {})
    unsafe = _unsafe_file_names(file_names)
    for position in np.flatnonzero(unsafe):
        images.drop_reason[position] = (
            "unsafe_file_name",
            f"file_name {file_names[position]!r} escapes the image folder (absolute or '..'); "
            "use a path relative to the image folder",
        )
    for position in np.flatnonzero(bad_size & ~unsafe):
        images.drop_reason[position] = (
            "image_size_mismatch",
            f"width/height {size_written[0][position]:g}x{size_written[1][position]:g} must be positive "
            "finite numbers",
        )
    if policy.image_checks != "none":
        to_probe = np.flatnonzero(~unsafe & ~bad_size)
        probes = _probe_images(
            paths.iloc[to_probe].tolist(),
            widths[to_probe],
            heights[to_probe],
            decode=policy.image_checks == "decode",
            workers=policy.workers,
            split=split,
        )
        for position, probe in zip(to_probe, probes, strict=True):
            if probe is not None:
                kept = DEFAULT_SEVERITY[probe[0]] == "reported"
                (images.reported if kept else images.drop_reason)[position] = probe
    if images.drop_reason:
        images.alive[list(images.drop_reason)] = False
    return images


def report_image_findings(findings: Findings, images: SplitImages, dropped_per_image: np.ndarray) -> None:
    """One finding per dropped image (with the number of annotations it took along) and per reported one."""
    for check in UNUSABLE_IMAGE_CHECKS:
        positions = [p for p, (c, _) in images.drop_reason.items() if c == check]
        findings.add(
            check,
            images.ids[positions],
            [None] * len(positions),
            [
                f"image {images.ids[p]} ({images.file_names[p]}): {images.drop_reason[p][1]}; "
                f"dropped with its {dropped_per_image[p]} annotation(s)"
                for p in positions
            ],
        )
    findings.add(
        "transparent_image",
        images.ids[list(images.reported)],
        [None] * len(images.reported),
        [
            f"image {images.ids[p]} ({images.file_names[p]}): {reason}; kept"
            for p, (_, reason) in images.reported.items()
        ],
    )


def report_images_without_annotations(
    findings: Findings, images: SplitImages, usable: np.ndarray, crowd: np.ndarray, drop: bool
) -> np.ndarray:
    """Reports the kept images with no usable (non-crowd) annotation, per image counts ``usable`` and
    ``crowd``, as dropped when ``drop``; returns their positions."""
    empty = np.flatnonzero(images.alive & (usable == 0))
    findings.add(
        "image_without_annotations",
        images.ids[empty],
        [None] * len(empty),
        [
            f"image {images.ids[p]} ({images.file_names[p]}) has no usable annotation"
            + (f" ({crowd[p]} crowd)" if crowd[p] else "")
            + ("; dropped (drop_images_without_annotations)" if drop else "; kept")
            for p in empty
        ],
        severity="dropped" if drop else "reported",
    )
    return empty


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
        probed = []
        with Progress(
            f"checking {split} images", len(paths), "img", enabled=len(paths) >= _PROGRESS_MIN_IMAGES
        ) as bar:
            for result in results:
                probed.append(result)
                bar.update()
        return probed
