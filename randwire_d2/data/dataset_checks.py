"""Checks that name bad data (ImageFolder splits, COCO-format datasets) at setup, not at a
run's first evaluation."""

import functools
import json
import logging
import math
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import BoxMode
from detectron2.utils import comm

from ..run_settings import RunConfig
from ..trust import read_bounded
from .imagefolder import MAX_IMAGE_PIXELS, scan_image_folder

__all__ = [
    "scan_split",
    "check_image_folder",
    "DatasetNotFoundError",
    "register_user_datasets",
    "check_coco_json",
    "check_dataset_dicts",
    "check_datasets_on_disk",
    "load_dataset",
    "prepare_datasets",
    "check_num_classes",
    "check_mask_format",
    "check_datasets_fit_model",
    "dataset_categories",
    "check_categories",
    "check_instance_counts",
    "MAX_INSTANCES_PER_IMAGE",
]

_COCO_FIELDS = {
    "images": ("id", "file_name", "height", "width"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}
_COCO_KEYS = tuple(_COCO_FIELDS)
# Most annotations one training image may hold. COCO's densest image has 93 and LVIS's ~800;
# the matchers compare every anchor and proposal with every box, so 300,000 boxes on one image
# ask for ~15 GB at the first iteration. Raise it here if your data really is that dense.
MAX_INSTANCES_PER_IMAGE = 1000
# Per dataset, its non-crowd mask kinds ("polygon", "rle"): check_mask_format need not reload.
_MASK_KINDS: Dict[str, frozenset] = {}
logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=8)
def scan_split(folder: str):
    """scan_image_folder(folder), once per process (an ImageNet split takes minutes to list on a
    network disk); callers must not modify the lists."""
    return scan_image_folder(folder)


def _some(names) -> str:
    return f"{names[:10]}" + (f" ... ({len(names)} in all)" if len(names) > 10 else "")


def check_image_folder(data_root: str, splits: Sequence[str] = ("train", "val")) -> Dict:
    """{split: (class names, [(image path, class index)])} of PRETRAIN.DATA_ROOT; a
    FileNotFoundError when a split folder is missing, a ValueError when a split's class folders
    differ from those of the first split."""
    found = {}
    for split in splits:
        folder = os.path.join(data_root, split)
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"PRETRAIN.DATA_ROOT={data_root!r}: folder {os.path.abspath(folder)} does not "
                "exist; expected ImageFolder layout <root>/<split>/<class>/*.jpg for splits "
                f"{list(splits)}"
            )
        found[split] = scan_split(folder)
        first, classes = found[splits[0]][0], found[split][0]
        if classes != first:
            raise ValueError(
                f"PRETRAIN.DATA_ROOT={data_root!r}: the class folders of {split} differ from those "
                f"of {splits[0]}: only in {splits[0]}: {_some(sorted(set(first) - set(classes)))}, "
                f"only in {split}: {_some(sorted(set(classes) - set(first)))}; every split needs "
                "the same <class> folders"
            )
    return found


class DatasetNotFoundError(FileNotFoundError):
    """A registered dataset's annotation file or image folder is not on disk."""


def register_user_datasets(specs: Optional[Iterable[Sequence[str]]]) -> List[str]:
    """Register COCO-format datasets given as (name, json file, image folder), for DATASETS.TRAIN
    / DATASETS.TEST (evaluated with COCOEvaluator); their names."""
    names = []
    for spec in specs or []:
        if len(spec) != 3:
            raise ValueError(f"--dataset {list(spec)!r} is invalid: expected NAME JSON IMAGE_DIR")
        name, json_file, image_root = spec
        if name in DatasetCatalog.list():
            raise ValueError(
                f"--dataset name {name!r} is already registered: choose a name that is not one of "
                "Detectron2's builtin datasets or the demo datasets"
            )
        for path, what in ((json_file, "annotation file"), (image_root, "image folder")):
            if not os.path.exists(path):
                raise DatasetNotFoundError(
                    f"--dataset {name}: {what} {os.path.abspath(path)} does not exist"
                )
        check_coco_json(json_file, f"--dataset {name}")
        register_coco_instances(name, {}, json_file, image_root)
        names.append(name)
    return names


