"""The classification loaders: training batches of an iteration range (augmented on the CPU
workers, or decoded and augmented on the model's device) and one test pass over a shard."""

from typing import Optional

from torch.utils.data import DataLoader

from .batched_decode import decode_loader
from .imagefolder import (
    EpochBatchSampler,
    ImageFolderDataset,
    RandomResizedCropFlip,
    ResizeCenterCrop,
    ShardBatchSampler,
    batched_loader,
)

__all__ = ["build_cls_train_loader", "build_cls_test_loader"]


def build_cls_train_loader(
    samples,
    *,
    crop: int,
    crop_scale,
    global_batch: int,
    seed: int,
    start_iter: int,
    max_iter: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 4,
    image_format: str = "RGB",
    pin_memory: bool = False,
    decode_device: Optional[str] = None,
):
    """Training batches (list[dict(image, label)]) of iterations start_iter..max_iter - 1; with
    `decode_device`, decoded and augmented there with the same draws, as {"images": uint8
    [B, 3, crop, crop], "labels": int64 [B]}."""
    sampler = EpochBatchSampler(
        len(samples),
        global_batch,
        seed=seed,
        rank=rank,
        world_size=world_size,
        start_iter=start_iter,
        max_iter=max_iter,
    )
    if decode_device is not None:
        # fmt: off
        return decode_loader(
            samples, sampler, crop=crop, crop_scale=crop_scale, image_format=image_format,
            device=decode_device, num_workers=num_workers,
        )
        # fmt: on
    dataset = ImageFolderDataset(samples, RandomResizedCropFlip(crop, crop_scale), image_format)
    return batched_loader(dataset, sampler, num_workers, pin_memory)


def build_cls_test_loader(
    samples,
    *,
    crop: int,
    crop_ratio: float,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 4,
    image_format: str = "RGB",
    pin_memory: bool = False,
) -> DataLoader:
    """One pass over this process's shard of `samples`, resized and center-cropped to `crop`."""
    dataset = ImageFolderDataset(samples, ResizeCenterCrop(crop, crop_ratio), image_format)
    sampler = ShardBatchSampler(len(dataset), batch_size, rank, world_size)
    return batched_loader(dataset, sampler, num_workers, pin_memory)
