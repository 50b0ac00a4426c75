import io

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

from frcnn_pipeline.export.pil_resize import pil_bilinear_resize

# (input h, w) -> (output h, w): enlarging, shrinking (antialiased), mixed ones in both of Pillow's pass
# orders (the vertical pass first when the height shrinks by more than twice the width), a 12x shrink
SIZES = [
    ((300, 400), (600, 800)),
    ((300, 400), (240, 320)),
    ((300, 400), (13, 500)),
    ((1000, 1250), (801, 1335)),
    ((90, 60), (80, 100)),
    ((37, 91), (37, 92)),
    ((1200, 960), (100, 80)),
]


def _image(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _pil(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


@pytest.mark.parametrize(("source", "size"), SIZES)
def test_pillows_bilinear_resize_bit_for_bit(source, size):
    image = _image(*source)
    ours = pil_bilinear_resize(torch.from_numpy(image).permute(2, 0, 1), torch.tensor(size))
    np.testing.assert_array_equal(ours.permute(1, 2, 0).numpy(), _pil(image, *size))


class _Resize(nn.Module):
    def forward(self, image: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        return pil_bilinear_resize(image, size).to(torch.uint8)


def test_an_onnx_graph_follows_every_size_and_pass_order():
    buffer = io.BytesIO()
    example = torch.from_numpy(_image(30, 40)).permute(2, 0, 1).contiguous()
    torch.onnx.export(
        _Resize(),
        (example, torch.tensor([20, 50])),
        buffer,
        input_names=["image", "size"],
        dynamic_axes={"image": {1: "height", 2: "width"}},
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for source, size in SIZES:
        image = _image(*source)
        inputs = {"image": image.transpose(2, 0, 1).copy(), "size": np.array(size, dtype=np.int64)}
        (resized,) = session.run(None, inputs)
        np.testing.assert_array_equal(resized.transpose(1, 2, 0), _pil(image, *size))
