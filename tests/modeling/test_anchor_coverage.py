"""Best anchor IoU, computed by hand for boxes placed on and off the anchor grid."""

import pandas as pd
import pytest
from model_configs import model_params

from frcnn_pipeline.modeling.anchor_coverage import (
    anchor_shapes,
    box_geometry,
    coverage_summary,
    coverage_warning,
    resized_image_sizes,
)

# No resize for a 128 px square image: min_size_test 128.
MODEL = model_params(
    {
        "input": {"min_size_test": 128, "max_size": 224, "size_divisibility": 32},
        "anchors": {"sizes": [16, 32, 64, 128, 256], "aspect_ratios": [0.5, 1.0, 2.0], "round": False},
        "rpn": {"iou_thresholds": [0.3, 0.7]},
    }
)


def geometry_of(boxes: list[list[float]], width: int = 128, height: int = 128) -> pd.DataFrame:
    images = pd.DataFrame({"image_id": [1], "width": [width], "height": [height]})
    corners = pd.DataFrame(boxes, columns=["x1", "y1", "x2", "y2"])
    annotations = corners.assign(image_id=1, label=0, iscrowd=False)
    return box_geometry(images, annotations, MODEL)


def test_anchor_shapes_are_the_generators():
    shapes = anchor_shapes(MODEL)
    assert len(shapes) == 15 and shapes["stride"].unique().tolist() == [4, 8, 16, 32, 64]
    square_32 = shapes[(shapes["size"] == 32) & (shapes["aspect_ratio"] == 1.0)].iloc[0]
    assert (square_32.x1, square_32.y1, square_32.x2, square_32.y2) == pytest.approx((-16, -16, 16, 16))
    tall = shapes[(shapes["size"] == 32) & (shapes["aspect_ratio"] == 2.0)].iloc[0]
    assert (tall.y2 - tall.y1) / (tall.x2 - tall.x1) == pytest.approx(2.0)  # ratio is height / width


def test_best_anchor_iou_by_hand():
    geometry = geometry_of([
        [16, 16, 48, 48],  # 32x32 centred on (32, 32), a grid point of stride 8: the 32 anchor fits exactly
        [41.5, 41.5, 86.5, 86.5],  # 45x45 on (64, 64): 32²/45² against 32, 45²/64² against 64
        [2, 2, 18, 18],  # 16x16 on (10, 10): the stride-4 grid's nearest centres are 2 px off on each axis
        [59, 59, 69, 69],  # 10x10: only the 16 anchor comes close, 10²/16²
    ])  # fmt: skip
    expected = [1.0, 32**2 / 45**2, 14 * 14 / (2 * 256 - 14 * 14), 100 / 256]
    assert geometry["best_anchor_iou"].tolist() == pytest.approx(expected)
    assert geometry["best_anchor_size"].tolist() == [32, 32, 16, 16]
    assert geometry["aspect_ratio"].tolist() == pytest.approx([1, 1, 1, 1])


def test_boxes_are_measured_after_the_test_resize():
    # 64x128 (h x w): shorter side to 128 would make the long side 256 > 224, so the scale is 224/128.
    sizes = resized_image_sizes(pd.DataFrame({"image_id": [1], "width": [128], "height": [64]}), MODEL)
    assert (sizes["resized_height"].item(), sizes["resized_width"].item()) == (112, 224)
    geometry = geometry_of([[0, 0, 10, 20]], width=128, height=64)
    assert (geometry["width"].item(), geometry["height"].item()) == pytest.approx((17.5, 35.0))
    assert geometry["aspect_ratio"].item() == pytest.approx(2.0)


def test_summary_and_warning_for_boxes_too_small_for_any_anchor():
    geometry = geometry_of([[16, 16, 48, 48], [59, 59, 69, 69], [60, 60, 68, 68]])
    summary = coverage_summary(geometry, MODEL)
    assert (summary["boxes"], summary["unmatchable_boxes"], summary["unmatchable_small_boxes"]) == (3, 2, 2)
    assert summary["unmatchable_small_share"] == pytest.approx(2 / 3)
    message = coverage_warning("val", summary, max_share=0.5)
    assert message.startswith("val: 67% of the boxes (2 of 3) are smaller than the smallest anchor (16 px)")
    assert "ingest.statistics.unmatchable_warning_share" in message
    assert coverage_warning("val", summary, max_share=0.7) is None
