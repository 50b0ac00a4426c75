"""Component values from detectron2's and torchvision's own tests, copied here as literals."""

import pytest
import torch
from torch import nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.image_list import ImageList

from frcnn_pipeline.modeling.anchors import FixedStrideAnchorGenerator, unrounded_cell_anchors
from frcnn_pipeline.modeling.pooler import LevelRoIAlign
from frcnn_pipeline.modeling.roi_heads import fast_rcnn_losses


def _anchors(sizes, ratios, strides, *, rounded, feature_hw, image_hw=(64, 64)):
    generator = FixedStrideAnchorGenerator(sizes, ratios, strides, round_cell_anchors=rounded)
    features = [torch.zeros(1, 1, *feature_hw) for _ in sizes]
    images = ImageList(torch.zeros(1, 3, *image_hw), [image_hw])
    return generator(images, features)[0]


def test_detectron2_default_anchor_generator():
    # detectron2 test_anchor_generator.py::test_default_anchor_generator (offset 0).
    # Order: size-major, then grid position, then aspect ratio.
    anchors = _anchors([32, 64], [0.25, 1, 4], [4, 4], rounded=False, feature_hw=(1, 2))
    expected = [
        [-32, -8, 32, 8], [-16, -16, 16, 16], [-8, -32, 8, 32],
        [-28, -8, 36, 8], [-12, -16, 20, 16], [-4, -32, 12, 32],
        [-64, -16, 64, 16], [-32, -32, 32, 32], [-16, -64, 16, 64],
        [-60, -16, 68, 16], [-28, -32, 36, 32], [-12, -64, 20, 64],
    ]  # fmt: skip
    torch.testing.assert_close(anchors, torch.tensor(expected, dtype=torch.float32))


def test_fpn_cell_anchors_exact_and_rounded():
    exact = unrounded_cell_anchors([32], [0.5, 1, 2])
    torch.testing.assert_close(
        exact,
        torch.tensor(
            [
                [-22.6274, -11.3137, 22.6274, 11.3137],
                [-16, -16, 16, 16],
                [-11.3137, -22.6274, 11.3137, 22.6274],
            ]
        ),
        atol=1e-4,
        rtol=0,
    )
    assert unrounded_cell_anchors([512], [0.5])[0, 0].item() == pytest.approx(-362.0387, abs=1e-4)
    rounded = FixedStrideAnchorGenerator([32, 64, 128, 256, 512], [0.5, 1, 2], [4, 8, 16, 32, 64], True)
    expected_rounded = {
        32: [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]],
        128: [[-91, -45, 91, 45], [-64, -64, 64, 64], [-45, -91, 45, 91]],
        512: [[-362, -181, 362, 181], [-256, -256, 256, 256], [-181, -362, 181, 362]],
    }
    for level, size in ((0, 32), (2, 128), (4, 512)):
        torch.testing.assert_close(
            rounded.cell_anchors[level], torch.tensor(expected_rounded[size], dtype=torch.float32)
        )


def test_torchvision_rounded_stride16_grid():
    anchors = _anchors([32], [0.5, 1, 2], [16], rounded=True, feature_hw=(4, 4))
    assert anchors.shape == (48, 4)
    expected = [
        [-23, -11, 23, 11],
        [-16, -16, 16, 16],
        [-11, -23, 11, 23],
        [-7, -11, 39, 11],
        [0, -16, 32, 16],
        [5, -23, 27, 23],
    ]
    torch.testing.assert_close(anchors[:6], torch.tensor(expected, dtype=torch.float32))


def test_p6_uses_the_true_stride_when_padded_size_over_32_is_odd():
    # 800 px padded height: P6 is 13 cells; torchvision would infer stride 800 // 13 = 61.
    anchors = _anchors([512], [1.0], [64], rounded=True, feature_hw=(13, 1), image_hw=(800, 32))
    assert anchors[-1, 1].item() == 12 * 64 - 256


