"""The portable NMS keeps exactly torchvision's indices; the dispatcher picks torchvision's kernel on CPU."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import batched_nms as tv_batched_nms
from torchvision.ops import boxes as box_ops
from torchvision.ops import nms as tv_nms

from frcnn_pipeline.layers import backend, batched_nms, fixed_round_nms, nms_keep_mask
from frcnn_pipeline.layers import nms as nms_module
from frcnn_pipeline.modeling.step_trace import trace_step


def _random_boxes(count: int, generator: torch.Generator, *, spread: float = 300.0) -> torch.Tensor:
    corner = torch.rand(count, 2, generator=generator) * spread
    size = torch.rand(count, 2, generator=generator) * 60 + 1
    return torch.cat([corner, corner + size], dim=1)


def _portable_batched_nms(boxes, scores, idxs, threshold):
    backend.configure("portable")
    try:
        return batched_nms(boxes, scores, idxs, threshold)
    finally:
        backend.configure("auto")


@pytest.mark.parametrize("count", [1, 40, 700, 1500])  # torchvision: offset trick up to 1000, per class above
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_batched_nms_keeps_torchvisions_indices(count, threshold):
    generator = torch.Generator().manual_seed(count)
    boxes = _random_boxes(count - count // 3, generator, spread=5 * count**0.5 + 20)
    near_copies = boxes[: count // 3] + torch.rand(count // 3, 4, generator=generator) * 2 - 1
    boxes = torch.cat([boxes, near_copies])  # overlaps beyond every threshold
    scores = torch.randperm(count, generator=generator).float() / count  # distinct: ties are tested below
    classes = torch.randint(0, 3, (count,), generator=generator)
    expected = tv_batched_nms(boxes, scores, classes, threshold)
    kept = _portable_batched_nms(boxes, scores, classes, threshold)
    assert kept.dtype == torch.int64
    assert torch.equal(kept, expected)
    assert 0 < len(expected) < count or count == 1  # some boxes suppressed: the test could fail


def test_equal_scores_rank_by_index_as_torchvision_does():
    generator = torch.Generator().manual_seed(11)
    boxes = _random_boxes(600, generator, spread=150.0)
    scores = torch.randint(0, 4, (600,), generator=generator).float() / 4  # many ties
    classes = torch.randint(0, 3, (600,), generator=generator)
    single_class = torch.zeros(600, dtype=torch.int64)
    assert torch.equal(_portable_batched_nms(boxes, scores, single_class, 0.5), tv_nms(boxes, scores, 0.5))
    assert torch.equal(
        _portable_batched_nms(boxes, scores, classes, 0.5), tv_batched_nms(boxes, scores, classes, 0.5)
    )


def test_equal_scores_above_torchvisions_per_class_threshold_keep_the_same_boxes():
    # Above 1000 boxes, torchvision sorts its per-class result with an unstable sort: same boxes, same
    # scores in the same order, and ties by index on our side.
    generator = torch.Generator().manual_seed(12)
    boxes = _random_boxes(2000, generator)
    scores = torch.randint(0, 4, (2000,), generator=generator).float() / 4
    classes = torch.randint(0, 3, (2000,), generator=generator)
    expected = tv_batched_nms(boxes, scores, classes, 0.5)
    kept = _portable_batched_nms(boxes, scores, classes, 0.5)
    assert torch.equal(kept.sort().values, expected.sort().values)
    assert torch.equal(scores[kept], scores[expected])
    for value in scores.unique():
        tied = kept[scores[kept] == value]
        assert torch.equal(tied, tied.sort().values)


def test_zero_area_and_duplicate_boxes():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 10.0],  # a duplicate of 0: IoU 1, suppressed
            [5.0, 5.0, 5.0, 5.0],  # a point inside 0: IoU 0, kept
            [5.0, 5.0, 5.0, 5.0],  # the same point: IoU 0 / 0 = NaN is not > threshold, kept
            [2.0, 2.0, 2.0, 8.0],  # a segment (zero width), kept
            [20.0, 0.0, 30.0, 0.0],  # zero height, kept
            [1.0, 1.0, 10.0, 10.0],  # IoU 0.81 with 0, suppressed
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.95, 0.7, 0.6, 0.5, 0.85])
    classes = torch.zeros(7, dtype=torch.int64)
    expected = tv_nms(boxes, scores, 0.5)
    assert expected.tolist() == [2, 0, 3, 4, 5]
    assert torch.equal(_portable_batched_nms(boxes, scores, classes, 0.5), expected)
    assert torch.equal(torch.where(nms_keep_mask(boxes, scores, 0.5))[0], expected.sort().values)


def test_the_threshold_compares_like_the_kernel():
    # IoU 3 / 10 is 0.3 rounded up in float32: the kernel compares it with 0.3 in double and suppresses,
    # where a float32 comparison would not. IoU 1 / 2 is exactly 0.5: not above 0.5, kept.
    boxes = torch.tensor(
        [[0.0, 0.0, 6.5, 1.0], [3.5, 0.0, 10.0, 1.0], [0.0, 5.0, 2.0, 6.0], [0.0, 5.0, 1.0, 6.0]]
    )
    scores = torch.tensor([1.0, 0.9, 0.8, 0.7])
    classes = torch.zeros(4, dtype=torch.int64)
    for threshold, expected in ((0.3, [0, 2]), (0.5, [0, 1, 2, 3])):
        assert tv_nms(boxes, scores, threshold).tolist() == expected
        assert _portable_batched_nms(boxes, scores, classes, threshold).tolist() == expected


def test_suppression_chains_across_blocks(monkeypatch):
    # Boxes sliding right by 1 px with decreasing scores: box i suppresses i+1, which then cannot suppress
    # i+2 — a chain as long as the input, crossing many blocks.
    monkeypatch.setattr(nms_module, "BLOCK", 8)
    x = torch.arange(100, dtype=torch.float32)
    boxes = torch.stack([x, torch.zeros(100), x + 4, torch.full((100,), 4.0)], dim=1)
    scores = torch.linspace(1, 0.01, 100)
    expected = tv_nms(boxes, scores, 0.5)
    assert 10 < len(expected) < 90
    mask = nms_keep_mask(boxes, scores, 0.5)
    assert torch.equal(torch.where(mask)[0], expected.sort().values)


def test_keep_mask_honours_classes_and_valid_boxes_and_keeps_shapes():
    generator = torch.Generator().manual_seed(13)
    boxes = _random_boxes(500, generator, spread=120.0)
    scores = torch.rand(500, generator=generator)
    classes = torch.randint(0, 4, (500,), generator=generator)
    valid = torch.rand(500, generator=generator) > 0.3
    mask = nms_keep_mask(boxes, scores, 0.6, classes, valid)
    assert mask.shape == (500,) and mask.dtype == torch.bool
    subset = torch.where(valid)[0]
    expected = subset[tv_batched_nms(boxes[subset], scores[subset], classes[subset], 0.6)]
    assert torch.equal(torch.where(mask)[0], expected.sort().values)
    assert not mask[~valid].any()


def test_empty_input():
    boxes, scores = torch.zeros(0, 4), torch.zeros(0)
    assert nms_keep_mask(boxes, scores, 0.5).shape == (0,)
    kept = _portable_batched_nms(boxes, scores, torch.zeros(0, dtype=torch.int64), 0.5)
    assert kept.shape == (0,) and kept.dtype == torch.int64


def test_batched_nms_takes_torchvisions_kernel_on_cpu_unless_told_otherwise(monkeypatch):
    calls = []
    monkeypatch.setattr(box_ops, "batched_nms", lambda *args: calls.append(args) or tv_batched_nms(*args))
    generator = torch.Generator().manual_seed(14)
    boxes, scores = _random_boxes(50, generator), torch.rand(50, generator=generator)
    classes = torch.zeros(50, dtype=torch.int64)
    auto = batched_nms(boxes, scores, classes, 0.5)
    assert len(calls) == 1
    assert torch.equal(_portable_batched_nms(boxes, scores, classes, 0.5), auto)
    assert len(calls) == 1


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")  # the trace itself
def test_a_traced_keep_mask_follows_the_data_it_was_not_traced_with():
    # A trace (an ONNX export) would freeze the portable mask's rounds: it takes torchvision's NMS instead.
    def keep(boxes, scores, classes, valid):
        return nms_keep_mask(boxes, scores, 0.5, idxs=classes, valid=valid)

    def case(seed: int):
        generator = torch.Generator().manual_seed(seed)
        boxes = _random_boxes(300, generator, spread=120.0)
        scores = torch.rand(300, generator=generator)
        return boxes, scores, torch.randint(0, 3, (300,), generator=generator), scores > 0.2

    traced = torch.jit.trace(keep, case(0), check_trace=False)
    for seed in (1, 2):
        assert torch.equal(traced(*case(seed)), keep(*case(seed)))
        assert 0 < int(keep(*case(seed)).sum()) < int(case(seed)[3].sum())  # suppression happened


def _batched_problems(seed: int, count: int = 300):
    generator = torch.Generator().manual_seed(seed)
    boxes = torch.stack([_random_boxes(count, generator, spread=150.0) for _ in range(6)]).view(
        2, 3, count, 4
    )
    scores = torch.rand(2, 3, count, generator=generator)
    classes = torch.randint(0, 3, (2, 3, count), generator=generator)
    return boxes, scores, classes, torch.rand(2, 3, count, generator=generator) > 0.2


@pytest.mark.parametrize("with_classes", [True, False])
def test_fixed_round_nms_keeps_torchvisions_boxes_in_every_problem(with_classes):
    boxes, scores, classes, valid = _batched_problems(15)
    idxs = classes if with_classes else torch.zeros_like(classes)
    keep, unresolved = fixed_round_nms(
        boxes, scores, 0.5, valid, rounds=20, idxs=classes if with_classes else None
    )
    assert keep.shape == valid.shape and keep.dtype == torch.bool and int(unresolved) == 0
    for problem in range(6):
        b, s, c, v = (t.flatten(0, 1)[problem] for t in (boxes, scores, idxs, valid))
        subset = torch.where(v)[0]
        expected = subset[tv_batched_nms(b[subset], s[subset], c[subset], 0.5)]
        assert torch.equal(torch.where(keep.flatten(0, 1)[problem])[0], expected.sort().values)


def test_fixed_round_nms_keeps_the_boxes_of_a_chain_longer_than_its_rounds():
    # The chain of test_suppression_chains_across_blocks: 99 rounds resolve it; fewer leave its tail
    # undecided, counted, and kept (a superset of torchvision's boxes, never a box dropped).
    x = torch.arange(100, dtype=torch.float32)
    boxes = torch.stack([x, torch.zeros(100), x + 4, torch.full((100,), 4.0)], dim=1)
    scores, valid = torch.linspace(1, 0.01, 100), torch.ones(100, dtype=torch.bool)
    expected = tv_nms(boxes, scores, 0.5).sort().values
    keep, unresolved = fixed_round_nms(boxes, scores, 0.5, valid, rounds=99)
    assert torch.equal(torch.where(keep)[0], expected) and int(unresolved) == 0
    keep, unresolved = fixed_round_nms(boxes, scores, 0.5, valid, rounds=20)
    # r rounds decide the chain's first r + 1 boxes
    assert int(unresolved) == 100 - 21 and keep[expected].all() and int(keep.sum()) > len(expected)


def test_fixed_round_nms_runs_the_same_ops_on_the_same_shapes_and_reads_nothing_back():
    traces = []
    for seed in (16, 17):
        boxes, scores, classes, valid = _batched_problems(seed)
        with trace_step() as trace:
            fixed_round_nms(boxes, scores, 0.7, valid, rounds=8, idxs=classes)
        traces.append(trace)
    assert traces[0].ops == traces[1].ops and traces[0].flagged == traces[1].flagged == []


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")  # the trace itself
def test_a_traced_fixed_round_nms_takes_torchvisions_nms_per_problem():
    def keep(boxes, scores, classes, valid):
        return fixed_round_nms(boxes, scores, 0.5, valid, rounds=20, idxs=classes)[0]

    traced = torch.jit.trace(keep, _batched_problems(18), check_trace=False)
    assert torch.equal(traced(*_batched_problems(19)), keep(*_batched_problems(19)))
