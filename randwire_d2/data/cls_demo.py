"""Embedded classification data: one shape per image on clutter (the detection demo's classes,
so a classifier pretrained here transfers), in ImageFolder layout, the same on every machine.

    python -m randwire_d2.data.cls_demo datasets/randwire_demo_cls

`generate_jpeg_folder` writes photo-like ImageNet-sized JPEGs instead, for timing the input
pipelines (benchmarks/loader.py).
"""

import argparse
import json
import logging
import os
import shutil
from typing import Dict, Sequence, Tuple

import cv2
import numpy as np

from .detection_demo import SPLIT_IDS, check_splits
from .detection_demo import data_root as datasets_root
from .shapes import CLASSES, render_background, render_object

__all__ = ["DEMO_CLS_ROOT", "DEMO_CLS_PARAMS", "render_classification_image"]
__all__ += ["generate_classification_demo", "ensure_classification_demo"]
__all__ += ["render_photo", "generate_jpeg_folder"]

_VERSION = 1
# PRETRAIN.DATA_ROOT and generation parameters of configs/demo/randwire_cls_demo.yaml.
DEMO_CLS_ROOT = "datasets/randwire_demo_cls"
DEMO_CLS_PARAMS = dict(
    images_per_class={"train": 400, "val": 60}, image_size=64, object_scale=(0.4, 0.8), seed=0
)


def render_classification_image(
    rng: np.random.Generator, class_index: int, image_size: int, object_scale
) -> np.ndarray:
    """An image_size^2 RGB uint8 image of one object of class `class_index` on clutter."""
    image = render_background(image_size, image_size, rng)
    side = rng.uniform(*object_scale) * image_size
    aspect = np.exp(rng.uniform(np.log(0.75), np.log(4 / 3)))
    w, h = min(side * np.sqrt(aspect), image_size - 1), min(side / np.sqrt(aspect), image_size - 1)
    x0, y0 = rng.uniform(0, image_size - w), rng.uniform(0, image_size - h)
    render_object(image, class_index, (x0, y0, x0 + w, y0 + h), rng)
    return image


def generate_classification_demo(
    folder: str,
    images_per_class: Dict[str, int],
    image_size: int = 64,
    object_scale: Tuple[float, float] = (0.4, 0.8),
    seed: int = 0,
) -> str:
    """Write `<folder>/<split>/<class>/<i>.png` (only the missing ones when `folder` holds
    these params) and `<folder>/params.json`; returns `folder`. Image i of class c is drawn from
    `default_rng([seed, split id, c, i])` alone."""
    check_splits(images_per_class)
    if image_size < 16:
        raise ValueError(f"image_size={image_size!r} is invalid: expected >= 16")
    if not 0.1 <= object_scale[0] <= object_scale[1] <= 0.95:
        raise ValueError(
            f"object_scale={object_scale!r} is invalid: expected 0.1 <= min <= max <= 0.95"
        )
    params = dict(
        version=_VERSION,
        classes=CLASSES,
        images_per_class=dict(images_per_class),
        image_size=image_size,
        object_scale=list(object_scale),
        seed=seed,
    )
    meta = os.path.join(folder, "params.json")
    current = False
    if os.path.exists(meta):
        with open(meta) as f:
            current = json.load(f) == params
    written = 0
    for split, count in images_per_class.items():
        if not current:
            shutil.rmtree(os.path.join(folder, split), ignore_errors=True)  # no stale images
        for c, name in enumerate(CLASSES):
            os.makedirs(os.path.join(folder, split, name), exist_ok=True)
            for i in range(count):
                path = os.path.join(folder, split, name, f"{i:05d}.png")
                if current and os.path.exists(path):
                    continue
                rng = np.random.default_rng([seed, SPLIT_IDS[split], c, i])
                image = render_classification_image(rng, c, image_size, object_scale)
                cv2.imwrite(path, image[:, :, ::-1])
                written += 1
    if current and written:
        logging.getLogger(__name__).warning(f"{folder}: repaired {written} missing images")
    if not current:  # written last: a folder without it (interrupted) is generated again
        with open(meta, "w") as f:
            json.dump(params, f, indent=1)
    return folder


