"""Reading and typing a COCO annotation file: msgspec structs, chunked annotation columns, JSON errors.

The JSON is decoded with msgspec into structs that declare only the fields we use: segmentations are skipped
without being materialised, which keeps a COCO-train-sized file faster to validate than pycocotools' bare
load, and type errors come with a JSON path that the errors turn into the record's id."""

from __future__ import annotations

import hashlib
import logging
import math
import re
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import pandas as pd

from frcnn_pipeline.errors import UserFacingError

logger = logging.getLogger(__name__)


MAX_LISTED = 5  # findings quoted in an error message


class CocoFormatError(UserFacingError, ValueError):
    """A fatal problem in a COCO split: the message names the file, the record and the fix."""


# Python's json.dump writes these non-standard literals and pycocotools (json.load) reads them. msgspec does
# not: `decode_coco_json` quotes them, and the fields that may hold one accept the quoted form.
NonFinite = Literal["NaN", "Infinity", "-Infinity"]
_NON_FINITE_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|(-?Infinity|NaN)')


# Only the fields we use are declared: msgspec skips the rest (segmentation, licenses...) without building it.
# gc=False: these records hold no reference cycles, and ~1M GC-tracked objects would slow decoding twofold.
class ImageRecord(msgspec.Struct, gc=False):
    """An entry of the file's `images`."""

    id: int
    file_name: str
    width: int | NonFinite
    height: int | NonFinite


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
    area: float | NonFinite = math.nan  # NaN when absent: the box's w*h is used
    iscrowd: int | bool = 0


class _LooseAnnotation(_Annotation, gc=False):
    """Accepts any bbox list, so that a box that is not 4 numbers is dropped and reported, not fatal."""

    bbox: list[float | NonFinite | None]


class CategoryRecord(msgspec.Struct, gc=False):
    """An entry of the file's `categories`."""

    id: int
    name: str
    supercategory: str = ""


class _CocoFile(msgspec.Struct):
    images: list[ImageRecord]
    # Raw JSON slices, decoded in chunks: the file's bytes and ~1M annotation objects never coexist.
    annotations: list[msgspec.Raw]
    categories: list[CategoryRecord]


_ANNOTATION_CHUNK = 16384
_ANNOTATIONS = msgspec.json.Decoder(list[_Annotation])
_LOOSE_ANNOTATIONS = msgspec.json.Decoder(list[_LooseAnnotation])


class _RecordId(msgspec.Struct):
    id: Any = None


class _RecordIds(msgspec.Struct):
    images: list[_RecordId] = []
    categories: list[_RecordId] = []


def fatal(path: Path, what: str, fix: str) -> CocoFormatError:
    """The error that stops reading ``path``: what is wrong, and the fix."""
    return CocoFormatError(f"{path}: {what}. Fix: {fix}")


_FIX_RECORD = "correct or remove that record"


def raise_duplicates(path: Path, kind: str, ids: np.ndarray, extra: list[str] | None = None) -> None:
    """Stops naming the ``kind`` (image, annotation, category) ids that several records share, each with its
    ``extra`` detail when given."""
    duplicated = pd.Series(ids).duplicated(keep=False).to_numpy()
    if not duplicated.any():
        return
    positions = np.flatnonzero(duplicated)
    shown = sorted({int(ids[i]) for i in positions})[:MAX_LISTED]
    details = ""
    if extra is not None:
        details = " (" + "; ".join(f"{int(ids[i])}: {extra[i]}" for i in positions[: 2 * MAX_LISTED]) + ")"
    raise fatal(
        path,
        f"duplicate {kind} ids {shown}{details}; {len(positions)} records share an id",
        f"give every {kind} a unique id",
    )