def check_datasets_on_disk(dataset_names: Iterable[str]) -> None:
    """Raise DatasetNotFoundError if a dataset's files are absent (on-demand ones skipped)."""
    for name in dataset_names:
        if name not in DatasetCatalog.list():
            raise KeyError(
                f"dataset {name!r} is not registered: known datasets are {DatasetCatalog.list()}"
            )
        meta = MetadataCatalog.get(name)
        if getattr(meta, "generated_on_demand", False):
            continue
        for attr in ("json_file", "image_root"):
            path = getattr(meta, attr, None)
            if path and not os.path.exists(path):
                root = os.getenv("DETECTRON2_DATASETS")
                where = (
                    f"DETECTRON2_DATASETS={root}"
                    if root
                    else "DETECTRON2_DATASETS is not set, so ./datasets is used"
                )
                raise DatasetNotFoundError(
                    f"dataset {name!r} is not on disk: {attr} {os.path.abspath(path)} does not "
                    f"exist ({where}). Set DETECTRON2_DATASETS to the folder that holds coco/ "
                    "(coco/annotations/instances_{train,val}2017.json, coco/{train,val}2017/), "
                    "or register your own data with --dataset NAME JSON IMAGE_DIR."
                )


def _json_type(value) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def check_coco_json(json_file: str, what: str) -> None:
    """A ValueError naming `what`, the file and the field unless `json_file` holds the lists
    and fields of _COCO_FIELDS (read once, with the dataset byte bound)."""
    text = read_bounded(json_file, f"{what} JSON", "dataset", text=True)
    where = f"{what}: {os.path.abspath(json_file)} is not a COCO instances file"
    expected = f"expected a JSON object with lists {list(_COCO_KEYS)} of objects"
    try:
        content = json.loads(text)
    except ValueError as e:  # JSONDecodeError
        raise ValueError(f"{where}: it is not valid JSON ({e}); {expected}") from None
    if not isinstance(content, dict):
        raise ValueError(f"{where}: it holds a JSON {_json_type(content)}; {expected}")
    for key, fields in _COCO_FIELDS.items():
        items = content.get(key)
        if key not in content:
            raise ValueError(f"{where}: it has no {key!r}; {expected}")
        if not isinstance(items, list):
            raise ValueError(f"{where}: {key!r} is a JSON {_json_type(items)}; {expected}")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ValueError(
                    f"{where}: {key}[{i}] is {str(item)[:80]}, not an object with {list(fields)}"
                )
            missing = [f for f in fields if f not in item]
            if missing:
                raise ValueError(
                    f"{where}: {key}[{i}] has no {missing}; each of {key} needs {list(fields)}"
                )


def load_dataset(name: str) -> List[Dict]:
    """DatasetCatalog.get(name), checked; a ValueError naming the json file when it is not COCO
    instances."""
    json_file = MetadataCatalog.get(name).get("json_file")
    try:
        dicts = DatasetCatalog.get(name)
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        if not json_file:
            raise
        check_coco_json(json_file, f"dataset {name!r}")
        raise ValueError(
            f"dataset {name!r}: {os.path.abspath(json_file)} cannot be loaded as COCO instances: "
            f"{type(e).__name__}: {e}"
        ) from e
    if json_file and not any(d.get("annotations") for d in dicts):
        check_coco_json(json_file, f"dataset {name!r}")
    check_dataset_dicts(name, dicts, json_file)
    check_instance_counts(name, dicts)
    _MASK_KINDS[name] = frozenset(
        "rle" if isinstance(a["segmentation"], dict) else "polygon"
        for d in dicts
        for a in d.get("annotations", ())
        if a.get("segmentation") is not None and not a.get("iscrowd", 0)  # the mapper drops crowds
    )
    return dicts


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_declared_sizes(name: str, dicts: List[Dict], source: str = "") -> None:
    """Each declared height x width at most MAX_IMAGE_PIXELS (evaluation allocates it), each RLE
    mask's `size` its image's."""
    for d in dicts:
        height, width = d.get("height"), d.get("width")
        if height is None and width is None:
            continue
        if not (type(height) is int and type(width) is int and height > 0 and width > 0) or (
            height * width > MAX_IMAGE_PIXELS
        ):
            raise ValueError(
                f"dataset {name!r}: image {d.get('file_name')} declares height {height!r} x width "
                f"{width!r}{source}: expected positive integers of at most MAX_IMAGE_PIXELS="
                f"{MAX_IMAGE_PIXELS:,} pixels in all"
            )
        for a in d.get("annotations", ()):
            rle = a.get("segmentation")
            if isinstance(rle, dict) and list(rle.get("size", ())) != [height, width]:
                raise ValueError(
                    f"dataset {name!r}: an RLE mask on {d.get('file_name')} declares size "
                    f"{repr(rle.get('size'))[:40]}, its image {[height, width]}{source}: an RLE "
                    "mask is [height, width] of its image"
                )


