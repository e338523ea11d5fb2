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

import torch
from detectron2.data import DatasetCatalog
from detectron2.utils.env import seed_all_rng

from randwire_d2.config import load_config
from randwire_d2.engine import Trainer, claim_output_dir, draw_detections
from randwire_d2.utils.tables import markdown_table

DEFAULT_CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "configs", "demo", "faster_rcnn_randwire_demo.yaml"
)


class TimedTrainer(Trainer):
    """Trainer that adds up the time spent evaluating (it evaluates after the last iteration)."""

    eval_seconds = 0.0

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        start = time.perf_counter()
        results = super().test(cfg, model, evaluators)
        cls.eval_seconds += time.perf_counter() - start
        return results


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config-file", "--config", dest="config_file", default=DEFAULT_CONFIG)
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR's checkpoints")
    parser.add_argument("--vis", default="", help="write a picture of val detections here")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a small, shared CPU more threads than free "
        "cores slow training by 10x or more; the data loader worker uses another core)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_config(args.config_file, args.opts)
    claim_output_dir(cfg.OUTPUT_DIR, resume=False, overwrite=args.overwrite)
    if cfg.SEED >= 0:  # as default_setup: weights, data order and augmentation from SEED
        seed_all_rng(cfg.SEED)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        DatasetCatalog.get(name)  # generate the data outside the timed training

    trainer = TimedTrainer(cfg)
    trainer.resume_or_load(resume=False)
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train()  # evaluates DATASETS.TEST after the last iteration
    eval_s = TimedTrainer.eval_seconds
    train_s = time.perf_counter() - start - eval_s
    cpu_s = time.process_time() - cpu_start
    results = trainer._last_eval_results
    results = results.get(cfg.DATASETS.TEST[0], results)  # keyed by name if > 1 test set

    box = results["bbox"]
    print(
        f"\nDemo detection: {cfg.SOLVER.MAX_ITER} iterations of {cfg.SOLVER.IMS_PER_BATCH} images, "
        f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs"
    )
    aps = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    row = [f"{box[k]:.1f}" for k in aps]
    row += [f"{train_s / 60:.1f} min", f"{eval_s:.0f} s", f"{cpu_s / 60:.1f} min"]
    print(markdown_table(aps + ["train wall time", "eval wall time", "CPU time"], [row]))
    with open(os.path.join(cfg.OUTPUT_DIR, "benchmark.json"), "w") as f:
        json.dump(
            {"bbox": box, "train_seconds": train_s, "eval_seconds": eval_s, "cpu_seconds": cpu_s},
            f,
            indent=1,
        )
    if args.vis:
        draw_detections(cfg, trainer.model, args.vis)
        print(f"val detections: {args.vis}")


if __name__ == "__main__":
    main()
