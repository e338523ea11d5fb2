#!/usr/bin/env python
"""Train the demo detector on the embedded detection data; print COCO AP and wall time.

    python benchmarks/demo_detection.py [--config-file configs/demo/faster_rcnn_randwire_demo.yaml]
        [--vis output/demo_detection/val_detections.jpg] [KEY VALUE ...]

Acceptance (issue 3): box AP50 >= 60 on randwire_demo_det_val after <= 15 minutes of training
on 2 CPU cores.
"""

import argparse
import json
import os
import time

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import Visualizer

from randwire_d2.engine import Trainer, detection_cfg

DEFAULT_CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "configs", "demo", "faster_rcnn_randwire_demo.yaml"
)


def save_detections(cfg, model, path, count=8, score_thresh=0.5):
    """A grid of `count` val images with the model's detections above `score_thresh`."""
    name = cfg.DATASETS.TEST[0]
    dicts = DatasetCatalog.get(name)[:count]
    meta = MetadataCatalog.get(name)
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
    rows = [np.concatenate(tiles[i : i + 4], axis=1) for i in range(0, len(tiles), 4)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    cv2.imwrite(path, np.concatenate(rows, axis=0)[:, :, ::-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config-file", "--config", dest="config_file", default=DEFAULT_CONFIG)
    parser.add_argument("--vis", default="", help="write a picture of val detections here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()

    cfg = detection_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        DatasetCatalog.get(name)  # generate the data outside the timed training

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    results = Trainer.test(cfg, trainer.model)
    eval_s = time.perf_counter() - start

    box = results[cfg.DATASETS.TEST[0]]["bbox"]
    print(f"\nDemo detection ({cfg.SOLVER.MAX_ITER} iterations, {torch.get_num_threads()} threads)")
    print("| AP | AP50 | AP75 | APs | APm | APl | train time | eval time |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        "| " + " | ".join(f"{box[k]:.1f}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
        + f" | {train_s / 60:.1f} min | {eval_s:.0f} s |"
    )
    with open(os.path.join(cfg.OUTPUT_DIR, "benchmark.json"), "w") as f:
        json.dump({"bbox": box, "train_seconds": train_s, "eval_seconds": eval_s}, f, indent=1)
    if args.vis:
        save_detections(cfg, trainer.model, args.vis)
        print(f"val detections: {args.vis}")


if __name__ == "__main__":
    main()
