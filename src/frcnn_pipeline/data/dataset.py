"""The torch side of the tables: a detection Dataset, aspect-ratio grouped batches, collate, worker seeding.

Keys of `DetectionDataset` are an image's row position, or `(position, flip)` when the sampler decides the
flip: the sampler draws flips from a generator seeded by (seed, epoch), so a resumed or distributed run sees
exactly the same images, flipped the same way, whatever the number of loader workers.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from frcnn_pipeline.data.images import read_rgb
from frcnn_pipeline.errors import UserFacingError

logger = logging.getLogger(__name__)
_MAX_REPLACEMENT_TRIES = 16


class BadImagesError(UserFacingError, RuntimeError):
    """More training images than allowed could not be read."""


Target = dict[str, torch.Tensor]
Key = int | tuple[int, bool]


class DetectionDataset(Dataset):
    """Yields `(image uint8 RGB [3,H,W], target)`; target: boxes xyxy float32, labels 1..K int64, image_id.

    `train=True` leaves crowd annotations out of the targets (the model has no use for them in training).
    """

    def __init__(self, images: pd.DataFrame, annotations: pd.DataFrame, train: bool):
        self.images = images.reset_index(drop=True)
        self.train = train
        kept = annotations[~annotations["iscrowd"].astype(bool)] if train else annotations
        by_image = dict(tuple(kept.groupby("image_id", sort=False)))
        empty = kept.iloc[:0]
        self._boxes: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        for image_id in self.images["image_id"]:
            rows = by_image.get(image_id, empty)
            self._boxes.append(
                torch.as_tensor(rows[["x1", "y1", "x2", "y2"]].to_numpy(np.float32, copy=True)).reshape(-1, 4)
            )
            # Table labels are 0..K-1; the model reserves 0 for background.
            self._labels.append(torch.as_tensor(rows["label"].to_numpy(np.int64, copy=True) + 1))

    def __len__(self) -> int:
        return len(self.images)

    def boxes_per_image(self) -> dict[int, int]:
        """Number of target boxes of each image, by image_id."""
        return {int(i): len(b) for i, b in zip(self.images["image_id"], self._boxes, strict=True)}

    def aspect_ratios(self) -> np.ndarray:
        """width / height per image, from the table (no decoding)."""
        return (self.images["width"] / self.images["height"]).to_numpy()

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, Target]:
        position, flip = key if isinstance(key, tuple) else (key, False)
        image, problem = self._read(position)
        if problem and self.train:
            # A long run should not end on one bad file: train on the next readable image instead, and say
            # so in the target, where the trainer counts it (BadImageBudget).
            for offset in range(1, min(len(self), _MAX_REPLACEMENT_TRIES + 1)):
                replacement = (position + offset) % len(self)
                image, next_problem = self._read(replacement)
                if not next_problem:
                    break
            else:
                raise RuntimeError(f"{problem}; and the next images cannot be read either")
            target = self._target(replacement, image, flip)
            target["unreadable"] = problem
            return image, target
        if problem:
            raise RuntimeError(problem)
        return image, self._target(position, image, flip)

    def _read(self, position: int) -> tuple[torch.Tensor | None, str]:
        """The image, or None and what is wrong with it (truncated, corrupt, or not the table's size)."""
        row = self.images.iloc[position]
        try:
            image = read_rgb(row["path"])
        except (OSError, ValueError, SyntaxError) as error:
            return None, (
                f"Cannot read image {row['path']} (image_id {row['image_id']}): {error}. "
                "Fix or remove the file and re-run the ingest pipeline (image_checks: decode finds them)"
            )
        if image.shape[1:] != (row["height"], row["width"]):
            return None, (
                f"Image {row['path']} (image_id {row['image_id']}) is {image.shape[2]}x{image.shape[1]} "
                f"but the images table says {row['width']}x{row['height']}. Re-run the ingest pipeline"
            )
        return image, ""

    def _target(self, position: int, image: torch.Tensor, flip: bool) -> Target:
        boxes = self._boxes[position].clone()
        if flip:
            image.copy_(image.flip(-1))
            boxes[:, [0, 2]] = image.shape[-1] - boxes[:, [2, 0]]
        return {
            "boxes": boxes,
            "labels": self._labels[position].clone(),
            "image_id": torch.tensor(int(self.images["image_id"].iloc[position])),
        }


class BadImageBudget:
    """Counts the training images that could not be read (replaced in their batch) and stops past `limit`.

    detectron2 likewise retries another image; the cap keeps a broken dataset from training on.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.problems: list[str] = []

    def check(self, targets: list[Target]) -> None:
        """Takes the markers out of the targets (they are not tensors), logs each one, enforces the cap."""
        for target in targets:
            problem = target.pop("unreadable", None)
            if problem is None:
                continue
            self.problems.append(problem)
            logger.warning("Skipped a training image (%d so far): %s", len(self.problems), problem)
            if len(self.problems) > self.limit:
                raise BadImagesError(
                    f"{len(self.problems)} training images could not be read (train.max_bad_images is "
                    f"{self.limit}), e.g. {self.problems[0]}. Re-run the ingest pipeline with "
                    "ingest.validation.image_checks: decode to drop them, or raise train.max_bad_images."
                )


class GroupedBatchSampler:
    """Infinite stream of this rank's training batches, each of one aspect-ratio group (landscape/portrait).

    Every epoch shuffles the whole split with a generator seeded by (seed, epoch), the same on every rank,
    and cuts that order into global batches of `batch_size` images of one group, in order of completion (the
    leftovers of both groups are batched together at the end). The epoch keeps its first
    `iterations_per_epoch × world_size` batches and deals batch k to rank k % world_size: every rank has
    exactly `iterations_per_epoch` batches, all ranks stay in the same epoch, and an image of the epoch goes
    to exactly one rank. The `len(split) mod (batch_size × world_size)` images that cannot fill a global batch
    are not trained that epoch; they are another set each epoch, since each epoch has its own order. When all
    images share one group, iteration i trains on the same images however the total batch is split into
    ranks × per-rank batch. `start_batch` skips batches already trained on, which makes resume exact.
    """

    def __init__(
        self,
        aspect_ratios: Sequence[float],
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        flip_prob: float = 0.5,
        start_batch: int = 0,
    ):
        if len(aspect_ratios) < batch_size * world_size:
            raise ValueError(
                f"{len(aspect_ratios)} training image(s) cannot fill one batch of {batch_size} per device on "
                f"{world_size} device(s); lower train.images_per_device or add images"
            )
        self.landscape = np.asarray(aspect_ratios) >= 1.0
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.flip_prob = flip_prob
        self.start_batch = start_batch

    @property
    def iterations_per_epoch(self) -> int:
        return len(self.landscape) // (self.batch_size * self.world_size)

    def global_batches(self, epoch: int) -> list[list[tuple[int, bool]]]:
        """Every rank's batches of `epoch`, in dealing order (batch k goes to rank k % world_size)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.landscape), generator=generator).tolist()
        flips = (torch.rand(len(self.landscape), generator=generator) < self.flip_prob).tolist()
        batches: list[list[tuple[int, bool]]] = []
        groups: dict[bool, list[tuple[int, bool]]] = {True: [], False: []}
        for position in order:
            group = groups[bool(self.landscape[position])]
            group.append((position, flips[position]))
            if len(group) == self.batch_size:
                batches.append(list(group))
                group.clear()
        leftovers = groups[True] + groups[False]
        batches += [
            leftovers[start : start + self.batch_size]
            for start in range(0, len(leftovers) - self.batch_size + 1, self.batch_size)
        ]
        return batches[: self.iterations_per_epoch * self.world_size]

    def epoch_batches(self, epoch: int) -> list[list[tuple[int, bool]]]:
        """This rank's `iterations_per_epoch` batches of `epoch`."""
        return self.global_batches(epoch)[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        epoch, skipped = divmod(self.start_batch, self.iterations_per_epoch)
        yield from self.epoch_batches(epoch)[skipped:]
        for later in itertools.count(epoch + 1):
            yield from self.epoch_batches(later)


def collate(batch: list[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """Images differ in size: keep lists (the model pads them into one tensor)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed Python and NumPy from torch's per-worker seed.

    torch's own seed in a worker is derived from the loader's generator (seeded per rank by the trainer)
    and the worker id, so every (rank, worker) pair gets its own reproducible stream.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def loader_generator(seed: int, rank: int) -> torch.Generator:
    """The DataLoader's generator: distinct and reproducible per rank."""
    return torch.Generator().manual_seed(seed + 7919 * rank)
