#!/usr/bin/env python
"""Train or evaluate a detector from a LazyConfig (python) config, as Detectron2's
tools/lazyconfig_train_net.py: the same command line, KEY=VALUE overrides.

    python tools/lazyconfig_train_net.py --config-file configs/lazy/demo/faster_rcnn_randwire_demo.py
    python tools/lazyconfig_train_net.py --config-file configs/lazy/mask_rcnn_randwire_c109_fpn_1x.py \\
        --num-gpus 8 train.init_checkpoint=<classifier checkpoint>
    python tools/lazyconfig_train_net.py --config-file ... --eval-only train.init_checkpoint=<model.pth>
    python tools/lazyconfig_train_net.py --config-file ... --dataset mydata_train train.json images/ \\
        dataloader.train.dataset.names=mydata_train
    torchrun --nproc-per-node 8 tools/lazyconfig_train_net.py --config-file ...

An override of a key the config does not have is an error (`+KEY=VALUE` adds one on purpose).
Without CUDA, `--num-gpus N` runs N CPU processes (gloo).
"""

# First: importing randwire_d2 quiets the deprecation notes that Detectron2's imports print.
import randwire_d2  # noqa: F401  # isort: split
from randwire_d2.checkpoint import load_for_eval
from randwire_d2.config import load_lazy_config
from randwire_d2.data.dataset_checks import register_user_datasets
from randwire_d2.engine import argument_parser, launch
from randwire_d2.engine.lazy import build_model, do_test, do_train, setup_lazy
from randwire_d2.run_settings import RunConfig


def main(args):
    register_user_datasets(args.dataset)
    run = RunConfig(load_lazy_config(args.config_file, args.opts, args.allow_unsafe_config))
    setup_lazy(run, args)  # built once, passed down
    if args.eval_only:
        model = build_model(run.cfg)
        load_for_eval(run, model, args.resume)
        return do_test(run.cfg, model)
    return do_train(run, args)


if __name__ == "__main__":
    args = argument_parser(__doc__, user_datasets=True).parse_args()
    print("Command Line Args:", args)
    launch(main, args)
