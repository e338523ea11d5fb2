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
from detectron2.engine import default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from randwire_d2.checkpoint import check_input_normalization, check_weights_on_disk
from randwire_d2.config import load_config
from randwire_d2.data.checks import (
    check_datasets_fit_model,
    check_datasets_on_disk,
    prepare_datasets,
    register_user_datasets,
)
from randwire_d2.engine import (
    Trainer,
    argument_parser,
    build_checkpointer,
    check_iterations,
    claim_output_dir,
    launch,
    resolve_device,
)


def build_parser():
    return argument_parser(__doc__, user_datasets=True)


def setup(args):
    """Config, datasets and weights checked before anything trains; OUTPUT_DIR claimed."""
    register_user_datasets(args.dataset)
    cfg = load_config(args.config_file, args.opts, False, args.allow_unsafe_config)
    resolve_device(cfg)
    cfg.freeze()
    if not args.eval_only:
        check_iterations(cfg)
    datasets = list(cfg.DATASETS.TEST) + ([] if args.eval_only else list(cfg.DATASETS.TRAIN))
    check_datasets_on_disk(datasets)
    check_weights_on_disk(cfg.MODEL.WEIGHTS)
    prepare_datasets(datasets)
    check_datasets_fit_model(datasets, cfg)  # class count (per meta-arch), mask format
    claim_output_dir(cfg.OUTPUT_DIR, args.resume or args.eval_only, args.overwrite)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="randwire_d2")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = build_checkpointer(model, cfg.OUTPUT_DIR, cfg=cfg, strict=True)
        if not cfg.MODEL.WEIGHTS and not (args.resume and checkpointer.has_checkpoint()):
            raise ValueError("MODEL.WEIGHTS='' and no checkpoint to resume: nothing to evaluate")
        check_input_normalization(
            cfg, checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        )
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = build_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args)
