"""COCO-format reading, validation, tables and clean ground truth (Kedro-free).

``read_coco_split`` decodes one split's annotation file, checks every record, drops or fixes what it must,
and returns the tables of docs/architecture.md plus one report row per finding. Fatal problems raise
``CocoFormatError`` with the file, the record id, what is wrong and how to fix it.

The JSON is decoded with msgspec into structs that declare only the fields we use: segmentations are skipped
without being materialised, which keeps a COCO-train-sized file faster to validate than pycocotools' bare
load, and type errors come with a JSON path. Tables are then built with numpy/pandas, without per-record
loops.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

# Default severity of every check. Structural problems are always fatal; the others may be escalated to fatal.
DEFAULT_SEVERITY: dict[str, str] = {
    "unreadable_json": "fatal",
    "schema": "fatal",
    "duplicate_image_id": "fatal",
    "duplicate_annotation_id": "fatal",
    "duplicate_category_id": "fatal",
    "category_mismatch": "fatal",
    "empty_split": "fatal",
    "unknown_image": "dropped",
    "unknown_category": "dropped",
    "invalid_bbox": "dropped",
    "degenerate_bbox": "dropped",
    "bbox_outside_image": "dropped",
    "unsafe_file_name": "dropped",
    "missing_image_file": "dropped",
    "unreadable_image": "dropped",
    "image_size_mismatch": "dropped",
    "clipped_bbox": "fixed",
    "image_without_annotations": "reported",
    "crowd_annotation": "reported",
    "unused_category": "reported",
    "annotation_id_zero": "reported",
    "noncontiguous_category_ids": "reported",
}

IMAGE_CHECK_MODES = ("none", "header", "decode")
REPORT_COLUMNS = ["split", "severity", "check", "image_id", "annotation_id", "message"]
_PROGRESS_MIN_IMAGES = 2000  # below this, image checks finish too fast for a progress bar to help
_MAX_LISTED = 5  # findings quoted in an error message


class CocoFormatError(ValueError):
    """A fatal problem in a COCO split: the message names the file, the record and the fix."""


# Only the fields we use are declared: msgspec skips the rest (segmentation, licenses...) without building it.
# gc=False: these records hold no reference cycles, and ~1M GC-tracked objects would slow decoding twofold.
class _Image(msgspec.Struct, gc=False):
    id: int
    file_name: str
    width: int
    height: int


class _Box(msgspec.Struct, array_like=True, forbid_unknown_fields=True, gc=False):
    """A JSON [x, y, w, h]; a struct is smaller and faster to build than a list of 4 floats."""

    x: float
    y: float
    w: float
    h: float


class _Annotation(msgspec.Struct, gc=False):
    id: int
    image_id: int
    category_id: int
    bbox: _Box
    area: float = math.nan
    iscrowd: int | bool = 0


class _LooseAnnotation(_Annotation, gc=False):
    """Accepts any bbox list, so that a box that is not 4 numbers is dropped and reported, not fatal."""

    bbox: list[float | None]


class _Category(msgspec.Struct, gc=False):
    id: int
    name: str
    supercategory: str = ""


class _CocoFile(msgspec.Struct):
    images: list[_Image]
    # Raw JSON slices, decoded in chunks: the file's bytes and ~1M annotation objects never coexist.
    annotations: list[msgspec.Raw]
    categories: list[_Category]


_ANNOTATION_CHUNK = 16384
_ANNOTATIONS = msgspec.json.Decoder(list[_Annotation])
_LOOSE_ANNOTATIONS = msgspec.json.Decoder(list[_LooseAnnotation])


class _RecordId(msgspec.Struct):
    id: Any = None


class _RecordIds(msgspec.Struct):
    images: list[_RecordId] = []
    categories: list[_RecordId] = []


@dataclass(frozen=True)
class SplitSource:
    """Where one split lives: its COCO annotation file and the folder its ``file_name``s are relative to."""

    name: str
    annotation_file: Path
    image_dir: Path


@dataclass(frozen=True)
class ValidationPolicy:
    """How a split is checked. ``severity`` overrides ``DEFAULT_SEVERITY`` (only escalation to fatal)."""

    min_box_size: float = 0.0
    image_checks: str = "header"
    drop_images_without_annotations: bool = False
    severity: Mapping[str, str] = field(default_factory=dict)
    workers: int = 8

    def __post_init__(self) -> None:
        if self.image_checks not in IMAGE_CHECK_MODES:
            raise ValueError(f"image_checks must be one of {IMAGE_CHECK_MODES}, got {self.image_checks!r}")
        if self.min_box_size < 0:
            raise ValueError(f"min_box_size must be >= 0, got {self.min_box_size}")
        resolve_severity(self.severity)


def resolve_severity(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The default severity map with ``overrides`` applied; a check may only be made fatal."""
    severity = dict(DEFAULT_SEVERITY)
    for check, level in (overrides or {}).items():
        if check not in DEFAULT_SEVERITY:
            raise ValueError(
                f"Unknown validation check {check!r} in the severity policy; known: {sorted(severity)}"
            )
        if level not in (DEFAULT_SEVERITY[check], "fatal"):
            raise ValueError(
                f"Severity of {check!r} can only be {DEFAULT_SEVERITY[check]!r} (default) or 'fatal', "
                f"got {level!r}"
            )
        severity[check] = level
    return severity


