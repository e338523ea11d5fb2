"""Embedded detection data: shapes on cluttered backgrounds, in COCO format (boxes, RLE masks),
the same on every machine. `register_detection_demo(root)` registers the splits; their files are
generated when first loaded (or when the parameters change), or by

    python -m randwire_d2.data.detection_demo [ROOT]    # ROOT/randwire_demo_det/...
"""

import argparse
import json
import os
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .shapes import CLASSES, render_background, render_object

__all__ = ["DEMO_DET_NAMES", "DEMO_DET_PARAMS", "data_root", "demo_det_folder"]
__all__ += ["generate_detection_demo", "ensure_detection_demo", "register_detection_demo"]

# Dataset name -> split.
DEMO_DET_NAMES = {"randwire_demo_det_train": "train", "randwire_demo_det_val": "val"}
SPLIT_IDS = {"train": 0, "val": 1}  # the split's entry in an image's random seed
# Generation parameters of the registered demo data (changing them regenerates the files).
DEMO_DET_PARAMS = dict(
    num_images={"train": 1200, "val": 200},
    image_size=(160, 160),
    objects_per_image=(2, 5),
    object_size=(16, 64),
    seed=0,
)
_VERSION = 1


def data_root(root: Optional[str] = None) -> str:
    """`root`, else $DETECTRON2_DATASETS, else ./datasets (Detectron2's convention)."""
    return os.path.expanduser(root or os.getenv("DETECTRON2_DATASETS", "datasets"))


def demo_det_folder(root: Optional[str] = None) -> str:
    return os.path.join(data_root(root), "randwire_demo_det")


def check_splits(splits) -> None:
    bad = [s for s in splits if s not in SPLIT_IDS]
    if bad:
        raise ValueError(f"splits {bad} are unknown: expected a subset of {sorted(SPLIT_IDS)}")


def _place_boxes(rng, count, image_size, object_size) -> List[Tuple[float, float, float, float]]:
    """Up to `count` non-overlapping boxes with sides in `object_size`, aspect ratio 0.6..1.6."""
    height, width = image_size
    lo, hi = object_size
    boxes = []
    for _ in range(count * 20):
        if len(boxes) == count:
            break
        side = np.exp(rng.uniform(np.log(lo), np.log(hi)))
        aspect = np.exp(rng.uniform(np.log(0.6), np.log(1.6)))
        w = min(side * np.sqrt(aspect), width - 2)
        h = min(side / np.sqrt(aspect), height - 2)
        x0 = rng.uniform(1, width - w - 1)
        y0 = rng.uniform(1, height - h - 1)
        box = (x0, y0, x0 + w, y0 + h)
        # A 2-pixel gap keeps every box exact: no object hides part of another.
        if all(
            box[0] > b[2] + 2 or b[0] > box[2] + 2 or box[1] > b[3] + 2 or b[1] > box[3] + 2
            for b in boxes
        ):
            boxes.append(box)
    return boxes


def render_detection_image(rng, image_size, objects_per_image, object_size):
    """(HxWx3 uint8 RGB image, [(class index, HxW bool mask)]) of one demo image."""
    height, width = image_size
    image = render_background(height, width, rng)
    count = int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))
    objects = []
    for box in _place_boxes(rng, count, image_size, object_size):
        class_index = int(rng.integers(0, len(CLASSES)))
        mask = render_object(image, class_index, box, rng)
        if mask is not None:
            objects.append((class_index, mask))
    return image, objects


def _annotation(mask: np.ndarray, class_index: int, image_id: int, ann_id: int) -> Dict:
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": class_index + 1,
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": int(mask.sum()),
        "segmentation": rle,
        "iscrowd": 0,
    }


