"""Detection training and evaluation: the Trainer of tools/train_net.py, and detection pictures.

`Trainer` is RandWireTrainer (CPU-capable DDP, checkpoints that carry the wiring, a held
OUTPUT_DIR, checked resume) with Detectron2's COCOEvaluator.
"""

import os

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.visualizer import Visualizer

from .. import data as _data  # noqa: F401  (registers the embedded demo datasets)
from .trainer import RandWireTrainer

__all__ = ["Trainer", "draw_detections"]


class Trainer(RandWireTrainer):
    """RandWireTrainer + COCOEvaluator."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        meta = MetadataCatalog.get(dataset_name)
        if getattr(meta, "generated_on_demand", False):
            DatasetCatalog.get(dataset_name)  # writes the json COCOEvaluator reads
        return COCOEvaluator(dataset_name, output_dir=output_folder)


def draw_detections(cfg, model, path: str, count: int = 8, score_thresh: float = 0.5) -> str:
    """Write a grid of the first `count` images of DATASETS.TEST[0] with the model's detections
    scoring >= `score_thresh` (boxes, classes, scores; masks too when the model predicts them,
    as Mask R-CNN does) to `path`; returns `path`."""
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