@dataclass
class CocoSplit:
    """One validated split: the tables of docs/architecture.md and the findings.

    ``bbox_xywh`` is aligned with ``annotations``: the boxes as used, with the JSON's exact numbers where no
    clipping happened (so the clean ground truth does not pick up float round-off from xyxy -> xywh).
    """

    name: str
    annotation_file: Path
    images: pd.DataFrame
    annotations: pd.DataFrame
    categories: pd.DataFrame
    findings: pd.DataFrame
    bbox_xywh: np.ndarray
    # sha256 of the annotation file, images and annotations declared / kept / dropped (see `fingerprint`).
    fingerprint: dict[str, Any] = field(default_factory=dict)


def empty_findings() -> pd.DataFrame:
    return _findings_frame([], [], [], [], [], message=[])


def _findings_frame(split, severity, check, image_id, annotation_id, *, message) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "split": pd.Series(split, dtype="str"),
            "severity": pd.Series(severity, dtype="str"),
            "check": pd.Series(check, dtype="str"),
            "image_id": pd.Series(image_id, dtype="Int64"),
            "annotation_id": pd.Series(annotation_id, dtype="Int64"),
            "message": pd.Series(message, dtype="str"),
        },
        columns=REPORT_COLUMNS,
    )


class _Findings:
    """Collects report rows check by check (each check adds its flagged records in one go)."""

    def __init__(self, split: str, policy: ValidationPolicy) -> None:
        self.split = split
        self.severity = resolve_severity(policy.severity)
        self.frames: list[pd.DataFrame] = []

    def add(
        self, check: str, image_ids, annotation_ids, messages: list[str], severity: str | None = None
    ) -> None:
        if not messages:
            return
        level = "fatal" if self.severity[check] == "fatal" else (severity or self.severity[check])
        n = len(messages)
        self.frames.append(
            _findings_frame(
                [self.split] * n, [level] * n, [check] * n, image_ids, annotation_ids, message=messages
            )
        )

    def frame(self) -> pd.DataFrame:
        return pd.concat(self.frames, ignore_index=True) if self.frames else empty_findings()


def _fatal(path: Path, what: str, fix: str) -> CocoFormatError:
    return CocoFormatError(f"{path}: {what}. Fix: {fix}")


_FIX_RECORD = "correct or remove that record"


