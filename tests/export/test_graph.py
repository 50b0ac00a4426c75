"""The exported graphs' size arithmetic as tensor ops equals the model's own (`resized_shape`)."""

import pytest
import torch

from frcnn_pipeline.export.graph import boxes_to_original, resized_size
from frcnn_pipeline.modeling.transform import resized_shape


@pytest.mark.parametrize("rounding", ["detectron2", "torchvision"])
def test_the_resized_size_equals_the_models_for_every_shape(rounding):
    sizes = [(h, w) for h in range(1, 700, 17) for w in range(1, 1400, 29)] + [
        (36, 768),
        (449, 898),
        (640, 586),
    ]
    for short_side, max_size in ((800, 1333), (128, 224), (64, 96)):
        expected = [resized_shape(h, w, short_side, max_size, rounding) for h, w in sizes]
        got = [
            tuple(resized_size(torch.tensor(size), short_side, max_size, rounding).tolist()) for size in sizes
        ]
        assert got == expected


def test_boxes_scale_by_each_axis_ratio():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    scaled = boxes_to_original(boxes, resized=torch.tensor([100, 200]), original=torch.tensor([50, 400]))
    assert scaled.tolist() == [[20.0, 10.0, 60.0, 20.0]]
