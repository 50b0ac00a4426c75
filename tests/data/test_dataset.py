"""The training Dataset and its sampler: targets, flips, crowd, aspect groups, sharding, resume."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from frcnn_pipeline.data.coco.image_checks import _probe_image
from frcnn_pipeline.data.dataset import (
    BadImageBudget,
    BadImagesError,
    DetectionDataset,
    GroupedBatchSampler,
    collate,
    loader_generator,
    seed_worker,
)
from frcnn_pipeline.data.images import oriented_size, read_rgb


@pytest.fixture
def tables(tmp_path):
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:, :5] = (255, 0, 0)  # a red band on the left edge
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels[:, :20]).save(tmp_path / "b.png")
    images = pd.DataFrame(
        {"image_id": [7, 9], "file_name": ["a.png", "b.png"],
         "path": [str(tmp_path / "a.png"), str(tmp_path / "b.png")], "width": [30, 20], "height": [20, 20]}
    )  # fmt: skip
    annotations = pd.DataFrame(
        {"annotation_id": [1, 2, 3], "image_id": [7, 7, 7], "category_id": [3, 5, 5], "label": [0, 1, 1],
         "x1": [0.0, 10.0, 1.0], "y1": [0.0, 2.0, 1.0], "x2": [5.0, 20.0, 29.0], "y2": [20.0, 8.0, 19.0],
         "area": [100.0, 60.0, 500.0], "iscrowd": [False, False, True]}
    )  # fmt: skip
    return images, annotations


def test_targets_rgb_labels_plus_one_and_no_crowd(tables):
    image, target = DetectionDataset(*tables, train=True)[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 20, 30)
    assert image[:, 0, 0].tolist() == [255, 0, 0]
    assert target["labels"].tolist() == [1, 2]
    assert target["boxes"].tolist() == [[0, 0, 5, 20], [10, 2, 20, 8]]
    assert int(target["image_id"]) == 7


def test_boxes_per_image_counts_the_training_targets(tables):
    assert DetectionDataset(*tables, train=True).boxes_per_image() == {7: 2, 9: 0}
    assert DetectionDataset(*tables, train=False).boxes_per_image() == {7: 3, 9: 0}


def test_evaluation_keeps_crowd_and_images_without_boxes(tables):
    dataset = DetectionDataset(*tables, train=False)
    assert len(dataset[0][1]["boxes"]) == 3
    assert dataset[1][1]["boxes"].shape == (0, 4) and dataset[1][1]["labels"].dtype == torch.int64


def test_flip_mirrors_image_and_boxes(tables):
    dataset = DetectionDataset(*tables, train=True)
    image, target = dataset[(0, True)]
    assert image[:, 0, -1].tolist() == [255, 0, 0] and image[:, 0, 0].tolist() == [0, 0, 0]
    assert target["boxes"].tolist() == [[25, 0, 30, 20], [10, 2, 20, 8]]
    assert dataset[0][1]["boxes"].tolist()[0] == [0, 0, 5, 20], "flipping must not alter the stored boxes"


def test_missing_or_wrong_size_image_names_file_and_id(tables, tmp_path):
    images, annotations = tables
    (tmp_path / "b.png").unlink()
    with pytest.raises(RuntimeError, match=r"Cannot read image .*b\.png \(image_id 9\).*ingest"):
        DetectionDataset(images, annotations, train=False)[1]
    wrong = images.assign(width=[31, 20])
    with pytest.raises(RuntimeError, match=r"image_id 7\) is 30x20 but the images table says 31x20"):
        DetectionDataset(wrong, annotations, train=False)[0]


def test_training_replaces_a_truncated_image_and_counts_it(tables, tmp_path):
    images, annotations = tables
    path = tmp_path / "b.png"
    path.write_bytes(path.read_bytes()[:60])  # a truncated PNG: its header still reads
    dataset = DetectionDataset(images, annotations, train=True)
    image, target = dataset[1]
    assert image.shape == (3, 20, 30) and int(target["image_id"]) == 7, "the next readable image stands in"
    assert "b.png (image_id 9)" in target["unreadable"]

    budget = BadImageBudget(limit=1)
    budget.check([target, dataset[0][1]])
    assert "unreadable" not in target and len(budget.problems) == 1
    with pytest.raises(
        BadImagesError, match=r"2 training images could not be read \(train.max_bad_images is 1\)"
    ):
        budget.check([dataset[1][1]])


def test_exif_orientation_is_applied_and_ingest_agrees(tmp_path):
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:, :5] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # stored unrotated; shown rotated 90° clockwise
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif)
    with Image.open(tmp_path / "phone.jpg") as image:
        assert oriented_size(image) == (20, 30)
    rotated = read_rgb(tmp_path / "phone.jpg")
    assert rotated.shape == (3, 30, 20) and rotated[:, :5, :].float().mean() > 200  # the band is now on top
    assert _probe_image(str(tmp_path / "phone.jpg"), 20, 30, decode=True) is None


def _take(sampler, count):
    iterator = iter(sampler)
    return [next(iterator) for _ in range(count)]


def test_batches_group_aspect_ratios_and_are_reproducible():
    ratios = [1.5, 0.5] * 10
    sampler = GroupedBatchSampler(ratios, 2, seed=1)
    batches = _take(sampler, 9)
    for batch in batches:
        assert len({ratios[i] >= 1 for i, _ in batch}) == 1
    assert batches == _take(GroupedBatchSampler(ratios, 2, seed=1), 9)
    assert batches != _take(GroupedBatchSampler(ratios, 2, seed=2), 9)
    flips = [flip for batch in _take(sampler, 50) for _, flip in batch]
    assert 0.3 < np.mean(flips) < 0.7


def test_ranks_get_disjoint_shares_covering_the_epoch():
    ratios = [1.0] * 12
    shares = [
        list(GroupedBatchSampler(ratios, 2, seed=0, rank=r, world_size=2).epoch_batches(0)) for r in (0, 1)
    ]
    seen = [index for share in shares for batch in share for index, _ in batch]
    assert sorted(seen) == list(range(12))


def test_start_batch_continues_the_same_stream_across_epochs():
    ratios = [1.2, 0.8, 1.0, 0.7, 1.4]
    full = _take(GroupedBatchSampler(ratios, 2, seed=3), 12)
    assert _take(GroupedBatchSampler(ratios, 2, seed=3, start_batch=5), 7) == full[5:]


def test_too_few_images_for_one_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot fill one batch of 2 per device on 2 device"):
        GroupedBatchSampler([1.0, 1.0, 1.0], 2, seed=0, world_size=2)


def test_collate_keeps_lists_and_worker_seeding_is_per_rank(tables):
    dataset = DetectionDataset(*tables, train=True)
    images, targets = collate([dataset[0], dataset[1]])
    assert [i.shape for i in images] == [(3, 20, 30), (3, 20, 20)] and len(targets) == 2
    assert loader_generator(5, 0).initial_seed() != loader_generator(5, 1).initial_seed()
    seed_worker(0)  # seeds Python and NumPy from torch's per-worker seed without error


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_an_epoch_gives_each_image_to_one_rank_and_leaves_out_the_remainder(world_size, batch_size):
    ratios = [1.3, 0.7, 1.0, 0.6, 1.8] * 5 + [1.1] * 4  # 29 images (prime: no world size divides it)
    samplers = [GroupedBatchSampler(ratios, batch_size, seed=4, rank=rank, world_size=world_size)
                for rank in range(world_size)]  # fmt: skip
    iterations = len(ratios) // (batch_size * world_size)
    for epoch in (0, 1):
        shares = [sampler.epoch_batches(epoch) for sampler in samplers]
        assert [len(share) for share in shares] == [iterations] * world_size, "ranks stay in step"
        seen = [index for share in shares for batch in share for index, _ in batch]
        assert len(seen) == len(set(seen)), "no image twice in an epoch"
        assert len(seen) == iterations * batch_size * world_size
        assert len(ratios) - len(seen) == len(ratios) % (batch_size * world_size), (
            "only the remainder is left out"
        )
    # The stream of batches continues epoch after epoch, so a resumed rank is where it left off.
    stream = _take(samplers[-1], 2 * iterations + 1)
    assert stream == [
        *samplers[-1].epoch_batches(0),
        *samplers[-1].epoch_batches(1),
        samplers[-1].epoch_batches(2)[0],
    ]


def test_the_left_out_images_change_from_epoch_to_epoch():
    sampler = GroupedBatchSampler([1.0] * 10, 3, seed=0)
    left_out = [
        set(range(10)) - {i for batch in sampler.epoch_batches(e) for i, _ in batch} for e in range(6)
    ]
    assert all(len(images) == 1 for images in left_out) and len(set(map(frozenset, left_out))) > 1


def test_one_aspect_group_trains_the_same_images_whatever_the_split_of_the_total_batch():
    ratios = [1.0] * 13
    single = GroupedBatchSampler(ratios, 4, seed=2)
    split = [GroupedBatchSampler(ratios, 1, seed=2, rank=r, world_size=4) for r in range(4)]
    for iteration in range(single.iterations_per_epoch):
        together = single.epoch_batches(0)[iteration]
        assert sorted(together) == sorted(s.epoch_batches(0)[iteration][0] for s in split)
