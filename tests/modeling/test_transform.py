import pytest
import torch

from frcnn_pipeline.modeling.transform import DetectronTransform, resized_shape

# component_expectations §8: input HxW -> torchvision, padded to 32, detectron2 (min 800, max 1333)
RESIZE_TABLE = [
    ((480, 640), (800, 1066), (800, 1088), (800, 1067)),
    ((600, 800), (800, 1066), (800, 1088), (800, 1067)),
    ((1371, 2048), (800, 1195), (800, 1216), (800, 1195)),
    ((427, 640), (800, 1199), (800, 1216), (800, 1199)),
    ((294, 640), (612, 1333), (640, 1344), (612, 1333)),
    ((640, 586), (873, 800), (896, 800), (874, 800)),
]


def _transform(**overrides):
    kwargs = {
        "min_size_train": [800],
        "min_size_test": 800,
        "max_size": 1333,
        "pixel_mean": [103.53, 116.28, 123.675],
        "pixel_std": [1.0, 1.0, 1.0],
        "input_format": "BGR",
        "size_divisibility": 32,
        "resize_rounding": "detectron2",
        "resize_interpolation": "detectron2",
        "clip_detections": True,
        "drop_empty_detections": True,
        "fixed_size": None,
    }
    return DetectronTransform(**{**kwargs, **overrides}).eval()


@pytest.mark.parametrize(("shape", "torchvision", "padded", "detectron2"), RESIZE_TABLE)
def test_resize_sizes(shape, torchvision, padded, detectron2):
    assert resized_shape(*shape, 800, 1333, "detectron2") == detectron2
    assert resized_shape(*shape, 800, 1333, "torchvision") == torchvision
    images, _ = _transform(resize_rounding="torchvision")([torch.zeros(3, *shape, dtype=torch.uint8)])
    assert tuple(images.tensors.shape[-2:]) == padded
    assert images.image_sizes == [torchvision]


def test_predictions_are_rescaled_by_the_actual_ratio():
    # 640x586 -> 874x800: x ratio 586/800, y ratio 640/874 (not 1/scale on both axes)
    transform = _transform()
    boxes = torch.tensor([[0.0, 0.0, 800.0, 874.0], [400.0, 437.0, 800.0, 874.0]])
    (result,) = transform.postprocess([{"boxes": boxes}], [(874, 800)], [(640, 586)])
    torch.testing.assert_close(
        result["boxes"], torch.tensor([[0.0, 0.0, 586.0, 640.0], [293.0, 320.0, 586.0, 640.0]])
    )


def test_bgr_normalisation_and_target_boxes():
    transform = _transform(min_size_train=[8], max_size=100).train()
    image = torch.zeros(3, 4, 6, dtype=torch.uint8)
    image[0] = 200  # red
    target = {"boxes": torch.tensor([[1.0, 1.0, 3.0, 2.0]]), "labels": torch.tensor([1])}
    images, targets = transform([image], [target])
    assert images.image_sizes == [(8, 12)]
    # channel 2 of the BGR tensor is red: 200 - 123.675
    assert images.tensors[0, 2, 0, 0].item() == pytest.approx(200 - 123.675)
    assert images.tensors[0, 0, 0, 0].item() == pytest.approx(-103.53)
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[2.0, 2.0, 6.0, 4.0]]))
    assert target["boxes"].tolist() == [[1.0, 1.0, 3.0, 2.0]], "the caller's target must not change"


def test_rgb_imagenet_normalisation():
    transform = _transform(
        input_format="RGB",
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
        min_size_test=4,
    )
    image = torch.full((3, 4, 4), 255.0)
    images, _ = transform([image])
    assert images.tensors[0, 0, 0, 0].item() == pytest.approx((255 - 123.675) / 58.395)


def test_fixed_size_pads_to_a_static_shape():
    transform = _transform(min_size_test=64, max_size=96, fixed_size=[128, 128])
    images, _ = transform([torch.zeros(3, 40, 60), torch.zeros(3, 60, 40)])
    assert tuple(images.tensors.shape) == (2, 3, 128, 128)
    assert images.image_sizes == [(64, 96), (96, 64)]


def test_fixed_size_too_small_is_a_clear_error():
    transform = _transform(min_size_test=64, max_size=96, fixed_size=[64, 64])
    with pytest.raises(ValueError, match=r"exceed model.input.fixed_size \[64, 64\]"):
        transform([torch.zeros(3, 40, 60)])


def test_non_rgb_input_is_refused():
    with pytest.raises(ValueError, match=r"RGB image of shape \[3, H, W\], got \(1, 8, 8\)"):
        _transform()([torch.zeros(1, 8, 8)])
