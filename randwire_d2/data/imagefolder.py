"""ImageFolder data for classification pretraining (ImageNet's layout: root/<split>/<class>/*).

Each epoch's order is a permutation keyed on (seed, epoch) and each augmentation on its own draw
seed, so a resumed run sees exactly the uninterrupted run's images and crops, for any number of
processes.
"""

import io
import logging
import math
import random
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data.build import trivial_batch_collator
from PIL import Image, ImageOps
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms.functional import pil_to_tensor

from ..trust import read_bounded

__all__ = ["MAX_IMAGE_PIXELS", "read_rgb_image", "scan_image_folder", "RandomResizedCropFlip"]
__all__ += ["ResizeCenterCrop", "ImageFolderDataset", "EpochBatchSampler", "ShardBatchSampler"]

# Larger images are refused before decoding: PIL's decompression-bomb limit (~9459 x 9459).
MAX_IMAGE_PIXELS = 89_478_485
# PIL modes of 16-bit (and 32-bit integer) grayscale, as PNG and TIFF files open.
_WIDE_GRAY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def read_rgb_image(path: str) -> Image.Image:
    """An image file as 8-bit RGB, EXIF orientation applied; 16-bit grayscale is scaled v >> 8
    (PIL's convert("RGB") would clip it to white). Every error is a ValueError naming the file."""
    try:
        with warnings.catch_warnings():  # PIL warns above its limit; ours refuses there
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(read_bounded(path, "image", "image")))
    except Image.DecompressionBombError as e:  # over twice PIL's limit: refused by PIL itself
        raise ValueError(f"image {path!r} is refused by PIL: {e} Downscale it first") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for broken files
        raise _unreadable(path, e) from e
    with image:
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ValueError(
                f"image {path!r} is {width}x{height} ({width * height:,} pixels), more than "
                f"MAX_IMAGE_PIXELS={MAX_IMAGE_PIXELS:,} allows: downscale it first"
            )
        try:
            ImageOps.exif_transpose(image, in_place=True)  # decodes the image
        except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for broken files
            raise _unreadable(path, e) from e
        if image.mode == "F":
            raise ValueError(
                f"image {path!r} has 32-bit float pixels (PIL mode F): expected 8-bit or 16-bit "
                "values"
            )
        if image.mode not in _WIDE_GRAY_MODES:
            return image.convert("RGB")
        values = np.asarray(image)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise ValueError(
                f"image {path!r} has 32-bit integer pixels in [{low}, {high}] (PIL mode "
                f"{image.mode}): expected 8-bit or 16-bit values (0..65535)"
            )
        return Image.fromarray((values >> 8).astype(np.uint8)).convert("RGB")


def _unreadable(path: str, error: Exception) -> ValueError:
    return ValueError(f"cannot read image {path!r}: {type(error).__name__}: {error}")


def scan_image_folder(folder: str) -> Tuple[List[str], List[Tuple[str, int]]]:
    """(class names in sorted order, [(image path, class index)]) of an ImageFolder split."""
    classes, class_to_idx = find_classes(folder)
    samples = make_dataset(folder, class_to_idx, extensions=IMG_EXTENSIONS)
    if not samples:
        raise ValueError(f"{folder!r} holds no images with extensions {IMG_EXTENSIONS}")
    return classes, samples


