"""The checks' policy and report: default severities, the validation policy, report rows, summaries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from frcnn_pipeline.config.ingest import SeverityParams
from frcnn_pipeline.data.coco.json_file import MAX_LISTED, fatal

# Default severity of every check. Structural problems are always fatal; the others may be escalated to fatal
# (their defaults: ingest.validation.severity in the parameter schema).
STRUCTURAL_CHECKS = ("unreadable_json", "schema", "duplicate_image_id", "duplicate_annotation_id",
                     "duplicate_category_id", "category_mismatch", "empty_split")  # fmt: skip
DEFAULT_SEVERITY: dict[str, str] = {
    **dict.fromkeys(STRUCTURAL_CHECKS, "fatal"),
    **dict(SeverityParams()),
}

IMAGE_CHECK_MODES = ("none", "header", "decode")
# The image checks that drop a declared image: it cannot be run through the model.
UNUSABLE_IMAGE_CHECKS = (
    "unsafe_file_name", "missing_image_file", "unreadable_image", "unconvertible_image", "image_size_mismatch"
)  # fmt: skip
REPORT_COLUMNS = ["split", "severity", "check", "image_id", "annotation_id", "message"]


@dataclass(frozen=True)
class ValidationPolicy:
    """How a split is checked. ``severity`` overrides ``DEFAULT_SEVERITY`` (only escalation to fatal)."""

    min_box_size: float = 0.0
    image_checks: str = "header"
    drop_images_without_annotations: bool = False
    # A declared category without a single annotation (Roboflow declares the dataset's name as category 0)
    # is not a class: the model would have to learn it, and the AP table list it.
    drop_unused_categories: bool = True
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


class Findings:
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


def raise_escalated(path: Path, report: pd.DataFrame) -> None:
    """Stops with the findings of ``report`` that the severity policy made fatal, if any."""
    escalated = report[report["severity"] == "fatal"]
    if escalated.empty:
        return
    listed = "; ".join(
        f"[{row.check}] image {row.image_id}, annotation {row.annotation_id}: {row.message}"
        for row in escalated.head(MAX_LISTED).itertuples()
    )
    raise fatal(
        path,
        f"{len(escalated)} finding(s) made fatal by the severity policy: {listed}",
        "correct those records, or set their checks back to the default in ingest.severity",
    )


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
