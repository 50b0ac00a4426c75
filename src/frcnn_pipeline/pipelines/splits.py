"""The data splits the pipelines are built for: `train`, and every evaluation split of `ingest.splits`.

Kedro builds pipelines from code, before any node sees a parameter, yet the evaluation splits (val, test, ...)
are declared in `ingest.splits`: they are part of the run's `PipelineShape` (shape.py), which the pipelines
are built from. Where no run decides it (`kedro viz`, a test building a pipeline) the default evaluation split
is `val`, as in conf/base.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

TRAIN_SPLIT = "train"
DEFAULT_EVALUATION_SPLITS = ("val",)
_SPLIT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def evaluation_splits_of(splits: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The evaluation split names of an `ingest.splits` section: every split but `train`, in order.

    A split set to null is switched off (parameters merge softly, so an env cannot delete a key).

    Raises:
        ValueError: a name that is not a plain identifier (it becomes part of dataset names and
            namespaces), no `train` split, or no evaluation split.
    """
    splits = dict(splits or {})
    bad = [name for name in splits if not _SPLIT_NAME.match(str(name))]
    if bad:
        raise ValueError(
            f"ingest.splits: split name(s) {bad} must start with a letter and hold only letters, digits and "
            "underscores (they name datasets and namespaces, e.g. test_images, evaluate.test)"
        )
    if splits.get(TRAIN_SPLIT) is None:
        raise ValueError("ingest.splits has no `train` split: the train pipeline and the categories need it")
    names = tuple(name for name, split in splits.items() if name != TRAIN_SPLIT and split is not None)
    if not names:
        raise ValueError(
            "ingest.splits declares no evaluation split (e.g. `val`): evaluate would have no data"
        )
    return names


def for_split(func: Callable[..., Any], split: str) -> Callable[..., Any]:
    """``func`` with its ``split`` keyword bound, keeping its name (Kedro's logs and kedro-viz show it)."""
    return functools.update_wrapper(functools.partial(func, split=split), func)