def check_dataset_dicts(name: str, dicts: List[Dict], json_file: Optional[str] = None) -> None:
    """Raise on no images, missing image files or a bbox that is not 4 numbers; boxes entirely
    outside their image are an error when all are, else a warning."""
    source = f" ({os.path.abspath(json_file)})" if json_file else ""
    if not dicts:
        raise ValueError(
            f"dataset {name!r} holds no images{source}: a run needs at least one. Is it the "
            "right annotation file?"
        )
    missing = [d.get("file_name") for d in dicts if not os.path.isfile(d.get("file_name", ""))]
    if missing:
        raise DatasetNotFoundError(
            f"dataset {name!r}: {len(missing)} of {len(dicts)} image files do not exist, e.g. "
            f"{_some(missing)}{source}: is the image folder right?"
        )
    check_declared_sizes(name, dicts, source)
    bad, outside, boxes = [], [], 0
    for d in dicts:
        for a in d.get("annotations", ()):
            box = a.get("bbox")
            if box is None:
                continue
            if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(map(_is_number, box)):
                bad.append((box, d.get("file_name")))
                continue
            mode = a.get("bbox_mode", BoxMode.XYWH_ABS)
            if a.get("iscrowd", 0) or mode not in (BoxMode.XYWH_ABS, BoxMode.XYXY_ABS):
                continue
            boxes += 1
            x0, y0, x1, y1 = BoxMode.convert(list(box), mode, BoxMode.XYXY_ABS)
            height, width = d.get("height"), d.get("width")
            if height and width and (x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height):
                outside.append((box, d.get("file_name"), width, height))
    if bad:
        box, file_name = bad[0]
        raise ValueError(
            f"dataset {name!r}: {len(bad)} annotations have a bbox that is not 4 numbers, e.g. "
            f"bbox {repr(box)[:80]} on {file_name}{source}; expected [x, y, width, height]"
        )
    if outside:
        box, file_name, width, height = outside[0]
        what = f"all {boxes}" if len(outside) == boxes else f"{len(outside)} of {boxes}"
        message = (
            f"dataset {name!r}: {what} boxes lie entirely outside their images (e.g. {box} on "
            f"{file_name}, {width}x{height}){source}: training drops them"
        )
        if len(outside) == boxes:
            raise ValueError(f"{message}, so nothing would be learned. Are the boxes [x, y, w, h]?")
        logger.warning(f"{message}. Are the boxes [x, y, width, height] in pixels?")


def check_instance_counts(name: str, dicts: List[Dict], limit: Optional[int] = None) -> None:
    """A ValueError if an image holds more than `limit` (MAX_INSTANCES_PER_IMAGE) annotations."""
    limit = MAX_INSTANCES_PER_IMAGE if limit is None else limit
    counts = [len(d.get("annotations", ())) for d in dicts]
    over = [i for i, c in enumerate(counts) if c > limit]
    if over:
        worst = max(over, key=counts.__getitem__)
        d = dicts[worst]
        raise ValueError(
            f"dataset {name!r}: {len(over)} images hold more than {limit} annotations, e.g. "
            f"{d.get('file_name')} (image_id {d.get('image_id')}) with {counts[worst]}; at most "
            f"{limit} per image (randwire_d2.data.dataset_checks.MAX_INSTANCES_PER_IMAGE): matching "
            "every anchor with every box would exhaust memory. Is the annotation file right?"
        )


def prepare_datasets(dataset_names: Iterable[str]) -> None:
    """Load every dataset once in the main process, then let the others go on (concurrent
    generators of on-demand data would rewrite files another process reads)."""
    if comm.is_main_process():
        for name in dataset_names:
            load_dataset(name)
    comm.synchronize()


def check_num_classes(
    dataset_names: Iterable[str], num_classes: int, key: str = "MODEL.ROI_HEADS.NUM_CLASSES"
) -> None:
    """Every dataset's categories must fit in the model's `num_classes` outputs (`key`)."""
    for name in dataset_names:
        meta = MetadataCatalog.get(name)
        if meta.get("thing_classes") is None:
            load_dataset(name)  # load_coco_json sets thing_classes
        count = len(meta.get("thing_classes") or [])
        if count > num_classes:
            raise ValueError(
                f"{key}={num_classes} is too small for dataset {name!r}, which has {count} "
                f"categories: expected {key} >= {count}"
            )


