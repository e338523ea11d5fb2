"""What tools/predict.py and tools/export_model.py read from a yaml config (`KEY VALUE`
overrides) or a LazyConfig (`.py` or a lazy run's config.yaml; `key=value` overrides).

    what            yaml                                     LazyConfig
    model           build_model(cfg)                         instantiate(cfg.model)
    input format    INPUT.FORMAT                             dataloader.test.mapper.image_format
                                                             (= model.input_format)
    test resizing   ResizeShortestEdge(INPUT.MIN_SIZE_TEST,  dataloader.test.mapper.augmentations
                    INPUT.MAX_SIZE_TEST)

and weights, device and test datasets through run_settings.RunConfig. A `.py` config is code
(load only one you trust); a saved yaml's `_target_`s are checked against ALLOWED_TARGETS.
"""

import copy
import inspect
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf

from .checkpoint import CLASSIFIER_ARCH, check_weights_on_disk, load_for_eval
from .config import LAZY_KEYS, is_lazy_yaml, load_config, load_lazy_config, read_yaml
from .data.dataset_checks import prepare_datasets
from .data.imagefolder import read_rgb_image
from .limits import MAX_IMAGE_SIDE, check_int
from .modeling.classifier import RandWireClassifier
from .run_settings import RunConfig, is_lazy

__all__ = [
    "LAZY_KEYS",
    "load_any_config",
    "input_format",
    "test_augmentations",
    "is_classifier",
    "set_score_threshold",
    "check_weights",
    "load_model",
    "require_registered",
    "read_image_file",
    "prepare_image",
    "detector_samples",
]

# Constructor arguments holding a detector's minimum test score (R-CNN, RetinaNet, PanopticFPN).
SCORE_THRESHOLD_ARGS = ("test_score_thresh", "combine_instances_score_thresh")


def load_any_config(
    config_file: str, opts: Sequence[str] = (), freeze: bool = True, allow_unsafe: bool = False
):
    """The LazyConfig (`.py` or saved lazy yaml) or yaml config (frozen with `freeze`) in
    `config_file`; overrides in the other system's syntax are an error."""
    opts = list(opts)
    if config_file.endswith(".py") or is_lazy_yaml(
        config_file, read_yaml(config_file, allow_unsafe)
    ):
        _check_lazy_syntax(config_file, opts)
        return load_lazy_config(config_file, opts, allow_unsafe)
    lazy_style = [k for k in opts[::2] if isinstance(k, str) and "=" in k]
    if lazy_style:
        raise ValueError(
            f"override {lazy_style[0]!r} is invalid: {config_file} is a yaml config, whose "
            "overrides are KEY VALUE pairs (e.g. MODEL.WEIGHTS model_final.pth); key=value "
            "is a LazyConfig's syntax"
        )
    return load_config(config_file, opts, freeze, allow_unsafe)


def _check_lazy_syntax(config_file: str, overrides: Sequence[str]) -> None:
    for item in overrides:
        if "=" not in item:
            raise ValueError(
                f"override {item!r} is invalid: {config_file} is a LazyConfig, whose overrides "
                "are key=value (e.g. train.init_checkpoint=model_final.pth); KEY VALUE pairs "
                "are a yaml config's syntax"
            )


def input_format(run: RunConfig) -> str:
    """INPUT.FORMAT (lazy: the test mapper's image_format, equal to model.input_format where
    both are set); RGB or BGR."""
    lazy_keys = ("dataloader.test.mapper.image_format", "model.input_format")
    keys = lazy_keys if run.lazy else ("INPUT.FORMAT",)
    found = {k: run.select(k) for k in keys if run.select(k) is not None}
    if len(set(found.values())) > 1:
        raise ValueError(
            "the LazyConfig's input formats differ: "
            + ", ".join(f"{k}={v!r}" for k, v in found.items())
            + ": set both to the channel order the model was trained on"
        )
    key, fmt = next(iter(found.items()), ("model.input_format", "BGR"))
    if fmt not in ("RGB", "BGR"):
        raise ValueError(f"{key}={fmt!r} is invalid: expected RGB or BGR")
    return fmt