def _decode(path: Path) -> tuple[_CocoFile, str]:
    """The parsed file and the sha256 of its bytes (the split's fingerprint)."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise _fatal(
            path,
            f"cannot read the annotation file ({error.strerror or error})",
            "check ingest.data_root and the split's annotation_file parameter",
        ) from error
    try:
        return msgspec.json.decode(raw, type=_CocoFile), hashlib.sha256(raw).hexdigest()
    except msgspec.ValidationError as error:
        raise _fatal(path, _describe_type_error(raw, str(error)), _FIX_RECORD) from error
    except msgspec.DecodeError as error:
        raise _fatal(
            path,
            f"unreadable or truncated JSON ({error})",
            "re-download or re-export the file; `python -m json.tool FILE` shows where it breaks",
        ) from error


def _describe_type_error(raw: bytes, message: str) -> str:
    """Adds the id of the offending record to msgspec's 'what - at `$.images[12].width`' message."""
    match = re.search(r"`\$\.(images|categories)\[(\d+)\]", message)
    if not match:
        return f"missing top-level key or wrong type: {message}"
    section, index = match.group(1), int(match.group(2))
    try:
        record_id = getattr(msgspec.json.decode(raw, type=_RecordIds), section)[index].id
    except (msgspec.DecodeError, IndexError):
        record_id = None
    noun = {"images": "image", "categories": "category"}[section]
    return f"{noun} id {record_id}: missing field or wrong type: {message}"


def _column(records: list, name: str, dtype) -> np.ndarray:
    return np.fromiter(map(attrgetter(name), records), dtype=dtype, count=len(records))


def _loose_boxes(annotations: list[_LooseAnnotation]) -> np.ndarray:
    """(N, 4) float64 xywh; rows that are not 4 numbers (or hold nulls) become NaN."""
    bboxes = list(map(attrgetter("bbox"), annotations))
    lengths = np.fromiter(map(len, bboxes), dtype=np.int64, count=len(bboxes))
    boxes = np.full((len(bboxes), 4), np.nan)
    good = np.flatnonzero(lengths == 4)
    if len(good):
        boxes[good] = np.array([bboxes[i] for i in good], dtype=np.float64)
    return boxes


def _annotation_columns(path: Path, raws: list[msgspec.Raw]) -> dict[str, np.ndarray]:
    """Decodes the annotations chunk by chunk into numpy columns (ids, xywh boxes, area, crowd flag)."""
    chunks = []
    for start in range(0, len(raws), _ANNOTATION_CHUNK):
        part = raws[start : start + _ANNOTATION_CHUNK]
        text = b"[" + b",".join(part) + b"]"
        try:
            records = _ANNOTATIONS.decode(text)
            boxes = np.stack([_column(records, f"bbox.{axis}", np.float64) for axis in "xywh"], axis=1)
        except msgspec.ValidationError:
            try:
                records = _LOOSE_ANNOTATIONS.decode(text)
            except msgspec.ValidationError as error:
                raise _fatal(
                    path, _describe_annotation_error(str(error), part, start), _FIX_RECORD
                ) from error
            boxes = _loose_boxes(records)
        chunks.append(
            {
                "id": _column(records, "id", np.int64),
                "image_id": _column(records, "image_id", np.int64),
                "category_id": _column(records, "category_id", np.int64),
                "xywh": boxes,
                "area": _column(records, "area", np.float64),
                "iscrowd": _column(records, "iscrowd", np.int64) != 0,
            }
        )
    if not chunks:
        empty_int = np.empty(0, np.int64)
        return {"id": empty_int, "image_id": empty_int, "category_id": empty_int, "xywh": np.empty((0, 4)),
                "area": np.empty(0), "iscrowd": np.empty(0, bool)}  # fmt: skip
    return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[0]}


def _describe_annotation_error(message: str, part: list[msgspec.Raw], start: int) -> str:
    """Rewrites msgspec's chunk-relative path `$[k]` into `$.annotations[start + k]` and names the id."""
    match = re.search(r"`\$\[(\d+)\]", message)
    if not match:
        return f"wrong type in `annotations`: {message}"
    index = int(match.group(1))
    message = message.replace(f"`$[{index}]", f"`$.annotations[{start + index}]")
    try:
        record_id = msgspec.json.decode(part[index], type=_RecordId).id
    except msgspec.DecodeError:
        record_id = None
    return f"annotation id {record_id}: missing field or wrong type: {message}"


