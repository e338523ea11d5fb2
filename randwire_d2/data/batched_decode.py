"""Training batches decoded on the device (PRETRAIN.DECODE "cuda"): workers read JPEG bytes, the
main process decodes each batch with nvjpeg (torchvision's `decode_jpeg`) and crops, resizes and
flips it there, with the CPU path's order, crop boxes and flips (pixels differ only by rounding).

Only JPEGs whose header says 8-bit RGB or grayscale, no EXIF rotation, at most MAX_IMAGE_PIXELS,
and that end in the JPEG end marker take the device path; anything else is decoded in the worker
by the CPU path's code, and unreadable files are replaced as `ImageFolderDataset` does.
"""

import io
import logging
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.functional import pil_to_tensor

from ..trust import open_regular
from . import imagefolder
from .imagefolder import (
    ImageFolderDataset,
    RandomResizedCropFlip,
    batched_loader,
    read_rgb_image,
)

__all__ = ["resize_uint8", "ImageBytesDataset", "BatchDecoder"]
__all__ += ["DecodeLoader", "decode_loader", "MAX_JPEG_BYTES"]

logger = logging.getLogger(__name__)

# torchvision 0.29 warns on every call that its codecs move to TorchCodec: silenced here only.
_CODEC_NOTE = "The image decoding and encoding capabilities of TorchVision are deprecated"
_JPEG_END = b"\xff\xd9"
# A JPEG of at most MAX_IMAGE_PIXELS is smaller than its RGB pixels; a larger file goes to the
# CPU path, which refuses it by its pixel count.
MAX_JPEG_BYTES = 3 * imagefolder.MAX_IMAGE_PIXELS
# EXIF orientations that ImageOps.exif_transpose applies (1 and missing: none).
_ROTATED = range(2, 9)


def _jpeg_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) when the device path decodes `data` as the CPU path would, else None."""
    if not data.endswith(_JPEG_END):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                ok = (
                    image.format == "JPEG"
                    and image.mode in ("RGB", "L")
                    and image.getexif().get(0x0112, 1) not in _ROTATED
                    and image.width * image.height <= imagefolder.MAX_IMAGE_PIXELS
                )
                return image.size if ok else None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None  # the CPU path's read_rgb_image says why


def _decode_jpeg(data, device):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_CODEC_NOTE, category=DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def resize_uint8(image: torch.Tensor, size: int, via_float: bool) -> torch.Tensor:
    """A CHW uint8 image resized to size x size as PIL does (antialiased bilinear); `via_float`
    resizes in float32 and rounds (CUDA's antialiased kernels are floating-point only)."""
    kwargs = dict(size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if not via_float:
        return F.interpolate(image[None], **kwargs)[0]
    out = F.interpolate(image[None].float(), **kwargs)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)


class ImageBytesDataset(ImageFolderDataset):
    """dataset[(index, seed)] -> dict(data=JPEG bytes as uint8 tensor, box, flip, label, path)
    for a JPEG the device decodes, else dict(image=CHW uint8 RGB crop, label)."""

    def __init__(
        self,
        samples: Sequence[Tuple[str, int]],
        transform: RandomResizedCropFlip,
        max_bad_images: Optional[int] = None,
    ):
        super().__init__(samples, transform, "RGB", max_bad_images)

    def _open(self, path: str):
        try:
            with open_regular(path, "image", "image") as f:  # a JPEG holds less than its pixels
                data = f.read(MAX_JPEG_BYTES + 1)
        except (OSError, ValueError):
            data = b""  # read_rgb_image names the error
        # A larger file is never held whole: the CPU path reads it lazily.
        size = _jpeg_size(data) if len(data) <= MAX_JPEG_BYTES else None
        if size is None:
            return read_rgb_image(path)
        return data, size

    def _transform(self, image, seed: Optional[int]) -> Dict:
        if isinstance(image, Image.Image):
            return {"image": pil_to_tensor(self.transform(image, seed))}
        data, (width, height) = image
        box, flip = self.transform.draw(width, height, seed)
        data = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return {"data": data, "box": box, "flip": flip}

    def __getitem__(self, key) -> Dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        index, item = self._first_readable(index, seed)
        path, label = self.samples[index]
        return dict(item, label=label, path=path) if "data" in item else dict(item, label=label)


def _check_device(device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"device {device!r} is invalid: expected 'cpu' or 'cuda[:N]' ({e})"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r} is invalid: expected 'cpu' or 'cuda[:N]'")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"PRETRAIN.DECODE='cuda' decodes the training images on {str(device)!r}, but CUDA "
                f"is not available (torch {torch.__version__}): set PRETRAIN.DECODE 'cpu' or run "
                "on a machine with a CUDA GPU"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r} is invalid: expected cuda:0..cuda:"
                f"{torch.cuda.device_count() - 1}"
            )
    return device