def decode_coco_json(path: Path) -> tuple[_CocoFile, str]:
    """The parsed file and the sha256 of its bytes as read (the split's fingerprint)."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise fatal(
            path,
            f"cannot read the annotation file ({error.strerror or error})",
            "check ingest.data_root and the split's annotation_file parameter",
        ) from error
    sha256 = hashlib.sha256(raw).hexdigest()
    try:
        return msgspec.json.decode(raw, type=_CocoFile), sha256
    except msgspec.DecodeError as error:
        if isinstance(error, msgspec.ValidationError) or not _NON_FINITE_TOKEN.search(raw):
            raise _decode_error(path, raw, error) from error
    raw, count = _quote_non_finite(raw)
    logger.warning("%s: %d NaN/Infinity literal(s); their boxes and images are checked as such", path, count)
    try:
        return msgspec.json.decode(raw, type=_CocoFile), sha256
    except msgspec.DecodeError as error:
        raise _decode_error(path, raw, error) from error


def _quote_non_finite(raw: bytes) -> tuple[bytes, int]:
    """NaN/Infinity/-Infinity outside strings become the strings "NaN"/"Infinity"/"-Infinity"."""
    count = 0

    def quote(match: re.Match) -> bytes:
        nonlocal count
        if match.group(1) is None:
            return match.group(0)
        count += 1
        return b'"' + match.group(1) + b'"'

    return _NON_FINITE_TOKEN.sub(quote, raw), count


def _decode_error(path: Path, raw: bytes, error: msgspec.DecodeError) -> CocoFormatError:
    if isinstance(error, msgspec.ValidationError):
        return fatal(path, _describe_type_error(raw, str(error)), _FIX_RECORD)
    return fatal(
        path,
        f"unreadable or truncated JSON ({error})",
        "re-download or re-export the file; `python -m json.tool FILE` shows where it breaks",
    )


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


def column(records: list, name: str, dtype) -> np.ndarray:
    """The field ``name`` of every record, as one array of ``dtype``."""
    return np.fromiter(map(attrgetter(name), records), dtype=dtype, count=len(records))


def float_column(records: list, name: str) -> np.ndarray:
    """float64; the quoted NaN/Infinity literals become the non-finite numbers they spell."""
    return np.fromiter(map(float, map(attrgetter(name), records)), dtype=np.float64, count=len(records))


def _number(value: float | str | None) -> float:
    return math.nan if value is None else float(value)


def _loose_boxes(annotations: list[_LooseAnnotation]) -> np.ndarray:
    """(N, 4) float64 xywh; rows that are not 4 numbers (or hold nulls) become NaN."""
    bboxes = list(map(attrgetter("bbox"), annotations))
    lengths = np.fromiter(map(len, bboxes), dtype=np.int64, count=len(bboxes))
    boxes = np.full((len(bboxes), 4), np.nan)
    good = np.flatnonzero(lengths == 4)
    if len(good):
        boxes[good] = np.array([[_number(v) for v in bboxes[i]] for i in good], dtype=np.float64)
    return boxes


def _bbox_as_written(record: _LooseAnnotation) -> str:
    """The bbox as the file writes it (a wrong length, nulls and NaN included), for the report."""
    shown = ["null" if v is None else v if isinstance(v, str) else f"{v:g}" for v in record.bbox]
    return "[" + ", ".join(shown) + "]"


def annotation_columns(path: Path, raws: list[msgspec.Raw]) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """Decodes the annotations chunk by chunk into numpy columns (ids, xywh boxes, area, crowd flag), and
    the bbox as written of each row whose bbox is not 4 finite numbers."""
    chunks = []
    bbox_written: dict[int, str] = {}
    for start in range(0, len(raws), _ANNOTATION_CHUNK):
        part = raws[start : start + _ANNOTATION_CHUNK]
        text = b"[" + b",".join(part) + b"]"
        written: dict[int, str] = {}  # row -> its bbox as written, for rows that are not 4 finite numbers
        try:
            records = _ANNOTATIONS.decode(text)
            boxes = np.stack([column(records, f"bbox.{axis}", np.float64) for axis in "xywh"], axis=1)
        except msgspec.ValidationError:
            try:
                records = _LOOSE_ANNOTATIONS.decode(text)
            except msgspec.ValidationError as error:
                raise fatal(path, _describe_annotation_error(str(error), part, start), _FIX_RECORD) from error
            boxes = _loose_boxes(records)
            bad = np.flatnonzero(~np.isfinite(boxes).all(axis=1))
            written = {start + int(i): _bbox_as_written(records[i]) for i in bad}
        areas = list(map(attrgetter("area"), records))
        chunks.append(
            {
                "id": column(records, "id", np.int64),
                "image_id": column(records, "image_id", np.int64),
                "category_id": column(records, "category_id", np.int64),
                "xywh": boxes,
                "area": np.fromiter(map(float, areas), dtype=np.float64, count=len(areas)),
                # An area the file writes as NaN/Infinity, as opposed to one it leaves out.
                "bad_area": np.fromiter((isinstance(a, str) for a in areas), dtype=bool, count=len(areas)),
                "iscrowd": column(records, "iscrowd", np.int64) != 0,
            }
        )
        bbox_written.update(written)
    if not chunks:
        empty_int = np.empty(0, np.int64)
        empty = {"id": empty_int, "image_id": empty_int, "category_id": empty_int, "xywh": np.empty((0, 4)),
                 "area": np.empty(0), "bad_area": np.empty(0, bool),
                 "iscrowd": np.empty(0, bool)}  # fmt: skip
        return empty, {}
    return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[0]}, bbox_written


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