def _raise_duplicates(path: Path, kind: str, ids: np.ndarray, extra: list[str] | None = None) -> None:
    duplicated = pd.Series(ids).duplicated(keep=False).to_numpy()
    if not duplicated.any():
        return
    positions = np.flatnonzero(duplicated)
    shown = sorted({int(ids[i]) for i in positions})[:_MAX_LISTED]
    details = ""
    if extra is not None:
        details = " (" + "; ".join(f"{int(ids[i])}: {extra[i]}" for i in positions[: 2 * _MAX_LISTED]) + ")"
    raise _fatal(
        path,
        f"duplicate {kind} ids {shown}{details}; {len(positions)} records share an id",
        f"give every {kind} a unique id",
    )


def _build_categories(path: Path, records: list[_Category]) -> pd.DataFrame:
    ids = _column(records, "id", np.int64)
    if not len(ids):
        raise _fatal(path, "declares no categories", "add the `categories` list of the dataset")
    _raise_duplicates(path, "category", ids, [r.name for r in records])
    table = pd.DataFrame(
        {
            "category_id": ids,
            "name": pd.Series([r.name for r in records], dtype="str"),
            "supercategory": pd.Series([r.supercategory for r in records], dtype="str"),
        }
    ).sort_values("category_id", kind="stable", ignore_index=True)
    table.insert(0, "label", np.arange(len(table), dtype=np.int64))
    return table


def _check_categories_agree(path: Path, declared: pd.DataFrame, project: pd.DataFrame) -> None:
    ours = dict(zip(declared["category_id"].tolist(), declared["name"].tolist(), strict=True))
    theirs = dict(zip(project["category_id"].tolist(), project["name"].tolist(), strict=True))
    if ours == theirs:
        return
    missing = sorted(set(theirs) - set(ours))
    extra = sorted(set(ours) - set(theirs))
    renamed = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
    raise _fatal(
        path,
        "declares categories that differ from the project's (taken from the train split): "
        f"missing ids {missing}, extra ids {extra}, renamed ids {[(k, theirs[k], ours[k]) for k in renamed]}",
        "use the same `categories` list in every split (the model's classes come from train)",
    )


def _unsafe_file_names(file_names: pd.Series) -> np.ndarray:
    """Absolute paths, Windows drives and `..` components would read outside the image folder."""
    absolute = file_names.str.match(r"^([/\\]|[A-Za-z]:)")
    parent = file_names.str.contains(r"(?:^|[/\\])\.\.(?:[/\\]|$)", regex=True)
    return (absolute | parent).to_numpy(dtype=bool)


def _probe_image(path: str, width: int, height: int, decode: bool) -> tuple[str, str] | None:
    """None when the image is usable, else (check, reason)."""
    try:
        with Image.open(path) as image:
            size = image.size
            if decode:
                image.load()
    except FileNotFoundError:
        return "missing_image_file", f"file not found: {path}"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return "unreadable_image", f"cannot decode {path}: {error}"
    if size != (width, height):
        return "image_size_mismatch", f"{path} is {size[0]}x{size[1]} but the JSON says {width}x{height}"
    return None


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


