"""A split's categories: the declared table, its agreement with the project's classes (from train), the
categories nothing annotates, and how category ids become labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from frcnn_pipeline.data.coco.findings import Findings
from frcnn_pipeline.data.coco.json_file import CategoryRecord, column, fatal, raise_duplicates


def _build_categories(path: Path, records: list[CategoryRecord]) -> pd.DataFrame:
    ids = column(records, "id", np.int64)
    if not len(ids):
        raise fatal(path, "declares no categories", "add the `categories` list of the dataset")
    raise_duplicates(path, "category", ids, [r.name for r in records])
    table = pd.DataFrame(
        {
            "category_id": ids,
            "name": pd.Series([r.name for r in records], dtype="str"),
            "supercategory": pd.Series([r.supercategory for r in records], dtype="str"),
        }
    ).sort_values("category_id", kind="stable", ignore_index=True)
    table.insert(0, "label", np.arange(len(table), dtype=np.int64))
    return table


def _check_categories_agree(
    path: Path, declared: pd.DataFrame, project: pd.DataFrame, allow_extra: bool
) -> pd.DataFrame:
    """Fatal unless the split declares the project's categories; returns the declared ones that are not
    classes (allowed when the train split dropped them as unused; they must stay unused here too)."""
    ours = dict(zip(declared["category_id"].tolist(), declared["name"].tolist(), strict=True))
    theirs = dict(zip(project["category_id"].tolist(), project["name"].tolist(), strict=True))
    missing = sorted(set(theirs) - set(ours))
    extra = sorted(set(ours) - set(theirs))
    renamed = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
    if not missing and not renamed and (allow_extra or not extra):
        return declared[declared["category_id"].isin(extra)]
    raise fatal(
        path,
        "declares categories that differ from the project's (taken from the train split): "
        f"missing ids {missing}, extra ids {extra}, renamed ids {[(k, theirs[k], ours[k]) for k in renamed]}",
        "use the same `categories` list in every split (the model's classes come from train)",
    )


def resolve_categories(
    path: Path, records: list[CategoryRecord], project: pd.DataFrame | None, allow_extra: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The classes (this split's table when ``project`` is None, else the project's) and the declared
    categories that are not classes."""
    declared = _build_categories(path, records)
    if project is None:
        return declared, declared.iloc[:0]
    return project, _check_categories_agree(path, declared, project, allow_extra)


def drop_unused_categories(
    findings: Findings,
    categories: pd.DataFrame,
    not_classes: pd.DataFrame,
    *,
    used_labels: np.ndarray,
    label: np.ndarray,
    dropping: bool,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Reports the categories no kept annotation uses and, when ``dropping``, removes them from the classes;
    returns the classes and the annotations' labels renumbered to match."""
    used = np.zeros(len(categories), dtype=bool)
    used[used_labels] = True
    for table, dropped in ((categories[~used], dropping), (not_classes, True)):
        findings.add(
            "unused_category",
            [None] * len(table),
            [None] * len(table),
            [
                f"category {row.category_id} ({row.name}) is declared but has no annotation; "
                + ("not a class (ingest.validation.drop_unused_categories)" if dropped else "kept as a class")
                for row in table.itertuples()
            ],
            severity="dropped" if dropped else "reported",
        )
    if dropping and not used.all():
        categories = categories[used].reset_index(drop=True)
        categories["label"] = np.arange(len(categories), dtype=np.int64)
        label = np.cumsum(used)[np.maximum(label, 0)] - 1  # old label -> its rank among the kept
    _report_category_ids(findings, categories["category_id"].to_numpy(np.int64))
    return categories, label


def _report_category_ids(findings: Findings, category_ids: np.ndarray) -> None:
    """Says how category ids become labels 0..K-1 when that is not simply `id - 1`."""
    count = len(category_ids)
    if np.array_equal(category_ids, np.arange(1, count + 1)):
        return
    if np.array_equal(category_ids, np.arange(category_ids[0], category_ids[0] + count)):
        how = (
            f"are {category_ids[0]}..{category_ids[-1]} (contiguous): label = category_id - {category_ids[0]}"
        )
    else:
        how = f"{_preview(category_ids)} have gaps: labels 0..{count - 1} in id order"
    findings.add(
        "noncontiguous_category_ids", [None], [None], [f"category ids {how} (see the categories table)"]
    )


def _preview(values: np.ndarray, limit: int = 12) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"