def test_augmentations(cfg) -> T.AugmentationList:
    """Evaluation's resizing (lazy: dataloader.test.mapper.augmentations)."""
    if not is_lazy(cfg):
        size = cfg.INPUT.MIN_SIZE_TEST
        return T.AugmentationList([T.ResizeShortestEdge([size, size], cfg.INPUT.MAX_SIZE_TEST)])
    augs = OmegaConf.select(cfg, "dataloader.test.mapper.augmentations")
    if augs is None:
        raise ValueError(
            "the LazyConfig has no dataloader.test.mapper.augmentations: the test resizing of "
            "its images is unknown (e.g. [L(T.ResizeShortestEdge)(short_edge_length=800, "
            "max_size=1333)])"
        )
    augs = list(instantiate(augs))
    for i, aug in enumerate(augs):  # the sides it resizes to, bounded as a yaml config's are
        if isinstance(aug, T.ResizeShortestEdge):
            key = f"dataloader.test.mapper.augmentations.{i}"
            for v in aug.short_edge_length:
                check_int(f"{key}.short_edge_length", v, 0, MAX_IMAGE_SIDE, "MAX_IMAGE_SIDE")
            if aug.max_size != sys.maxsize:  # Detectron2's default: no limit
                check_int(f"{key}.max_size", aug.max_size, 0, MAX_IMAGE_SIDE, "MAX_IMAGE_SIDE")
    return T.AugmentationList(augs)


def is_classifier(cfg) -> bool:
    """MODEL.META_ARCHITECTURE RandWireClassifier (lazy: model._target_)."""
    run = RunConfig.of(cfg)
    arch = run.select("model._target_" if run.lazy else "MODEL.META_ARCHITECTURE")
    if run.lazy:  # what the target is, not its name
        return (locate(arch) if isinstance(arch, str) else arch) is RandWireClassifier
    return arch == CLASSIFIER_ARCH  # the name it is registered under