def read_coco_split(
    source: SplitSource, policy: ValidationPolicy | None = None, categories: pd.DataFrame | None = None
) -> CocoSplit:
    """Reads and validates one COCO split.

    ``categories``: the project's table (from train). When given, the split must declare the same categories
    (else fatal); when None, the table is built from this split (ids sorted, labels 0..K-1).
    """
    policy = policy or ValidationPolicy()
    path = Path(source.annotation_file)
    doc, sha256 = _decode(path)
    findings = _Findings(source.name, policy)

    # --- categories
    declared = _build_categories(path, doc.categories)
    if categories is None:
        categories = declared
    else:
        _check_categories_agree(path, declared, categories)
    category_ids = categories["category_id"].to_numpy(np.int64)
    if not np.array_equal(category_ids, np.arange(1, len(category_ids) + 1)):
        findings.add(
            "noncontiguous_category_ids",
            [None],
            [None],
            [
                f"category ids {_preview(category_ids)} are not 1..{len(category_ids)}; mapped to labels "
                f"0..{len(category_ids) - 1} (see the categories table)"
            ],
        )

    # --- images
    image_ids = _column(doc.images, "id", np.int64)
    file_names = pd.Series([r.file_name for r in doc.images], dtype="str")
    widths = _column(doc.images, "width", np.int64)
    heights = _column(doc.images, "height", np.int64)
    _raise_duplicates(path, "image", image_ids, file_names.tolist())
    image_dir = str(Path(source.image_dir).resolve())
    image_paths = (image_dir + "/" + file_names).astype("str")
    image_alive = np.ones(len(image_ids), dtype=bool)
    image_drop_reason: dict[int, tuple[str, str]] = {}

    bad_size = (widths <= 0) | (heights <= 0)
    unsafe = _unsafe_file_names(file_names)
    for position in np.flatnonzero(unsafe):
        image_drop_reason[position] = (
            "unsafe_file_name",
            f"file_name {file_names[position]!r} escapes the image folder (absolute or '..'); "
            "use a path relative to the image folder",
        )
    for position in np.flatnonzero(bad_size & ~unsafe):
        image_drop_reason[position] = (
            "image_size_mismatch",
            f"width/height {widths[position]}x{heights[position]} must be positive",
        )
    if policy.image_checks != "none":
        to_probe = np.flatnonzero(~unsafe & ~bad_size)
        probes = _probe_images(
            image_paths.iloc[to_probe].tolist(),
            widths[to_probe],
            heights[to_probe],
            decode=policy.image_checks == "decode",
            workers=policy.workers,
            split=source.name,
        )
        for position, probe in zip(to_probe, probes, strict=True):
            if probe is not None:
                image_drop_reason[position] = probe
    if image_drop_reason:
        image_alive[list(image_drop_reason)] = False

    # --- annotations
    columns = _annotation_columns(path, doc.annotations)
    del doc  # the file's bytes go with it
    ann_ids, ann_image_ids, ann_category_ids = columns["id"], columns["image_id"], columns["category_id"]
    _raise_duplicates(path, "annotation", ann_ids)
    xywh, area, iscrowd = columns["xywh"], columns["area"], columns["iscrowd"]

    image_index = pd.Index(image_ids).get_indexer(ann_image_ids)
    label = pd.Index(category_ids).get_indexer(ann_category_ids)
    alive = np.ones(len(ann_ids), dtype=bool)

    def flag(check: str, mask: np.ndarray, describe) -> None:
        """Reports (and, unless the check only reports, removes) the alive annotations in ``mask``."""
        hits = np.flatnonzero(mask & alive)
        findings.add(check, ann_image_ids[hits], ann_ids[hits], [describe(i) for i in hits])
        if DEFAULT_SEVERITY[check] == "dropped":
            alive[hits] = False

    flag(
        "unknown_image",
        image_index < 0,
        lambda i: f"annotation {ann_ids[i]} refers to image id {ann_image_ids[i]}, which is not in `images`",
    )
    flag(
        "unknown_category",
        label < 0,
        lambda i: f"annotation {ann_ids[i]} has category id {ann_category_ids[i]}, which is not declared",
    )
    flag(
        "invalid_bbox",
        ~np.isfinite(xywh).all(axis=1),
        lambda i: f"bbox is not 4 finite numbers: {_box(xywh[i])}",
    )
    w, h = xywh[:, 2], xywh[:, 3]
    too_small = (w <= 0) | (h <= 0) | (w < policy.min_box_size) | (h < policy.min_box_size)
    flag(
        "degenerate_bbox",
        too_small,
        lambda i: (
            f"bbox {_box(xywh[i])} has width or height <= 0 or below min_box_size={policy.min_box_size}"
        ),
    )

    # Images dropped above take their annotations with them; the image's row says how many.
    on_dropped_image = alive & (image_index >= 0) & ~image_alive[np.maximum(image_index, 0)]
    dropped_per_image = np.bincount(image_index[on_dropped_image], minlength=len(image_ids))
    alive &= ~on_dropped_image
    for check in ("unsafe_file_name", "missing_image_file", "unreadable_image", "image_size_mismatch"):
        positions = [p for p, (c, _) in image_drop_reason.items() if c == check]
        findings.add(
            check,
            image_ids[positions],
            [None] * len(positions),
            [
                f"image {image_ids[p]} ({file_names[p]}): {image_drop_reason[p][1]}; dropped with its "
                f"{dropped_per_image[p]} annotation(s)"
                for p in positions
            ],
        )

    # Clip to the image (fixed), then drop boxes that end up empty (entirely outside the image).
    safe_index = np.maximum(image_index, 0)
    img_w, img_h = widths[safe_index].astype(np.float64), heights[safe_index].astype(np.float64)
    with np.errstate(invalid="ignore"):
        x1 = np.clip(xywh[:, 0], 0.0, img_w)
        y1 = np.clip(xywh[:, 1], 0.0, img_h)
        x2 = np.clip(xywh[:, 0] + xywh[:, 2], 0.0, img_w)
        y2 = np.clip(xywh[:, 1] + xywh[:, 3], 0.0, img_h)
        clipped = (x1 != xywh[:, 0]) | (y1 != xywh[:, 1]) | (x2 != xywh[:, 0] + w) | (y2 != xywh[:, 1] + h)
        outside = (
            (x2 - x1 <= 0)
            | (y2 - y1 <= 0)
            | (x2 - x1 < policy.min_box_size)
            | (y2 - y1 < policy.min_box_size)
        )
    flag(
        "bbox_outside_image",
        outside,
        lambda i: (
            f"bbox {_box(xywh[i])} lies outside the {img_w[i]:g}x{img_h[i]:g} image "
            f"(or is below min_box_size once clipped)"
        ),
    )
    flag(
        "clipped_bbox",
        clipped,
        lambda i: (
            f"bbox {_box(xywh[i])} runs past the {img_w[i]:g}x{img_h[i]:g} image border; clipped to xyxy "
            f"{_box([x1[i], y1[i], x2[i], y2[i]])}"
        ),
    )
    flag("crowd_annotation", iscrowd, lambda i: "crowd annotation: kept for evaluation, left out of training")
    flag(
        "annotation_id_zero",
        ann_ids < 1,
        lambda i: (
            f"annotation id {ann_ids[i]} < 1 is mis-scored by pycocotools; renumbered in the ground truth"
        ),
    )

    # Images without usable (non-crowd) annotations: kept or dropped per split.
    usable = np.bincount(image_index[alive & ~iscrowd], minlength=len(image_ids))
    empty = np.flatnonzero(image_alive & (usable == 0))
    crowd_only = np.bincount(image_index[alive & iscrowd], minlength=len(image_ids))
    drop_empty = policy.drop_images_without_annotations
    findings.add(
        "image_without_annotations",
        image_ids[empty],
        [None] * len(empty),
        [
            f"image {image_ids[p]} ({file_names[p]}) has no usable annotation"
            + (f" ({crowd_only[p]} crowd)" if crowd_only[p] else "")
            + ("; dropped (drop_images_without_annotations)" if drop_empty else "; kept")
            for p in empty
        ],
        severity="dropped" if drop_empty else "reported",
    )
    if drop_empty:
        image_alive[empty] = False
        alive &= image_alive[safe_index]

    used = np.zeros(len(category_ids), dtype=bool)
    used[label[alive]] = True
    unused = np.flatnonzero(~used)
    findings.add(
        "unused_category",
        [None] * len(unused),
        [None] * len(unused),
        [
            f"category {category_ids[c]} ({categories['name'].iloc[c]}) is declared but has no annotation"
            for c in unused
        ],
    )

    report = findings.frame()
    _raise_escalated(path, report)
    if not image_alive.any():
        counts = report.groupby("check").size().to_dict() if len(report) else {}
        raise _fatal(
            path,
            f"split {source.name!r} has no usable image after dropping ({len(image_ids)} declared; "
            f"findings per check: {counts})",
            "check the image folder (ingest.splits.<split>.image_dir) and the file names; "
            "set drop_images_without_annotations: false to keep images without annotations",
        )

    images = pd.DataFrame(
        {
            "image_id": image_ids[image_alive],
            "file_name": file_names[image_alive].reset_index(drop=True),
            "path": image_paths[image_alive].reset_index(drop=True),
            "width": widths[image_alive],
            "height": heights[image_alive],
        }
    )
    keep = np.flatnonzero(alive)
    box_area = (x2 - x1) * (y2 - y1)
    annotations = pd.DataFrame(
        {
            "annotation_id": ann_ids[keep],
            "image_id": ann_image_ids[keep],
            "category_id": ann_category_ids[keep],
            "label": label[keep].astype(np.int64),
            "x1": x1[keep],
            "y1": y1[keep],
            "x2": x2[keep],
            "y2": y2[keep],
            "area": np.where(np.isfinite(area[keep]), area[keep], box_area[keep]),
            "iscrowd": iscrowd[keep],
        }
    )
    used_xywh = np.where(clipped[keep, None], np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)[keep], xywh[keep])
    logger.info(
        "%s: kept %d/%d images and %d/%d annotations (%d findings)",
        source.name,
        len(images),
        len(image_ids),
        len(annotations),
        len(ann_ids),
        len(report),
    )
    fingerprint = {
        "annotation_file": str(path),
        "sha256": sha256,
        "images_declared": len(image_ids),
        "images_kept": len(images),
        "images_dropped": len(image_ids) - len(images),
        "annotations_declared": len(ann_ids),
        "annotations_kept": len(annotations),
        "annotations_dropped": len(ann_ids) - len(annotations),
    }
    return CocoSplit(
        source.name, path, images, annotations, categories.copy(), report, used_xywh, fingerprint
    )