def ensure_classification_demo(data_root: str) -> bool:
    """Generate (or repair) the demo data when `data_root` is its folder and return True; False
    for other data. Main process only: concurrent generators would clash."""
    roots = [DEMO_CLS_ROOT, os.path.join(datasets_root(), "randwire_demo_cls")]
    if os.path.abspath(os.path.expanduser(data_root)) not in map(os.path.abspath, roots):
        return False
    generate_classification_demo(data_root, **DEMO_CLS_PARAMS)
    return True


def render_photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A height x width RGB uint8 image with a photo's statistics for a JPEG coder (500x375 at
    quality 90: about 90 KB, near ImageNet's 110 KB)."""
    grid = rng.integers(2, 6, size=2)
    colours = rng.uniform(0, 255, (grid[0], grid[1], 3)).astype(np.float32)
    image = cv2.resize(colours, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(4, 10)):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        x, y = int(rng.uniform(0, width)), int(rng.uniform(0, height))
        kind = rng.integers(3)
        if kind == 0:
            axes = (int(rng.uniform(4, width / 3)), int(rng.uniform(4, height / 3)))
            angle = float(rng.uniform(0, 180))
            cv2.ellipse(image, (x, y), axes, angle, 0, 360, colour, -1, cv2.LINE_AA)
        elif kind == 1:
            corner = (int(x + rng.uniform(4, width / 2)), int(y + rng.uniform(4, height / 2)))
            cv2.rectangle(image, (x, y), corner, colour, -1, cv2.LINE_AA)
        else:
            end = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
            cv2.line(image, (x, y), end, colour, int(rng.integers(2, 12)), cv2.LINE_AA)
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.8, 2.0))
    grain = rng.normal(0, 1, (height // 4 + 1, width // 4 + 1)).astype(np.float32)
    grain = cv2.resize(grain, (width, height), interpolation=cv2.INTER_LINEAR)
    image += rng.uniform(8, 24) * grain[:, :, None]
    image += rng.normal(0, rng.uniform(8, 24), (height, width, 3)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def generate_jpeg_folder(
    root: str,
    num_classes: int,
    images_per_class: int,
    size: Tuple[int, int] = (500, 375),
    quality: int = 90,
    seed: int = 0,
    splits: Sequence[str] = ("train",),
) -> str:
    """Write `render_photo` JPEGs of `size` (width, height) as `<root>/<split>/class_<c>/<i>.jpg`;
    returns `root`. Existing files are kept; new ones appear whole (written aside, renamed)."""
    check_splits(splits)
    if num_classes < 1 or images_per_class < 1:
        raise ValueError(
            f"num_classes={num_classes!r}, images_per_class={images_per_class!r} are invalid: "
            "expected both >= 1"
        )
    width, height = size
    if min(width, height) < 8:
        raise ValueError(f"size={tuple(size)!r} is invalid: expected (width, height), both >= 8")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality={quality!r} is invalid: expected 1..100")
    digits = len(str(num_classes - 1))
    for split in splits:
        for c in range(num_classes):
            folder = os.path.join(root, split, f"class_{c:0{digits}d}")
            os.makedirs(folder, exist_ok=True)
            for i in range(images_per_class):
                path = os.path.join(folder, f"{i:05d}.jpg")
                if os.path.exists(path):
                    continue
                rng = np.random.default_rng([seed, SPLIT_IDS[split], c, i])
                image = render_photo(rng, width, height)
                ok, data = cv2.imencode(
                    ".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality]
                )
                if not ok:
                    raise RuntimeError(f"OpenCV could not encode {path!r} as JPEG")
                with open(path + ".tmp", "wb") as f:
                    f.write(data.tobytes())
                os.replace(path + ".tmp", path)
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the embedded classification demo data.")
    parser.add_argument("folder", nargs="?", default=DEMO_CLS_ROOT)
    args = parser.parse_args(argv)
    print(generate_classification_demo(args.folder, **DEMO_CLS_PARAMS))


if __name__ == "__main__":
    main()
