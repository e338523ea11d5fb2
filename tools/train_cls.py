#!/usr/bin/env python
"""ImageNet pretraining of RandWire classifiers (Sec. 4) on Detectron2's engine.

    python tools/train_cls.py --config-file configs/imagenet/randwire_ws_c109_regular.yaml --num-gpus 8
    python tools/train_cls.py --config-file ... --num-gpus 8 --dry-run     # print the schedule only
    python tools/train_cls.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    torchrun --nproc-per-node 8 tools/train_cls.py --config-file ...     # joins torchrun's group

On a machine without CUDA, --num-gpus N runs N CPU processes (gloo).
"""

from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from randwire_d2 import add_randwire_config
from randwire_d2.engine.classification import (
    IMAGENET_TRAIN_IMAGES,
    ClassificationTrainer,
    default_device,
    dry_run_schedule,
    evaluate_checkpoint,
    launch_from_env_or_args,
    training_set_size,
)


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved schedule and exit"
    )
    parser.add_argument(
        "--dataset-size",
        type=int,
        default=None,
        help="training images for --dry-run (default: count PRETRAIN.DATA_ROOT/train, else ImageNet-1k's)",
    )
    return parser


def setup(args, log=True):
    cfg = get_cfg()
    add_randwire_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = default_device(cfg)
    cfg.freeze()
    if log:
        default_setup(cfg, args)
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="randwire_d2")
    return cfg


def dry_run(args):
    cfg = setup(args, log=False)
    size = args.dataset_size or training_set_size(cfg)
    if size is None:
        size = IMAGENET_TRAIN_IMAGES
        print(
            f"{cfg.PRETRAIN.DATA_ROOT}/train not found: assuming ImageNet-1k's training set (--dataset-size N to change)"
        )
    print(dry_run_schedule(cfg, size, args.num_gpus * args.num_machines))


def main(args):
    cfg = setup(args)
    if args.eval_only:
        return evaluate_checkpoint(cfg, resume=args.resume)
    trainer = ClassificationTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    if args.dry_run:
        dry_run(args)
    else:
        launch_from_env_or_args(main, args)