def check_mask_format(
    dataset_names: Iterable[str],
    mask_on: bool,
    fmt: str,
    keys: Tuple[str, str] = ("MODEL.MASK_ON", "INPUT.MASK_FORMAT"),
) -> None:
    """With masks on, every dataset must hold masks that `fmt` reads ("polygon": polygons only,
    "bitmask": polygons and RLE)."""
    if not mask_on:
        return
    on_key, fmt_key = keys
    if fmt not in ("polygon", "bitmask"):
        raise ValueError(f"{fmt_key}={fmt!r} is invalid: expected 'polygon' or 'bitmask'")
    for name in dataset_names:
        kinds = _MASK_KINDS.get(name)
        if kinds is None:
            if not comm.is_main_process():
                continue  # the main process checks; only it loaded the data (prepare_datasets)
            load_dataset(name)
            kinds = _MASK_KINDS[name]
        if not kinds:
            raise ValueError(
                f"{on_key}=True but dataset {name!r} has no instance masks ('segmentation' "
                "of its annotations): turn the masks off, or give a dataset with masks"
            )
        if fmt == "polygon" and "rle" in kinds:
            raise ValueError(
                f"{fmt_key}='polygon' cannot read dataset {name!r}: its masks are RLE; "
                f"set {fmt_key} bitmask (reads RLE and polygons)"
            )


def check_datasets_fit_model(dataset_names: Iterable[str], cfg, masks: bool = True) -> None:
    """check_num_classes and (with `masks`) check_mask_format for a yaml or lazy config."""
    dataset_names, run = list(dataset_names), RunConfig.of(cfg)
    key, num_classes = run.num_classes()
    if key is not None:
        check_num_classes(dataset_names, num_classes, key)
    if not masks:
        return
    mask_on, mask_format = run.get("mask_on", False), run.get("mask_format", "polygon")
    keys = (run.key("mask_on"), run.key("mask_format"))
    check_mask_format(dataset_names, mask_on, mask_format, keys)


_CATEGORY_KEYS = ("thing_classes", "thing_dataset_id_to_contiguous_id")


def dataset_categories(name: str) -> Dict:
    """{"dataset": name} and the _CATEGORY_KEYS metadata of dataset `name` (loaded if needed);
    {} when it has none. A detector checkpoint records this of its training dataset."""
    meta = MetadataCatalog.get(name)
    json_file = meta.get("json_file", None)
    if meta.get(_CATEGORY_KEYS[1], None) is None and json_file and os.path.isfile(json_file):
        load_dataset(name)  # load_coco_json sets both keys
    record = {"dataset": name}
    classes, ids = meta.get(_CATEGORY_KEYS[0], None), meta.get(_CATEGORY_KEYS[1], None)
    if classes is not None:
        record[_CATEGORY_KEYS[0]] = [str(c) for c in classes]
    if ids is not None:
        record[_CATEGORY_KEYS[1]] = {int(k): int(v) for k, v in ids.items()}
    return record if len(record) > 1 else {}


def _describe_categories(record: Dict) -> str:
    """{category id: name} in class-index order, or the class names where ids are unknown."""
    classes, ids = record.get(_CATEGORY_KEYS[0]), record.get(_CATEGORY_KEYS[1])
    if ids is None:
        return str(classes)
    names = {i: classes[i] if classes and i < len(classes) else "?" for i in ids.values()}
    return str({k: names[v] for k, v in sorted(ids.items(), key=lambda kv: kv[1])})


def check_categories(record: Optional[Dict], dataset_names: Iterable[str], source: str) -> None:
    """A ValueError unless every dataset has the categories the checkpoint records (`record`,
    `dataset_categories`); no record is a warning. `source` names the weights."""
    dataset_names = [n for n in dataset_names if n in DatasetCatalog.list()]
    if not dataset_names:
        return
    if not record:
        logger.warning(
            f"{source} records no categories (written by an older version, or trained without a "
            f"dataset): whether the categories of {dataset_names} are those the model was "
            "trained on cannot be checked"
        )
        return
    for name in dataset_names:
        theirs = dataset_categories(name)
        keys = [k for k in _CATEGORY_KEYS if k in record and k in theirs]
        if any(record[k] != theirs[k] for k in keys):
            raise ValueError(
                f"{source} was trained on the categories of dataset {record.get('dataset')!r} "
                f"{_describe_categories(record)}, but dataset {name!r} has "
                f"{_describe_categories(theirs)}: its category ids and names would label the "
                "model's classes wrongly. Give the dataset the model was trained on (or one "
                "with the same categories), or weights trained on this one"
            )