@pytest.mark.parametrize(
    ("aligned", "expected"),
    [
        (False, [[7.5, 8, 8.5, 9], [10, 10.5, 11, 11.5], [12.5, 13, 13.5, 14], [15, 15.5, 16, 16.5]]),
        (True, [[4.5, 5, 5.5, 6], [7, 7.5, 8, 8.5], [9.5, 10, 10.5, 11], [12, 12.5, 13, 13.5]]),
    ],
)
def test_roi_align_aligned_and_not(aligned, expected):
    # detectron2 tests/layers/test_roi_align.py::test_forward_output
    pooler = LevelRoIAlign(["0"], [1], output_size=4, sampling_ratio=0, aligned=aligned)
    feature = torch.arange(25, dtype=torch.float32).view(1, 1, 5, 5)
    pooled = pooler({"0": feature}, [torch.tensor([[1.0, 1.0, 3.0, 3.0]])], [(5, 5)])
    torch.testing.assert_close(pooled[0, 0], torch.tensor(expected))


def test_roi_align_empty_box_gives_zeros():
    pooler = LevelRoIAlign(["0"], [1], output_size=7, sampling_ratio=0, aligned=True)
    feature = torch.arange(100, dtype=torch.float32).view(1, 1, 10, 10)
    pooled = pooler({"0": feature}, [torch.tensor([[3.0, 4.0, 5.0, 4.0]])], [(10, 10)])
    assert torch.count_nonzero(pooled) == 0


def test_pooler_assigns_levels_like_detectron2():
    # floor(4 + log2(sqrt(area) / 224)) clamped to [2, 5]: 112 px -> P3, 224 -> P4, 1000 -> P5, 10 -> P2.
    pooler = LevelRoIAlign(
        ["0", "1", "2", "3"], [4, 8, 16, 32], output_size=7, sampling_ratio=0, aligned=True
    )
    boxes = torch.tensor(
        [[0, 0, 112, 112], [0, 0, 224, 224], [0, 0, 1000, 1000], [0, 0, 10, 10]], dtype=torch.float32
    )
    assert pooler.map_levels([boxes]).tolist() == [1, 2, 3, 0]


def _detectron2_fast_rcnn_recipe():
    """detectron2 tests/modeling/test_fast_rcnn.py::test_fast_rcnn, moved to torchvision's layout."""
    torch.manual_seed(132)
    cls_score, bbox_pred = nn.Linear(8, 6), nn.Linear(8, 20)  # 5 foreground classes, background LAST
    nn.init.normal_(cls_score.weight, std=0.01)
    nn.init.normal_(bbox_pred.weight, std=0.001)
    nn.init.constant_(cls_score.bias, 0)
    nn.init.constant_(bbox_pred.bias, 0)
    x = torch.rand(2, 8)
    proposals = torch.tensor([[0.8, 1.1, 3.2, 2.8], [2.3, 2.5, 7, 8]])
    gt = torch.tensor([[1.0, 1, 3, 3], [2, 2, 6, 6]])
    logits_d2, deltas_d2 = cls_score(x), bbox_pred(x)
    # torchvision: background first, class-specific deltas for background too (unused).
    class_logits = torch.cat([logits_d2[:, 5:], logits_d2[:, :5]], dim=1)
    box_regression = torch.cat([torch.zeros(2, 4), deltas_d2], dim=1)
    labels = [torch.tensor([1, 2]) + 1]
    targets = [BoxCoder((10.0, 10.0, 5.0, 5.0)).encode_single(gt, proposals)]
    return class_logits, box_regression, labels, targets


def test_fast_rcnn_l1_loss_matches_detectron2():
    loss_cls, loss_box = fast_rcnn_losses(
        *_detectron2_fast_rcnn_recipe(), smooth_l1_beta=0.0, label_smoothing=0.0
    )
    assert loss_cls.item() == pytest.approx(1.7951188087, abs=1e-6)
    assert loss_box.item() == pytest.approx(4.0357131958, abs=1e-6)


def test_fast_rcnn_smooth_l1_matches_torchvision():
    _, loss_box = fast_rcnn_losses(*_detectron2_fast_rcnn_recipe(), smooth_l1_beta=1 / 9, label_smoothing=0.0)
    assert loss_box.item() == pytest.approx(3.8405516148, abs=1e-6)


def test_label_smoothing_changes_only_the_classifier():
    recipe = _detectron2_fast_rcnn_recipe()
    loss_cls, loss_box = fast_rcnn_losses(*recipe, smooth_l1_beta=0.0, label_smoothing=0.1)
    expected = nn.functional.cross_entropy(recipe[0], recipe[2][0], label_smoothing=0.1)
    assert loss_cls.item() == pytest.approx(expected.item())
    assert loss_cls.item() != pytest.approx(1.7951188087, abs=1e-4)
    assert loss_box.item() == pytest.approx(4.0357131958, abs=1e-6)