def generate_detection_demo(
    folder: str,
    num_images: Dict[str, int],
    image_size: Tuple[int, int] = (160, 160),
    objects_per_image: Tuple[int, int] = (2, 5),
    object_size: Tuple[int, int] = (16, 64),
    seed: int = 0,
) -> Dict[str, str]:
    """Write `<folder>/<split>/*.jpg` and `<folder>/annotations/<split>.json`; returns {split:
    json path}. `image_size` is (height, width); image i is drawn from default_rng([seed, split
    id, i])."""
    check_splits(num_images)
    if min(image_size) < 32:
        raise ValueError(f"image_size={image_size!r} is invalid: expected sides >= 32")
    if not 1 <= objects_per_image[0] <= objects_per_image[1]:
        raise ValueError(f"objects_per_image={objects_per_image!r}: expected 1 <= min <= max")
    if not 4 <= object_size[0] <= object_size[1] < min(image_size):
        raise ValueError(
            f"object_size={object_size!r} is invalid: expected 4 <= min <= max < {min(image_size)}"
        )
    params = _params(image_size, objects_per_image, object_size, seed)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    os.makedirs(os.path.join(folder, "annotations"), exist_ok=True)
    height, width = image_size
    paths = {}
    for split, count in num_images.items():
        os.makedirs(os.path.join(folder, split), exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            rng = np.random.default_rng([seed, SPLIT_IDS[split], i])
            image, objects = render_detection_image(rng, image_size, objects_per_image, object_size)
            file_name = f"{i:06d}.jpg"
            cv2.imwrite(
                os.path.join(folder, split, file_name),
                image[:, :, ::-1],
                [cv2.IMWRITE_JPEG_QUALITY, 95],
            )
            images.append(dict(id=i + 1, file_name=file_name, height=height, width=width))
            for class_index, mask in objects:
                annotations.append(_annotation(mask, class_index, i + 1, len(annotations) + 1))
        coco = {
            "info": {"description": "randwire_d2 detection demo", **params, "split": split},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        path = os.path.join(folder, "annotations", f"{split}.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(coco, f)
        os.replace(tmp, path)  # the json appears last: its presence means the split is complete
        paths[split] = path
    return paths


def _params(image_size, objects_per_image, object_size, seed) -> Dict:
    """What a split's "info" records of its generation (a change regenerates the split)."""
    return dict(
        version=_VERSION,
        image_size=list(image_size),
        objects_per_image=list(objects_per_image),
        object_size=list(object_size),
        seed=seed,
    )


def ensure_detection_demo(root: Optional[str] = None, split: str = "train") -> str:
    """Generate the registered demo split under `root` unless it is there; its json path."""
    folder = demo_det_folder(root)
    path = os.path.join(folder, "annotations", f"{split}.json")
    count = DEMO_DET_PARAMS["num_images"][split]
    params = {k: v for k, v in DEMO_DET_PARAMS.items() if k != "num_images"}
    expected = _params(**params)
    if os.path.isfile(path):
        with open(path) as f:
            coco = json.load(f)
        info = coco.get("info", {})
        if {k: info.get(k) for k in expected} == expected and len(coco["images"]) == count:
            return path
    generate_detection_demo(folder, {split: count}, **params)
    return path


def register_detection_demo(root: Optional[str] = None) -> None:
    """Register "randwire_demo_det_train"/"_val" under `root` (see `data_root`); idempotent."""
    folder = demo_det_folder(root)
    for name, split in DEMO_DET_NAMES.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)

        def load(name=name, split=split):
            json_file = ensure_detection_demo(root, split)
            return load_coco_json(json_file, os.path.join(folder, split), name)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            thing_classes=list(CLASSES),
            json_file=os.path.join(folder, "annotations", f"{split}.json"),
            image_root=os.path.join(folder, split),
            evaluator_type="coco",
            generated_on_demand=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write the embedded detection demo data.")
    parser.add_argument("root", nargs="?", default=None, help="data root (default: see data_root)")
    args = parser.parse_args()
    for split in DEMO_DET_PARAMS["num_images"]:
        print(f"{split}: {ensure_detection_demo(args.root, split)}")
