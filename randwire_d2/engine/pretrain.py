"""ImageNet pretraining of RandWire classifiers (Sec. 4) on Detectron2's engine.

    python tools/train_cls.py --config-file configs/imagenet/randwire_ws_c109_regular.yaml --num-gpus 8
    python tools/train_cls.py --config-file ... --num-gpus 8 --dry-run     # print the schedule only
    python tools/train_cls.py --config-file ... SOLVER.MAX_ITER 20         # a smoke test
    python tools/train_cls.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    torchrun --nproc-per-node 8 tools/train_cls.py --config-file ...     # joins torchrun's group

The schedule is written in epochs (PRETRAIN.*) and resolved here into SOLVER.* for the training
set and the global batch; SOLVER/TEST keys given explicitly are kept (and said so). On a machine
without CUDA, --num-gpus N runs N CPU processes (gloo).
"""

# The text above is the epilog of --help. tools/train_cls.py and `python -m
# randwire_d2.engine.pretrain` (tools/sweep.py) run `cli`. Exit status: 0 done,
# EXIT_OUTPUT_DIR_IN_USE (another process holds OUTPUT_DIR), 2 a bad command line, 1 otherwise.

import os
import sys
import traceback
from typing import Optional, Sequence

import torch.multiprocessing as mp
from detectron2.utils import comm

from ..config import explicit_keys, load_config
from ..data.cls_demo import ensure_classification_demo
from ..data.dataset_checks import check_image_folder
from ..run_settings import RunConfig
from .classification import ClassificationTrainer, check_gpu_keys, evaluate_checkpoint
from .launch import argument_parser, launch
from .output_dir import OutputDirInUse
from .run_setup import precision, resolve_device, setup_run
from .schedule import IMAGENET_TRAIN_IMAGES, describe_schedule, resolve_schedule

__all__ = ["EXIT_OUTPUT_DIR_IN_USE", "build_parser", "setup", "main", "cli"]

# The sweep runner leaves a run refused with this status to its holder, not counted as failed.
EXIT_OUTPUT_DIR_IN_USE = 3


def build_parser():
    parser = argument_parser(__doc__)
    parser.add_argument("--dry-run", action="store_true", help="print the schedule and exit")
    parser.add_argument(
        "--dataset-size",
        type=int,
        default=None,
        help="training images for --dry-run (default: count PRETRAIN.DATA_ROOT/train, else "
        "ImageNet-1k's)",
    )
    return parser


def setup(args, world_size=None) -> RunConfig:
    """The run's settings (`.cfg`: the config it trains with, data checked, schedule resolved);
    then OUTPUT_DIR is claimed and set up. Built once, passed down."""
    run = RunConfig(load_config(args.config_file, args.opts, False, args.allow_unsafe_config))
    cfg = run.cfg
    resolve_device(run)
    precision(cfg.PRETRAIN.AMP_DTYPE, "PRETRAIN.AMP_DTYPE")
    check_gpu_keys(cfg, runnable=not args.dry_run)
    root = cfg.PRETRAIN.DATA_ROOT
    if comm.is_main_process():
        ensure_classification_demo(root)  # the embedded demo data is generated on demand
    comm.synchronize()
    if args.eval_only:
        check_image_folder(root, ("val",))
        cfg.freeze()
    else:
        size = args.dataset_size
        if size is None and args.dry_run and not os.path.isdir(os.path.join(root, "train")):
            print(f"{root}/train not found: assuming ImageNet-1k's training set (--dataset-size)")
            size = IMAGENET_TRAIN_IMAGES
        size = size or len(check_image_folder(root, ("train", "val"))["train"][1])
        world_size = world_size or comm.get_world_size()
        explicit = explicit_keys(args.config_file, args.opts, args.allow_unsafe_config)
        cfg = run.cfg = resolve_schedule(cfg, size, world_size, explicit)
        print(f"Schedule:\n{describe_schedule(cfg, size, world_size)}")
    if not args.dry_run:
        setup_run(run, args)
    return run


def main(args):
    run = setup(args)
    if args.eval_only:
        return evaluate_checkpoint(run, resume=args.resume)
    trainer = ClassificationTrainer(run)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def process_main(args):
    """main(args) in one process; a refused OUTPUT_DIR exits with EXIT_OUTPUT_DIR_IN_USE."""
    try:
        return main(args)
    except OutputDirInUse:
        traceback.print_exc()
        sys.stderr.flush()
        raise SystemExit(EXIT_OUTPUT_DIR_IN_USE) from None


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Run command line `argv`; its exit status (0 or EXIT_OUTPUT_DIR_IN_USE; failures raise)."""
    args = build_parser().parse_args(argv)
    print("Command Line Args:", args)
    if args.dry_run:
        setup(args, world_size=args.num_gpus * args.num_machines)
        return 0
    try:
        launch(process_main, args)
    except SystemExit as e:  # this process' own refusal (one process, or joined torchrun's)
        if e.code == EXIT_OUTPUT_DIR_IN_USE:
            return EXIT_OUTPUT_DIR_IN_USE
        raise
    except mp.ProcessExitedException as e:  # a spawned process' refusal (printed by that process)
        if e.exit_code == EXIT_OUTPUT_DIR_IN_USE:
            return EXIT_OUTPUT_DIR_IN_USE
        raise
    return 0


if __name__ == "__main__":
    sys.exit(cli())