def set_score_threshold(cfg, threshold: float) -> None:
    """Make `threshold` the minimum score of a detection (lazy: every SCORE_THRESHOLD_ARGS of a
    callable under `model`; an error if there is none)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(
            f"--confidence-threshold={threshold} is invalid: expected a score in [0, 1]"
        )
    if not is_lazy(cfg):
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = threshold
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = threshold
        cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = threshold
    elif not _set_lazy_args(cfg.model, SCORE_THRESHOLD_ARGS, threshold):
        raise ValueError(
            f"--confidence-threshold: no callable under `model` of this LazyConfig takes one of "
            f"{list(SCORE_THRESHOLD_ARGS)}, so the minimum score cannot be set"
        )


def _set_lazy_args(node, args: Sequence[str], value) -> bool:
    """Set each of `args` that a callable under `node` takes; whether any was."""
    found = False
    if isinstance(node, ListConfig):
        children = list(node)
    elif isinstance(node, DictConfig):
        target = node.get("_target_")
        if target is not None:
            func = locate(target) if isinstance(target, str) else target
            try:
                params = inspect.signature(func).parameters
            except (TypeError, ValueError):  # a builtin without a signature
                params = {}
            for arg in args:
                if arg in params or arg in node:
                    node[arg] = value
                    found = True
        children = list(node.values())
    else:
        return False
    for child in children:
        found = _set_lazy_args(child, args, value) or found
    return found


def check_weights(run, random_weights: Optional[bool] = None, purpose: str = "predictions"):
    """The weights are given and on disk; empty weights are an error unless `random_weights`
    (--random-weights; None when the tool has no such flag)."""
    key, weights = run.key("weights"), run.get("weights", "") or ""
    if not weights and not random_weights:
        output_dir = run.get("output_dir", "output") or "output"
        example = run.override("weights", os.path.join(output_dir, "model_final.pth"))
        random = ", or --random-weights for an untrained model" if random_weights is False else ""
        raise ValueError(f"{key} is empty: {purpose} need trained weights, e.g. {example}{random}")
    if weights and random_weights:
        raise ValueError(
            f"{key}={weights!r} and --random-weights were both given: pass one of them"
        )
    if weights:
        check_weights_on_disk(weights, key=key)


def load_model(
    cfg, random_weights: Optional[bool] = None, purpose: str = "predictions"
) -> Tuple[torch.nn.Module, Dict]:
    """(the model of `cfg` in eval mode with its weights loaded strictly, the rest of its
    checkpoint); empty weights: see `check_weights`."""
    run = RunConfig.of(cfg)
    check_weights(run, random_weights, purpose)
    if run.lazy and is_classifier(run):
        raise ValueError(
            f"{CLASSIFIER_ARCH} from a LazyConfig is not supported: classifiers are yaml configs "
            "(tools/train_cls.py)"
        )
    model = instantiate(run.cfg.model).to(run.get("device")) if run.lazy else build_model(run.cfg)
    extras = load_for_eval(run, model) if run.get("weights") else {}
    return model.eval(), extras


def require_registered(names: Sequence[str], key: str, alternative: str = "") -> None:
    """Every dataset of `names` (from config `key`) is registered, else a ValueError."""
    for name in names:
        if name not in DatasetCatalog.list():
            raise ValueError(
                f"{key} names dataset {name!r}, which is not registered: pass --dataset {name} "
                f"JSON IMAGE_DIR (its COCO annotation file and image folder){alternative}"
            )


def read_image_file(path: str) -> np.ndarray:
    """HWC uint8 BGR of an image file, read as the training loader reads it."""
    return np.asarray(read_rgb_image(path))[:, :, ::-1]


def prepare_image(bgr: np.ndarray, fmt: str, augs: T.AugmentationList) -> Dict:
    """{"image": float32 CHW in `fmt` resized by `augs`, "height", "width" of the original}."""
    image = bgr[:, :, ::-1] if fmt == "RGB" else bgr
    height, width = image.shape[:2]
    aug_input = T.AugInput(np.ascontiguousarray(image))
    augs(aug_input)
    tensor = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1))
    return {"image": tensor, "height": height, "width": width}


def detector_samples(cfg, sample_image: Optional[str] = None, count: int = 2) -> List[Dict]:
    """Detector inputs (float32 CHW, 0-255, resized for testing): `sample_image`, else the first
    `count` images of the first test dataset through the test loader."""
    run = RunConfig.of(cfg)
    if sample_image:
        if not os.path.isfile(sample_image):
            raise FileNotFoundError(f"--sample-image {sample_image!r} does not exist")
        image = read_image_file(sample_image)
        return [prepare_image(image, input_format(run), test_augmentations(run.cfg))]
    key, names = run.key("test_datasets"), run.datasets("test_datasets")
    if not names:
        raise ValueError(f"{key} is empty: give --sample-image IMAGE or a test dataset")
    name = names[0]
    require_registered([name], key, ", or --sample-image IMAGE")
    prepare_datasets([name])
    if run.lazy:
        cfg = copy.deepcopy(run.cfg)
        cfg.dataloader.test.num_workers = 0
        cfg.dataloader.test.dataset.names = name
        loader = instantiate(cfg.dataloader.test)
    else:
        cfg = run.cfg.clone()
        cfg.defrost()
        cfg.DATALOADER.NUM_WORKERS = 0
        loader = build_detection_test_loader(cfg, name)
    samples = []
    for batch in loader:
        # the exported model takes float images
        samples.extend(dict(s, image=s["image"].float()) for s in batch)
        if len(samples) >= count:
            break
    return samples[:count]
