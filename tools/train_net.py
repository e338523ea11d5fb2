#!/usr/bin/env python
"""Train or evaluate a RandWire (or ResNet) Faster R-CNN with Detectron2.

    python tools/train_net.py --config configs/faster_rcnn_randwire_c109_fpn_1x.yaml \\
        --num-gpus 8 MODEL.WEIGHTS <pretrained.pth>
    python tools/train_net.py --config-file configs/demo/faster_rcnn_randwire_demo.yaml
    python tools/train_net.py --config ... --eval-only MODEL.WEIGHTS <model.pth>
    python tools/train_net.py --config ... --dataset mydata_train train.json images/ \\
        DATASETS.TRAIN '("mydata_train",)'
    torchrun --nproc-per-node 8 tools/train_net.py --config ...          # joins torchrun's group

Without CUDA, `--num-gpus N` runs N CPU processes (gloo).
"""

# First: importing randwire_d2 quiets the deprecation notes that Detectron2's imports print.
import randwire_d2  # noqa: F401  # isort: split
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from randwire_d2.checkpoint import load_for_eval
from randwire_d2.config import load_config
from randwire_d2.data.dataset_checks import register_user_datasets
from randwire_d2.engine import Trainer, argument_parser, launch
from randwire_d2.engine.run_setup import check_detection_run, setup_run
from randwire_d2.run_settings import RunConfig


def build_parser():
    return argument_parser(__doc__, user_datasets=True)


def setup(args) -> RunConfig:
    """The run's settings (`.cfg`: its config): config, datasets and weights checked before
    anything trains; OUTPUT_DIR claimed. Built once, passed down."""
    register_user_datasets(args.dataset)
    run = RunConfig(load_config(args.config_file, args.opts, False, args.allow_unsafe_config))
    check_detection_run(run, args.eval_only)  # device, iterations, datasets, weights
    run.cfg.freeze()
    setup_run(run, args)
    return run


def main(args):
    run = setup(args)
    cfg = run.cfg
    if args.eval_only:
        model = Trainer.build_model(cfg)
        load_for_eval(run, model, args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(run)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = build_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args)
