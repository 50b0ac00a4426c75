"""torchvision's COCO box predictor rows for the ingested categories.

torchvision's COCO detectors have 91 classes indexed by COCO category id (0 the background, ten ids "N/A":
COCO 2017 never used them). This model has K + 1 rows, background first, then the categories table by label
(`select_coco_rows` cuts a COCO predictor to them), or with `predictor_rows: coco_category_ids` all 91 and the
row of each label in its `roi_heads.label_rows` buffer (`coco_label_rows`).
"""

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

from frcnn_pipeline.errors import UserFacingError

logger = logging.getLogger(__name__)

COCO_NAMES = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # by category id, 0: background
PREDICTOR_KEYS = {
    "roi_heads.box_predictor.cls_score.weight": 1,  # rows per class
    "roi_heads.box_predictor.cls_score.bias": 1,
    "roi_heads.box_predictor.bbox_pred.weight": 4,
    "roi_heads.box_predictor.bbox_pred.bias": 4,
}
LABEL_ROWS_KEY = "roi_heads.label_rows"


class CocoCategoryError(UserFacingError, ValueError):
    """An ingested category whose id has no row in a torchvision COCO box predictor."""


def is_coco_predictor(state: Mapping[str, Any]) -> bool:
    """A torchvision detector state dict whose box predictor has COCO's 91 rows."""
    scores = state.get("roi_heads.box_predictor.cls_score.weight")
    return scores is not None and scores.shape[0] == len(COCO_NAMES)


def coco_label_rows(category_ids: Sequence[int], names: Sequence[str], source_name: str) -> torch.Tensor:
    """The COCO predictor row of each label: 0 for the background, then each category's id, in label order.

    Raises:
        CocoCategoryError: a category id outside COCO's 1..90.
    """
    outside = [int(i) for i in category_ids if not 1 <= int(i) < len(COCO_NAMES)]
    if outside:
        raise CocoCategoryError(
            f"{source_name}: torchvision's COCO box predictor has rows for category ids 1-90 only; the "
            f"ingested categories also have id(s) {outside[:10]}. Its detections need COCO's category ids: "
            "ingest COCO's categories (or a subset with their ids), or start from backbone weights only "
            "(weights.source: torchvision's resnet50, as the `torchvision` recipe does) and train them."
        )
    for category_id, name in zip(category_ids, names, strict=True):
        coco_name = COCO_NAMES[int(category_id)]
        if coco_name != name:
            logger.warning(
                "%s: category %r has id %d, COCO's %r: its row predicts %r",
                source_name,
                name,
                category_id,
                coco_name,
                coco_name,
            )
    return torch.tensor([0, *(int(i) for i in category_ids)])


def select_coco_rows(
    state: Mapping[str, torch.Tensor], category_ids: Sequence[int], names: Sequence[str], source_name: str
) -> tuple[dict[str, torch.Tensor], str]:
    """`state` with its box predictor cut to this model's rows (`coco_label_rows`), and the note the report
    gives those keys."""
    rows = coco_label_rows(category_ids, names, source_name).tolist()
    selected = dict(state)
    for key, width in PREDICTOR_KEYS.items():
        index = torch.tensor([row * width + offset for row in rows for offset in range(width)])
        selected[key] = torch.as_tensor(state[key]).index_select(0, index)
    note = (
        f"COCO rows by category id: {len(COCO_NAMES)} -> {len(rows)} (background row 0, then ids "
        f"{rows[1:]} by label)"
    )
    return selected, note


def label_rows_report_row(label_rows: torch.Tensor) -> dict[str, str]:
    """The conversion report's row for `roi_heads.label_rows`, which the categories table gives."""
    return {
        "status": "mapped",
        "source_key": "categories",
        "target_key": LABEL_ROWS_KEY,
        "source_shape": "",
        "target_shape": str(tuple(label_rows.shape)),
        "note": f"rows by COCO category id: background 0, then ids {label_rows.tolist()[1:]} by label",
    }
