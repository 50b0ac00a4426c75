"""The fixed-shape graph's canvas: the one its images fill, unless export.fixed_size says otherwise."""

import pytest
from model_configs import model_params

from frcnn_pipeline.export.deployment import default_canvas, fitting_canvas
from frcnn_pipeline.export.onnx_export import choose_canvas

DEMO = {"min_size_test": 96, "max_size": 224, "resize_rounding": "detectron2", "size_divisibility": 32}
DEMO_INPUT = model_params({"input": DEMO}).input
CARD_INPUT = model_params({"input": {**DEMO, "min_size_test": 800, "max_size": 1333}}).input


def test_the_demos_images_fill_a_96_px_canvas_where_any_image_would_need_224():
    assert fitting_canvas(DEMO_INPUT, [(128, 128)] * 3) == [96, 96]
    assert default_canvas(DEMO_INPUT) == [224, 224]


def test_the_canvas_holds_portrait_and_landscape_images_rounded_up_to_size_divisibility():
    # 480 x 640 -> 800 x 1067 and 640 x 480 -> 1067 x 800; 1067 rounds up to 1088
    assert fitting_canvas(CARD_INPUT, [(480, 640), (640, 480)]) == [1088, 1088]
    # an extreme aspect ratio meets max_size: 300 x 1000 -> 400 x 1333
    assert fitting_canvas(CARD_INPUT, [(300, 1000)]) == [416, 1344]


def test_no_images_no_canvas():
    with pytest.raises(ValueError, match="no image sizes"):
        fitting_canvas(DEMO_INPUT, [])


def test_fixed_size_wins_then_the_images_then_any_image():
    assert choose_canvas(DEMO_INPUT, [128, 160], [(128, 128)]) == ([128, 160], "export.fixed_size")
    canvas, chosen = choose_canvas(DEMO_INPUT, None, [(128, 128)])
    assert canvas == [96, 96] and "smallest that holds the 1 images" in chosen
    canvas, chosen = choose_canvas(DEMO_INPUT, None, None)
    assert canvas == [224, 224] and "holds any image" in chosen