class RandomResizedCropFlip:
    """Inception-style crop (area in `scale`, aspect ratio in `ratio`) resized to `size`, then a
    horizontal flip with probability 1/2; all drawn from the given seed."""

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        if size < 1:
            raise ValueError(f"TRAIN_CROP={size!r} is invalid: expected a positive integer")
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(
                f"TRAIN_CROP_SCALE={list(scale)!r} is invalid: expected 0 < lo <= hi <= 1"
            )
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)

    def crop_box(self, width: int, height: int, rnd: random.Random) -> Tuple[int, int, int, int]:
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rnd.uniform(*self.scale)
            aspect = math.exp(rnd.uniform(*log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                x0, y0 = rnd.randint(0, width - w), rnd.randint(0, height - h)
                return x0, y0, x0 + w, y0 + h
        # Fallback: the largest central crop whose aspect ratio lies in `ratio`.
        aspect = min(max(width / height, self.ratio[0]), self.ratio[1])
        w, h = (
            (width, int(round(width / aspect)))
            if width / height < aspect
            else (int(round(height * aspect)), height)
        )
        x0, y0 = (width - w) // 2, (height - h) // 2
        return x0, y0, x0 + w, y0 + h

    def draw(self, width: int, height: int, seed: int) -> Tuple[Tuple[int, int, int, int], bool]:
        """(crop box (x0, y0, x1, y1), flip) of a width x height image for draw seed `seed`."""
        rnd = random.Random(seed)
        box = self.crop_box(width, height, rnd)
        return box, rnd.random() < 0.5

    def __call__(self, image: Image.Image, seed: int) -> Image.Image:
        box, flip = self.draw(image.width, image.height, seed)
        out = image.resize((self.size, self.size), Image.BILINEAR, box=box)
        return out.transpose(Image.FLIP_LEFT_RIGHT) if flip else out


class ResizeCenterCrop:
    """Resize the shorter side to size / crop_ratio, take the central size^2 crop, in one pass."""

    def __init__(self, size: int, crop_ratio: float = 0.875):
        if size < 1:
            raise ValueError(f"TEST_CROPS entry {size!r} is invalid: expected a positive integer")
        if not 0.0 < crop_ratio <= 1.0:
            raise ValueError(f"TEST_CROP_RATIO={crop_ratio!r} is invalid: expected (0, 1]")
        self.size, self.crop_ratio = size, crop_ratio

    def __call__(self, image: Image.Image, seed: Optional[int] = None) -> Image.Image:
        side = min(image.width, image.height) * self.crop_ratio
        x0, y0 = (image.width - side) / 2, (image.height - side) / 2
        return image.resize(
            (self.size, self.size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side)
        )


class ImageFolderDataset(Dataset):
    """dataset[(index, seed)] -> dict(image=CHW uint8 tensor in `image_format`, label=int).

    An unreadable image is logged and replaced by the next readable one (same seed); more than
    `max_bad_images` (default max(10, 1%)) bad files in one instance raise a RuntimeError.
    """

    def __init__(
        self,
        samples: Sequence[Tuple[str, int]],
        transform,
        image_format: str = "RGB",
        max_bad_images: Optional[int] = None,
    ):
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT={image_format!r} is invalid: expected 'RGB' or 'BGR'")
        self.samples = list(samples)
        self.transform = transform
        self.image_format = image_format
        self.max_bad_images = (
            max(10, len(self.samples) // 100) if max_bad_images is None else max_bad_images
        )
        self.bad_images: Dict[str, str] = {}  # path -> error

    def __len__(self):
        return len(self.samples)

    def _open(self, path: str):
        """The image at `path`; a ValueError naming the file when it is unreadable."""
        return read_rgb_image(path)

    def _transform(self, image, seed: Optional[int]):
        return self.transform(image, seed)

    def _read(self, path: str, seed: Optional[int]):
        if path in self.bad_images:
            return None
        try:
            image = self._open(path)
        except ValueError as e:  # names the file: broken, too large, or of float pixels
            self.bad_images[path] = str(e)
        else:
            return self._transform(image, seed)
        logging.getLogger(__name__).warning(
            f"skipping an image: {self.bad_images[path]}; bad image "
            f"{len(self.bad_images)} of at most max_bad_images={self.max_bad_images}"
        )
        if len(self.bad_images) > self.max_bad_images or len(self.bad_images) == len(self):
            raise RuntimeError(
                f"{len(self.bad_images)} of {len(self)} images are unreadable, more than "
                f"max_bad_images={self.max_bad_images} allows; last: {self.bad_images[path]}"
            )
        return None

    def _first_readable(self, index: int, seed: Optional[int]) -> Tuple[int, object]:
        """(index, transformed image) of the first readable image from `index` on."""
        image = self._read(self.samples[index][0], seed)
        while image is None:
            index = (index + 1) % len(self)
            image = self._read(self.samples[index][0], seed)
        return index, image

    def __getitem__(self, key) -> Dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        index, image = self._first_readable(index, seed)
        image = pil_to_tensor(image)
        if self.image_format == "BGR":
            image = image.flip(0)
        return {"image": image, "label": self.samples[index][1]}


def epoch_order(
    seed: int, epoch: int, size: int, repeat_factors: Optional[np.ndarray] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """(item index, augmentation seed) arrays of epoch `epoch`: a permutation keyed on (seed,
    epoch), items repeated by `repeat_factors` rounded stochastically (as Detectron2's
    RepeatFactorTrainingSampler)."""
    rng = np.random.default_rng([seed, epoch])
    indices = np.arange(size)
    if repeat_factors is not None:
        whole = np.floor(repeat_factors)
        counts = whole + (rng.random(size) < repeat_factors - whole)
        indices = np.repeat(indices, counts.astype(np.int64))
    order = indices[rng.permutation(len(indices))]
    return order, rng.integers(2**62, size=len(order))


class EpochBatchSampler(Sampler):
    """This rank's slice of each global batch from `start_iter` to `max_iter`, as lists of
    (image index, augmentation seed); epoch e is `epoch_order(seed, e)`, remainder dropped."""

    def __init__(
        self,
        dataset_size: int,
        global_batch: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_iter: int = 0,
        max_iter: int,
    ):
        if global_batch % world_size:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH={global_batch} is invalid for {world_size} processes: "
                "expected a multiple of the process count"
            )
        if not 0 < global_batch <= dataset_size:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH={global_batch} is invalid: expected 1..{dataset_size} "
                "(the training set size)"
            )
        self.dataset_size, self.global_batch, self.seed = dataset_size, global_batch, seed
        self.batch = global_batch // world_size
        self.offset = rank * self.batch
        self.iters_per_epoch = dataset_size // global_batch
        self.start_iter, self.max_iter = start_iter, max_iter
        self._epoch, self._order = None, None

    def batch_at(self, iteration: int) -> List[Tuple[int, int]]:
        epoch, step = divmod(iteration, self.iters_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, epoch_order(self.seed, epoch, self.dataset_size)
        indices, seeds = self._order
        lo = step * self.global_batch + self.offset
        return [(int(indices[k]), int(seeds[k])) for k in range(lo, lo + self.batch)]

    def __iter__(self):
        for iteration in range(self.start_iter, self.max_iter):
            yield self.batch_at(iteration)

    def __len__(self):
        return max(0, self.max_iter - self.start_iter)


class ShardBatchSampler(BatchSampler):
    """Batches of this rank's contiguous shard of [0, dataset_size): each item once overall."""

    def __init__(self, dataset_size: int, batch_size: int, rank: int = 0, world_size: int = 1):
        shard = math.ceil(dataset_size / world_size)
        lo, hi = min(rank * shard, dataset_size), min((rank + 1) * shard, dataset_size)
        super().__init__(range(lo, hi), max(1, batch_size), drop_last=False)


def batched_loader(
    dataset, batch_sampler, num_workers: int, pin_memory: bool, seed: int = 0
) -> DataLoader:
    """A DataLoader of `batch_sampler`'s batches of `dataset` as lists (no collation)."""
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        # Its own generator: starting the iterator must not draw from the global one, which
        # each training step seeds (StepSeed) for an exact resume.
        generator=torch.Generator().manual_seed(seed),
    )