def _raise_escalated(path: Path, report: pd.DataFrame) -> None:
    fatal = report[report["severity"] == "fatal"]
    if fatal.empty:
        return
    listed = "; ".join(
        f"[{row.check}] image {row.image_id}, annotation {row.annotation_id}: {row.message}"
        for row in fatal.head(_MAX_LISTED).itertuples()
    )
    raise _fatal(
        path,
        f"{len(fatal)} finding(s) made fatal by the severity policy: {listed}",
        "correct those records, or set their checks back to the default in ingest.severity",
    )


def _box(values) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def _preview(values: np.ndarray, limit: int = 12) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


def build_ground_truth(split: CocoSplit) -> dict[str, Any]:
    """A clean COCO dict of the split as used, for pycocotools/faster-coco-eval.

    Boxes are xywh as used (clipped where they ran past the border), category ids are the original ones, and
    annotation ids are renumbered 1..N when any is < 1 (pycocotools treats a matched gt id 0 as unmatched).
    Image ids are kept: detections refer to them.
    """
    annotations = split.annotations
    ann_ids = annotations["annotation_id"].to_numpy()
    if len(ann_ids) and ann_ids.min() < 1:
        ann_ids = np.arange(1, len(ann_ids) + 1)
    images = split.images
    return {
        "info": {"description": f"{split.name} ground truth as used", "source": str(split.annotation_file)},
        "images": [
            {"id": i, "file_name": f, "width": w, "height": h}
            for i, f, w, h in zip(
                images["image_id"].tolist(),
                images["file_name"].tolist(),
                images["width"].tolist(),
                images["height"].tolist(),
                strict=True,
            )
        ],
        "annotations": [
            {"id": a, "image_id": i, "category_id": c, "bbox": b, "area": ar, "iscrowd": int(cr)}
            for a, i, c, b, ar, cr in zip(
                ann_ids.tolist(),
                annotations["image_id"].tolist(),
                annotations["category_id"].tolist(),
                split.bbox_xywh.tolist(),
                annotations["area"].tolist(),
                annotations["iscrowd"].tolist(),
                strict=True,
            )
        ],
        "categories": [
            {"id": c, "name": n, "supercategory": s}
            for c, n, s in zip(
                split.categories["category_id"].tolist(),
                split.categories["name"].tolist(),
                split.categories["supercategory"].tolist(),
                strict=True,
            )
        ],
    }


def summarise_findings(report: pd.DataFrame) -> dict[str, Any]:
    """Counts per split and check (with the check's severity), and per severity."""
    summary: dict[str, Any] = {"total_findings": len(report), "splits": {}}
    for split, rows in report.groupby("split", sort=False):
        by_check = rows.groupby(["check", "severity"], sort=True).size()
        summary["splits"][split] = {
            "by_check": {
                check: {"severity": level, "count": int(n)} for (check, level), n in by_check.items()
            },
            "by_severity": {level: int(n) for level, n in rows.groupby("severity").size().items()},
        }
    return summary