class BatchDecoder:
    """Items of ImageBytesDataset -> {"images": uint8 [B, 3, size, size], "labels": int64 [B]},
    both on `device`, channels in `image_format`.

    JPEGs are decoded as one batch; when that fails, one by one, falling back to PIL (warned once
    per file) for an image the device refuses. Then each is cropped, resized and flipped.
    """

    def __init__(self, size: int, image_format: str = "RGB", device="cuda"):
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT={image_format!r} is invalid: expected 'RGB' or 'BGR'")
        self.size, self.image_format = size, image_format
        self.device = _check_device(device)
        self.warned = set()  # files the device refused

    def _decode_one(self, item: Dict) -> torch.Tensor:
        try:
            return _decode_jpeg(item["data"], self.device)
        except RuntimeError as e:
            error = e
        path = item["path"]
        if path not in self.warned:
            self.warned.add(path)
            logger.warning(
                f"{self.device.type} decode_jpeg refuses image {path!r} "
                f"({str(error).splitlines()[-1]}): decoding it with PIL on the CPU"
            )
        try:
            image = read_rgb_image(path)
        except ValueError as e:  # the worker read its header; the data is broken
            raise RuntimeError(
                f"image {path!r} passed the worker's header check but neither decode_jpeg on "
                f"{self.device} nor PIL decodes it: {e}"
            ) from None
        return pil_to_tensor(image).to(self.device)

    def _decode(self, items: List[Dict]) -> List[torch.Tensor]:
        if not items:
            return []
        try:
            return _decode_jpeg([item["data"] for item in items], self.device)
        except RuntimeError:  # the batched call returns nothing when one image fails
            return [self._decode_one(item) for item in items]

    def _crop_resize_flip(self, image: torch.Tensor, box, flip: bool) -> torch.Tensor:
        x0, y0, x1, y1 = box
        out = resize_uint8(image[:, y0:y1, x0:x1], self.size, via_float=image.device.type != "cpu")
        return out.flip(-1) if flip else out

    def __call__(self, items: List[Dict]) -> Dict[str, torch.Tensor]:
        images = torch.empty(
            (len(items), 3, self.size, self.size), dtype=torch.uint8, device=self.device
        )
        jpegs = [k for k, item in enumerate(items) if "data" in item]
        for k, image in zip(jpegs, self._decode([items[k] for k in jpegs])):
            images[k] = self._crop_resize_flip(image, items[k]["box"], items[k]["flip"])
        for k, item in enumerate(items):
            if "image" in item:  # decoded and augmented in the worker; pinned when on CUDA
                images[k].copy_(item["image"], non_blocking=True)
        labels = torch.tensor([item["label"] for item in items], dtype=torch.int64)
        if self.device.type == "cuda":
            labels = labels.pin_memory().to(self.device, non_blocking=True)
        if self.image_format == "BGR":
            images = images.flip(1)
        return {"images": images, "labels": labels}


class DecodeLoader:
    """Iterating yields BatchDecoder(batch) for each batch of items that `loader` yields."""

    def __init__(self, loader, decoder: BatchDecoder):
        self.loader, self.decoder = loader, decoder

    def __iter__(self):
        for items in self.loader:
            yield self.decoder(items)

    def __len__(self):
        return len(self.loader)


def decode_loader(
    samples, sampler, *, crop: int, crop_scale, image_format: str, device, num_workers: int
) -> DecodeLoader:
    """The batches of `sampler` over `samples`, read by workers and decoded on `device`."""
    decoder = BatchDecoder(crop, image_format, device)
    dataset = ImageBytesDataset(samples, RandomResizedCropFlip(crop, crop_scale))
    pin_memory = decoder.device.type == "cuda"
    return DecodeLoader(batched_loader(dataset, sampler, num_workers, pin_memory), decoder)
