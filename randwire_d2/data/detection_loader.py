"""A detection training loader that a resumed run continues where the interrupted one stopped.

Detectron2's `build_detection_train_loader` restarts its order with every process and groups
and augments depending on the workers, so a resumed run sees iterations 0, 1, ... again. Here
every batch is a function of (seed, rank, world size, iteration) alone: rank r takes positions
r, r + world_size, ... of `imagefolder.epoch_order`, aspect-ratio grouping uses the recorded
sizes, and each image is augmented under random state seeded by its stream position. Starting
at iteration k replays only the integer bookkeeping of the first k batches.
"""

import itertools
import logging
import random
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetFromList
from torch.utils.data import DataLoader, Dataset, Sampler

from .imagefolder import batched_loader, epoch_order

__all__ = ["GroupedBatchSampler", "SeededMapDataset", "build_resumable_train_loader"]

logger = logging.getLogger(__name__)


class GroupedBatchSampler(Sampler):
    """This process's batches, from `start_iter` on, as lists of (dataset index, item seed).

    `aspect_groups` gives each item's group (0: width > height, 1: otherwise, as Detectron2's
    AspectRatioGroupedDataset; None: no grouping), `repeat_factors` its repeat factor
    (RepeatFactorTrainingSampler; None: 1); `batch_size` is per process.
    """

    def __init__(
        self,
        aspect_groups: Optional[Sequence[int]],
        batch_size: int,
        *,
        size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_iter: int = 0,
        repeat_factors: Optional[Sequence[float]] = None,
    ):
        if size < 1:
            raise ValueError("the training set is empty: no image to train on")
        if batch_size < 1:
            raise ValueError(f"batch size per process {batch_size} is invalid: expected >= 1")
        self.size, self.batch_size, self.seed = size, batch_size, int(seed)
        self.rank, self.world_size, self.start_iter = rank, world_size, start_iter
        self.groups = None if aspect_groups is None else np.asarray(aspect_groups, dtype=np.int64)
        self.repeat = None if repeat_factors is None else np.asarray(repeat_factors, np.float64)

    def _batches(self) -> Iterator[List[Tuple[int, int]]]:
        buckets: Dict[int, List[Tuple[int, int]]] = {}
        for epoch in itertools.count():
            order = epoch_order(self.seed, epoch, self.size, self.repeat)
            indices, seeds = (a[self.rank :: self.world_size] for a in order)
            if len(indices) == 0:
                raise ValueError(
                    f"process {self.rank} of {self.world_size} gets no training image: the "
                    f"training set has {self.size} images"
                )
            for index, seed in zip(indices.tolist(), seeds.tolist()):
                group = 0 if self.groups is None else int(self.groups[index])
                bucket = buckets.setdefault(group, [])
                bucket.append((index, seed))
                if len(bucket) == self.batch_size:
                    yield bucket
                    buckets[group] = []

    def __iter__(self):
        return itertools.islice(self._batches(), self.start_iter, None)


class SeededMapDataset(Dataset):
    """dataset[(index, seed)] = mapper(dicts[index]) under random state seeded by `seed` (the
    caller's restored); an image the mapper drops is replaced by the next one."""

    def __init__(self, dicts: Sequence[Dict], mapper):
        self.dicts = DatasetFromList(list(dicts), copy=False, serialize=True)
        self.mapper = mapper

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, key):
        index, seed = key
        for attempt in range(len(self)):
            state = (np.random.get_state(), torch.get_rng_state(), random.getstate())
            try:  # the CPU generators only: CUDA's belongs to the training step
                np.random.seed(seed % 2**32)
                torch.default_generator.manual_seed(seed)
                random.seed(seed)
                out = self.mapper(self.dicts[(index + attempt) % len(self)])
            finally:
                np.random.set_state(state[0])
                torch.set_rng_state(state[1])
                random.setstate(state[2])
            if out is not None:
                return out
            if attempt == 0:
                logger.warning(f"the mapper dropped training image {index}: using the next one")
        raise RuntimeError("the mapper dropped every training image")


def build_resumable_train_loader(
    dicts: Sequence[Dict],
    mapper,
    total_batch_size: int,
    *,
    seed: int,
    start_iter: int = 0,
    rank: int = 0,
    world_size: int = 1,
    aspect_ratio_grouping: bool = True,
    num_workers: int = 0,
    repeat_factors: Optional[Sequence[float]] = None,
    batch_key: str = "SOLVER.IMS_PER_BATCH",
) -> DataLoader:
    """An infinite loader of this process's training batches (lists of mapped dicts) from
    iteration `start_iter` on; see the module docstring."""
    if total_batch_size < 1 or total_batch_size % world_size:
        raise ValueError(
            f"{batch_key}={total_batch_size} is invalid for {world_size} processes: expected a "
            "positive multiple of the process count"
        )
    groups = None
    if aspect_ratio_grouping:
        groups = [0 if d["width"] > d["height"] else 1 for d in dicts]
    sampler = GroupedBatchSampler(
        groups,
        total_batch_size // world_size,
        size=len(dicts),
        seed=seed,
        rank=rank,
        world_size=world_size,
        start_iter=start_iter,
        repeat_factors=repeat_factors,
    )
    return batched_loader(
        SeededMapDataset(dicts, mapper), sampler, num_workers, pin_memory=False, seed=sampler.seed
    )
