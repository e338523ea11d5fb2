"""Detection training and evaluation: the Trainer of tools/train_net.py and its helpers.

`Trainer` is Detectron2's DefaultTrainer with COCOEvaluator, checkpoints that carry the wiring
(RandWireCheckpointer, for RandWire models), and a DistributedDataParallel wrapper that works on
CPU (gloo): Detectron2's `create_ddp_model` passes `device_ids` even without CUDA, which
DistributedDataParallel rejects for CPU modules.
"""

import argparse
import logging
import os
import weakref
from typing import Iterable, List, Optional, Sequence

import cv2
import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.detection_utils import read_image
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    default_argument_parser,
    default_setup,
)
from detectron2.evaluation import COCOEvaluator, verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer
from torch.nn.parallel import DistributedDataParallel

from .. import data as _data  # noqa: F401  (registers the embedded demo datasets)
from ..checkpoint import RandWireCheckpointer
from ..config import add_randwire_config
from ..modeling.randwire import RandWire

__all__ = [
    "Trainer",
    "DatasetNotFoundError",
    "create_ddp_model",
    "build_checkpointer",
    "register_user_datasets",
    "check_datasets_on_disk",
    "check_weights_on_disk",
    "check_input_normalization",
    "prepare_datasets",
    "detection_cfg",
    "argument_parser",
    "setup_cfg",
    "train_or_evaluate",
    "draw_detections",
]


class DatasetNotFoundError(FileNotFoundError):
    """A registered dataset's annotation file or image folder is not on disk."""


def detection_cfg():
    """Detectron2's default config plus every randwire_d2 key."""
    return add_randwire_config(get_cfg())


def create_ddp_model(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """DistributedDataParallel(model) when there are > 1 processes; `device_ids` only on CUDA."""
    if comm.get_world_size() == 1:
        return model
    if "device_ids" not in kwargs and next(model.parameters()).device.type == "cuda":
        kwargs["device_ids"] = [comm.get_local_rank()]
    return DistributedDataParallel(model, **kwargs)


def build_checkpointer(model, save_dir: str = "", cfg=None, **checkpointables):
    """RandWireCheckpointer (wiring + fingerprint in every file) for models with a RandWire
    trunk; Detectron2's DetectionCheckpointer for the ResNet baselines."""
    inner = getattr(model, "module", model)
    if any(isinstance(m, RandWire) for m in inner.modules()):
        return RandWireCheckpointer(model, save_dir, cfg=cfg, **checkpointables)
    return DetectionCheckpointer(model, save_dir, **checkpointables)


def register_user_datasets(specs: Optional[Iterable[Sequence[str]]]) -> List[str]:
    """Register COCO-format datasets given as (name, json file, image folder); their names.

    Each becomes usable as DATASETS.TRAIN / DATASETS.TEST and is evaluated with COCOEvaluator.
    """
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
        register_coco_instances(name, {}, json_file, image_root)
        names.append(name)
    return names


def check_datasets_on_disk(dataset_names: Iterable[str]) -> None:
    """Raise DatasetNotFoundError naming DETECTRON2_DATASETS and the missing path, if a dataset's
    files are absent (datasets generated on demand, like the demo data, are skipped)."""
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


def check_input_normalization(cfg, checkpoint: dict) -> bool:
    """Warn when the checkpoint was trained on other pixel statistics or channel order than
    MODEL.PIXEL_MEAN/PIXEL_STD and INPUT.FORMAT; False then. (Not an error: fine-tuning with
    other statistics is legitimate, only usually unintended.)"""
    mismatched = []
    for key, ours in (("pixel_mean", cfg.MODEL.PIXEL_MEAN), ("pixel_std", cfg.MODEL.PIXEL_STD)):
        theirs = checkpoint.get(key)
        if theirs is not None and not np.allclose(theirs, ours, rtol=0, atol=1e-3):
            values = [float(f"{v:.6g}") for v in theirs]
            mismatched.append(f"MODEL.{key.upper()} {values} (config: {list(ours)})")
    fmt = checkpoint.get("input_format")
    if fmt is not None and fmt != cfg.INPUT.FORMAT:
        mismatched.append(f"INPUT.FORMAT {fmt} (config: {cfg.INPUT.FORMAT})")
    if mismatched:
        logging.getLogger(__name__).warning(
            "MODEL.WEIGHTS was trained with other input normalization than this config; to "
            "match it set: " + "; ".join(mismatched)
        )
    return not mismatched


class Trainer(DefaultTrainer):
    """DefaultTrainer + COCOEvaluator + RandWireCheckpointer + CPU-capable DDP."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__ with two changes: our create_ddp_model and checkpointer.
        TrainerBase.__init__(self)
        logger = logging.getLogger("detectron2")
        if not logger.isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = build_checkpointer(
            model, cfg.OUTPUT_DIR, cfg=cfg, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume=True):
        extras = self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        check_input_normalization(self.cfg, extras)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        meta = MetadataCatalog.get(dataset_name)
        if getattr(meta, "generated_on_demand", False):
            DatasetCatalog.get(dataset_name)  # writes the json COCOEvaluator reads
        return COCOEvaluator(dataset_name, output_dir=output_folder)


def argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """Detectron2's parser + `--config` (alias of `--config-file`) + repeatable `--dataset`."""
    parser = default_argument_parser(epilog)
    parser.add_argument(
        "--config",
        dest="config_file",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="alias of --config-file",
    )
    parser.add_argument(
        "--dataset",
        action="append",
        nargs=3,
        default=[],
        metavar=("NAME", "JSON", "IMAGE_DIR"),
        help="register a COCO-format dataset (repeatable); use NAME in DATASETS.TRAIN/TEST",
    )
    return parser


def setup_cfg(args):
    """Config of a command line: file, then KEY VALUE overrides; CPU when CUDA is absent."""
    if not args.config_file:
        raise ValueError("no config given: pass --config-file FILE (or --config FILE)")
    cfg = detection_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def prepare_datasets(dataset_names: Iterable[str]) -> None:
    """Generate the on-demand datasets (the demo data) in the main process only, then let the
    other processes go on: concurrent generators would rewrite files another process reads."""
    if comm.is_main_process():
        for name in dataset_names:
            if getattr(MetadataCatalog.get(name), "generated_on_demand", False):
                DatasetCatalog.get(name)
    comm.synchronize()


def check_weights_on_disk(weights: str) -> None:
    """A MODEL.WEIGHTS that is a local path (not a URL) must exist."""
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"MODEL.WEIGHTS={weights!r} does not exist ({os.path.abspath(weights)}): give a "
            "checkpoint file, a detectron2:// or https:// URL, or an empty string (random init)"
        )


