"""torchvision's 91-class COCO box predictor, cut to the ingested categories by COCO category id."""

import logging

import pytest
import torch
import torchvision
from model_configs import model_params

from frcnn_pipeline.errors import UserFacingError
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.weights import convert_state_dict
from frcnn_pipeline.weights.coco_rows import CocoCategoryError

TORCHVISION = {"backbone": {"stride_in_1x1": False}, "input": {"format": "RGB"}}


@pytest.fixture(scope="module")
def coco_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91
    ).state_dict()


def _model_state(num_classes: int) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return build_model(model_params(TORCHVISION), num_classes=num_classes).state_dict()


def test_rows_follow_the_category_ids_in_label_order(coco_state):
    categories = [(18, "dog"), (1, "person"), (3, "car")]
    state, report = convert_state_dict(coco_state, _model_state(3), categories=categories)
    rows = torch.tensor([0, 18, 1, 3])
    prefix = "roi_heads.box_predictor."
    assert torch.equal(state[prefix + "cls_score.weight"], coco_state[prefix + "cls_score.weight"][rows])
    assert torch.equal(state[prefix + "cls_score.bias"], coco_state[prefix + "cls_score.bias"][rows])
    blocks = (rows[:, None] * 4 + torch.arange(4)).flatten()
    assert torch.equal(state[prefix + "bbox_pred.weight"], coco_state[prefix + "bbox_pred.weight"][blocks])
    assert torch.equal(state[prefix + "bbox_pred.bias"], coco_state[prefix + "bbox_pred.bias"][blocks])
    predictor = report[report.target_key.str.startswith(prefix)]
    assert set(predictor.status) == {"mapped"}
    assert set(predictor.note) == {
        "COCO rows by category id: 91 -> 4 (background row 0, then ids [18, 1, 3] by label)"
    }


def test_without_categories_the_91_rows_do_not_load_into_fewer(coco_state):
    """The converter alone (no categories) cannot know which rows are which: the predictor keeps its
    initialisation and the report says so."""
    _, report = convert_state_dict(coco_state, _model_state(3))
    predictor = report[report.source_key.str.startswith("roi_heads.box_predictor.")]
    assert len(predictor) == 4 and set(predictor.status) == {"shape_mismatch"}


def test_a_category_id_without_a_row_is_refused_with_the_fix(coco_state):
    with pytest.raises(
        CocoCategoryError, match=r"ids 1-90 only.*id\(s\) \[91, 0\].*backbone weights"
    ) as error:
        convert_state_dict(coco_state, _model_state(3), categories=[(1, "person"), (91, "mine"), (0, "zero")])
    assert isinstance(error.value, UserFacingError)


def test_a_name_other_than_cocos_is_warned_about(coco_state, caplog):
    with caplog.at_level(logging.WARNING):
        convert_state_dict(coco_state, _model_state(2), categories=[(1, "person"), (2, "circle")])
    assert "category 'circle' has id 2, COCO's 'bicycle'" in caplog.text
    assert "'person'" not in caplog.text
