"""Detection training and evaluation: the Trainer of tools/train_net.py, and detection pictures."""

import logging
import os
from typing import Optional

import cv2
import numpy as np
import torch
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    Metadata,
    MetadataCatalog,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.detection_utils import read_image
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Instances
from detectron2.utils import comm

from .. import data as _data  # noqa: F401  (registers the embedded demo datasets)
from ..data.detection_loader import build_resumable_train_loader
from .hooks import RunSeed, TrainCategories
from .trainer import RandWireTrainer

__all__ = ["Trainer", "draw_detections", "draw_instances", "RESUMABLE_SAMPLERS"]

# DATALOADER.SAMPLER_TRAIN values whose order a resumed run continues exactly.
RESUMABLE_SAMPLERS = ("TrainingSampler", "RepeatFactorTrainingSampler")
logger = logging.getLogger(__name__)


class Trainer(RandWireTrainer):
    """RandWireTrainer + COCOEvaluator + a training loader that `--resume` continues +
    checkpoints that record the training dataset's categories."""

    def prepare(self, cfg):
        self.categories = TrainCategories.of(self.run)
        return super().prepare(cfg)

    def checkpointables(self) -> dict:
        return {"categories": self.categories}

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0, seed: Optional[int] = None):
        """Detectron2's training data from `start_iter` on, resumable for RESUMABLE_SAMPLERS (else
        Detectron2's loader, whose order restarts on resume)."""
        sampler = cfg.DATALOADER.SAMPLER_TRAIN
        if not cls.resumes_data_order(cfg):
            if start_iter:
                logger.warning(
                    f"--resume: DATALOADER.SAMPLER_TRAIN={sampler} draws its order anew: the "
                    f"data of iteration {start_iter} on differ from an uninterrupted run's "
                    f"(exact with {' or '.join(RESUMABLE_SAMPLERS)})"
                )
            return build_detection_train_loader(cfg)
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=(
                cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
            ),
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        repeat = None
        if sampler == "RepeatFactorTrainingSampler":
            repeat = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
                dicts, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT
            ).tolist()
        # fmt: off
        return build_resumable_train_loader(
            dicts,
            DatasetMapper(cfg, True),
            cfg.SOLVER.IMS_PER_BATCH,
            seed                  = RunSeed(cfg.SEED).seed if seed is None else seed,
            start_iter            = start_iter,
            rank                  = comm.get_rank(),
            world_size            = comm.get_world_size(),
            aspect_ratio_grouping = cfg.DATALOADER.ASPECT_RATIO_GROUPING,
            num_workers           = cfg.DATALOADER.NUM_WORKERS,
            repeat_factors        = repeat,
        )
        # fmt: on

    @classmethod
    def resumes_data_order(cls, cfg) -> bool:
        return cfg.DATALOADER.SAMPLER_TRAIN in RESUMABLE_SAMPLERS

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        meta = MetadataCatalog.get(dataset_name)
        if getattr(meta, "generated_on_demand", False):
            DatasetCatalog.get(dataset_name)  # writes the json COCOEvaluator reads
        return COCOEvaluator(dataset_name, output_dir=output_folder)


def draw_instances(
    rgb: np.ndarray, instances: Instances, metadata, scale: float = 1.0, score_thresh: float = 0.0
) -> np.ndarray:
    """`rgb` (HWC uint8) with the detections scoring >= `score_thresh` drawn at `scale`, labelled
    with `metadata`'s thing_classes (a class index beyond them by the index)."""
    instances = instances[instances.scores >= score_thresh]
    names = list(metadata.get("thing_classes", None) or [])
    count = int(instances.pred_classes.max()) + 1 if len(instances) else 0
    if names and count > len(names):
        names += [str(i) for i in range(len(names), count)]
        metadata = Metadata(**dict(metadata.as_dict(), thing_classes=names))
    from detectron2.utils.visualizer import Visualizer  # matplotlib: imported when drawing only

    return Visualizer(rgb, metadata, scale=scale).draw_instance_predictions(instances).get_image()


def draw_detections(cfg, model, path: str, count: int = 8, score_thresh: float = 0.5) -> str:
    """Write a grid of the first `count` images of DATASETS.TEST[0] with the model's detections
    to `path`; returns `path`."""
    name = cfg.DATASETS.TEST[0]
    meta = MetadataCatalog.get(name)
    was_training = model.training
    model.eval()
    tiles = []
    with torch.no_grad():
        for d in DatasetCatalog.get(name)[:count]:
            image = read_image(d["file_name"], format=cfg.INPUT.FORMAT)
            tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
            out = model([{"image": tensor, "height": d["height"], "width": d["width"]}])[0]
            rgb = image if cfg.INPUT.FORMAT == "RGB" else image[:, :, ::-1]
            tiles.append(draw_instances(rgb, out["instances"].to("cpu"), meta, 2.0, score_thresh))
    model.train(was_training)
    rows = [np.concatenate(tiles[i : i + 4], axis=1) for i in range(0, len(tiles), 4)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    cv2.imwrite(path, np.concatenate(rows, axis=0)[:, :, ::-1])
    return path