def train_or_evaluate(args):
    """What tools/train_net.py runs in every process: train (then evaluate), or --eval-only."""
    register_user_datasets(args.dataset)
    cfg = setup_cfg(args)
    datasets = (
        list(cfg.DATASETS.TEST)
        if args.eval_only
        else list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    )
    check_datasets_on_disk(datasets)
    check_weights_on_disk(cfg.MODEL.WEIGHTS)
    prepare_datasets(datasets)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        extras = build_checkpointer(model, cfg.OUTPUT_DIR, cfg=cfg).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        check_input_normalization(cfg, extras)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def draw_detections(cfg, model, path: str, count: int = 8, score_thresh: float = 0.5) -> str:
    """Write a grid of the first `count` images of DATASETS.TEST[0] with the model's detections
    scoring >= `score_thresh` to `path`; returns `path`."""
    name = cfg.DATASETS.TEST[0]
    dicts = DatasetCatalog.get(name)[:count]
    meta = MetadataCatalog.get(name)
    was_training = model.training
    model.eval()
    tiles = []
    with torch.no_grad():
        for d in dicts:
            image = read_image(d["file_name"], format=cfg.INPUT.FORMAT)
            tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
            out = model([{"image": tensor, "height": d["height"], "width": d["width"]}])[0]
            inst = out["instances"].to("cpu")
            inst = inst[inst.scores >= score_thresh]
            rgb = image if cfg.INPUT.FORMAT == "RGB" else image[:, :, ::-1]
            vis = Visualizer(rgb, meta, scale=2.0).draw_instance_predictions(inst)
            tiles.append(vis.get_image())
    model.train(was_training)
    rows = [np.concatenate(tiles[i : i + 4], axis=1) for i in range(0, len(tiles), 4)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    cv2.imwrite(path, np.concatenate(rows, axis=0)[:, :, ::-1])
    return path
