"""Every image mode Pillow writes, decoded to the 8-bit RGB the model sees: real files in tmp_path, pixels
asserted against each mode's own definition."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from frcnn_pipeline.data.dataset import DetectionDataset
from frcnn_pipeline.data.images import UnconvertibleImageError, read_rgb, rgb_pixels
from frcnn_pipeline.evaluation.inference import ImageFiles

SIXTEEN_BIT = np.array([[0, 257, 1000, 32896], [40000, 65278, 65535, 12850]], np.uint16)
# 255 v / 65535 rounded to nearest: 257 k -> k exactly; 1000 -> 3.89; 40000 -> 155.6.
SIXTEEN_BIT_AS_EIGHT = np.array([[0, 1, 4, 128], [156, 254, 255, 50]], np.uint8)


def decoded(path) -> np.ndarray:
    """[H, W, 3] as every pipeline reads the file."""
    return read_rgb(path).permute(1, 2, 0).numpy()


def gray(values) -> np.ndarray:
    return np.repeat(np.asarray(values, np.uint8)[..., None], 3, axis=2)


def opened_mode(path) -> str:
    with Image.open(path) as image:
        return image.mode


@pytest.mark.parametrize(
    ("file_name", "array", "mode"),
    [
        ("little.png", SIXTEEN_BIT, "I;16"),
        ("big.tif", SIXTEEN_BIT.astype(">u2"), "I;16B"),
        ("int32.tif", SIXTEEN_BIT.astype(np.int32), "I"),  # as Pillow < 11 opens a 16-bit PNG
    ],
)
def test_sixteen_bit_gray_is_scaled_by_its_range_not_clipped(tmp_path, file_name, array, mode):
    Image.fromarray(array).save(tmp_path / file_name)
    assert opened_mode(tmp_path / file_name) == mode
    np.testing.assert_array_equal(decoded(tmp_path / file_name), gray(SIXTEEN_BIT_AS_EIGHT))


def test_sixteen_bit_png_with_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90° clockwise
    Image.fromarray(SIXTEEN_BIT).save(tmp_path / "scan.png", exif=exif)
    np.testing.assert_array_equal(decoded(tmp_path / "scan.png"), gray(np.rot90(SIXTEEN_BIT_AS_EIGHT, -1)))


@pytest.mark.parametrize("values", [[[-5, 100]], [[0, 70000]]])
def test_integers_beyond_sixteen_bits_are_unconvertible(tmp_path, values):
    Image.fromarray(np.array(values, np.int32)).save(tmp_path / "ct.tif")
    with pytest.raises(UnconvertibleImageError, match=r"mode I \(integers\) has values .* outside 0-65535"):
        read_rgb(tmp_path / "ct.tif")


def test_float_on_pillows_scale_is_rounded(tmp_path):
    Image.fromarray(np.array([[0.0, 12.4, 254.6, 255.0]], np.float32)).save(tmp_path / "f.tif")
    assert opened_mode(tmp_path / "f.tif") == "F"
    np.testing.assert_array_equal(decoded(tmp_path / "f.tif"), gray([[0, 12, 255, 255]]))


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ([[-1.0, 3.0]], "outside Pillow's 0-255 scale"),
        ([[0.0, 300.0]], "outside Pillow's 0-255 scale"),
        ([[0.0, np.nan]], "NaN or infinite"),
        ([[0.0, 0.5, 1.0]], "a 0-1 scale, or a near-black image"),
    ],
)
def test_float_data_of_unknown_scale_is_unconvertible(tmp_path, values, reason):
    Image.fromarray(np.array(values, np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(UnconvertibleImageError, match=reason):
        read_rgb(tmp_path / "f.tif")


def test_bilevel_gray_and_rgb(tmp_path):
    bilevel = Image.new("1", (3, 1))
    bilevel.putdata([0, 255, 0])
    bilevel.save(tmp_path / "one.png")
    Image.fromarray(np.array([[0, 77, 255]], np.uint8)).save(tmp_path / "l.png")
    rgb = np.array([[[1, 2, 3], [250, 128, 0]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert [opened_mode(tmp_path / n) for n in ("one.png", "l.png", "rgb.png")] == ["1", "L", "RGB"]
    np.testing.assert_array_equal(decoded(tmp_path / "one.png"), gray([[0, 255, 0]]))
    np.testing.assert_array_equal(decoded(tmp_path / "l.png"), gray([[0, 77, 255]]))
    np.testing.assert_array_equal(decoded(tmp_path / "rgb.png"), rgb)


def test_cmyk_and_ycbcr(tmp_path):
    cmyk = [(0, 0, 0, 0), (0, 0, 0, 255), (255, 0, 0, 0), (0, 128, 0, 64)]
    image = Image.new("CMYK", (4, 1))
    image.putdata(cmyk)
    image.save(tmp_path / "print.tif")
    assert opened_mode(tmp_path / "print.tif") == "CMYK"
    expected = [[round((255 - ink) * (255 - k) / 255) for ink in (c, m, y)] for c, m, y, k in cmyk]
    np.testing.assert_allclose(decoded(tmp_path / "print.tif")[0], expected, atol=1)

    ycbcr = [(100, 128, 128), (76, 85, 255)]
    image = Image.new("YCbCr", (2, 1))
    image.putdata(ycbcr)
    image.save(tmp_path / "video.tif")
    assert opened_mode(tmp_path / "video.tif") == "YCbCr"
    # JPEG's full-range BT.601 inverse.
    expected = [
        [y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)]
        for y, cb, cr in ycbcr
    ]
    np.testing.assert_allclose(decoded(tmp_path / "video.tif")[0], np.clip(expected, 0, 255), atol=1)


def test_opaque_alpha_is_dropped_without_a_note(tmp_path):
    rgba = np.array([[[10, 20, 30, 255], [200, 100, 0, 255]]], np.uint8)
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    with Image.open(tmp_path / "opaque.png") as image:
        pixels, note = rgb_pixels(image)
    np.testing.assert_array_equal(pixels, rgba[..., :3])
    assert note == ""


def test_gray_with_alpha_is_shown_over_black(tmp_path):
    image = Image.new("LA", (3, 1))
    image.putdata([(100, 255), (100, 128), (100, 0)])
    image.save(tmp_path / "la.png")
    with Image.open(tmp_path / "la.png") as opened:
        assert opened.mode == "LA"
        pixels, note = rgb_pixels(opened)
    np.testing.assert_array_equal(pixels, gray([[100, 50, 0]]))  # 100 × 128/255 = 50.2
    assert note == "66.7% of its pixels are transparent or translucent: they are shown over black"


def test_palette_with_a_transparent_index(tmp_path):
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    image.putdata([0, 1, 2])
    image.save(tmp_path / "p.png", transparency=1)
    with Image.open(tmp_path / "p.png") as opened:
        assert opened.mode == "P"
        pixels, note = rgb_pixels(opened)
    np.testing.assert_array_equal(pixels, [[[255, 0, 0], [0, 0, 0], [0, 0, 255]]])
    assert note.startswith("33.3% of its pixels")

    image.save(tmp_path / "solid.png")
    np.testing.assert_array_equal(decoded(tmp_path / "solid.png"), [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]])


def test_colour_key_transparency_of_rgb_and_sixteen_bit_gray(tmp_path):
    Image.new("RGB", (2, 1), (1, 2, 3)).save(tmp_path / "key.png", transparency=(1, 2, 3))
    np.testing.assert_array_equal(decoded(tmp_path / "key.png"), np.zeros((1, 2, 3), np.uint8))
    Image.fromarray(SIXTEEN_BIT).save(tmp_path / "key16.png", transparency=65535)
    expected = SIXTEEN_BIT_AS_EIGHT.copy()
    expected[SIXTEEN_BIT == 65535] = 0
    np.testing.assert_array_equal(decoded(tmp_path / "key16.png"), gray(expected))


def test_training_and_prediction_read_the_same_pixels(tmp_path):
    path = tmp_path / "scan.png"
    Image.fromarray(SIXTEEN_BIT).save(path)
    images = pd.DataFrame({"image_id": [1], "path": [str(path)], "width": [4], "height": [2]})
    annotations = pd.DataFrame(
        {"image_id": [1], "x1": [0.0], "y1": [0.0], "x2": [2.0], "y2": [2.0], "label": [0], "iscrowd": [0]}
    )
    training_image, _ = DetectionDataset(images, annotations, train=True)[0]
    _, predicted_image, problem = ImageFiles([str(path)])[0]
    assert problem == ""
    for image in (training_image, predicted_image):
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), gray(SIXTEEN_BIT_AS_EIGHT))


def test_an_unconvertible_image_is_reported_where_it_is_read(tmp_path):
    Image.fromarray(np.array([[0.0, 0.5]], np.float32)).save(tmp_path / "f.tif")
    _, image, problem = ImageFiles([str(tmp_path / "f.tif")])[0]
    assert image is None and problem.startswith("UnconvertibleImageError: mode F")
