"""Starting the processes of a run, for both tools: torchrun's group, or Detectron2's `launch`."""

import argparse
import os

import torch
import torch.distributed as dist
from detectron2.engine import default_argument_parser
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

from ..utils.quiet_warnings import quiet_third_party_warnings

__all__ = [
    "check_process_count",
    "argument_parser",
    "add_dataset_argument",
    "add_unsafe_config_argument",
    "launch",
    "CloseProcessGroupAfter",
    "quiet_third_party_warnings",
]


def argument_parser(epilog=None, user_datasets: bool = False) -> argparse.ArgumentParser:
    """Detectron2's parser + `--config`, `--overwrite`, `--allow-unsafe-config` (and with
    `user_datasets`, `--dataset`)."""
    parser = default_argument_parser(epilog)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--config", dest="config_file", default=argparse.SUPPRESS, help="alias of --config-file"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an OUTPUT_DIR that holds checkpoints, deleting them",
    )
    add_unsafe_config_argument(parser)
    if user_datasets:
        add_dataset_argument(parser, "use NAME in the config's datasets")
    return parser


def add_unsafe_config_argument(parser: argparse.ArgumentParser) -> None:
    """`--allow-unsafe-config`, as every tool that reads a yaml config takes it."""
    parser.add_argument(
        "--allow-unsafe-config",
        action="store_true",
        help="let a yaml config use python tags (!!python/...), which can run code; off: "
        "configs are parsed with yaml.safe_load",
    )


def add_dataset_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """`--dataset NAME JSON IMAGE_DIR` (repeatable); `what` says what the tool does with it."""
    parser.add_argument(
        "--dataset",
        action="append",
        nargs=3,
        default=[],
        metavar=("NAME", "JSON", "IMAGE_DIR"),
        help=f"register a COCO-format dataset (repeatable), as train_net.py does: {what}",
    )


class CloseProcessGroupAfter:
    """main_func(*args), then destroy the process group: a gloo group left for interpreter exit
    can abort the process (SIGABRT). A class, so that `launch` can pickle it."""

    def __init__(self, main_func):
        self.main_func = main_func

    def __call__(self, *args, **kwargs):
        quiet_third_party_warnings()  # in each spawned process: filters are not inherited
        try:
            return self.main_func(*args, **kwargs)
        finally:
            if dist.is_available() and dist.is_initialized():
                comm.synchronize()
                dist.destroy_process_group()


def _init_from_torchrun_env() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR)."""
    if not all(k in os.environ for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")):
        return False
    local_rank = int(os.environ["LOCAL_RANK"])
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", torch.cuda.device_count() or 1))
    has_gpu = torch.cuda.is_available()
    if has_gpu:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if has_gpu else "gloo", init_method="env://")
    comm.create_local_process_group(local_size)
    comm.synchronize()
    return True


def launch(main_func, args) -> None:
    """Run main_func(args) in torchrun's process group, or spawn args.num_gpus processes with
    Detectron2's `launch` (gloo on CPU)."""
    quiet_third_party_warnings()
    check_process_count(args.num_gpus)
    main_func = CloseProcessGroupAfter(main_func)
    if _init_from_torchrun_env():
        main_func(args)
        return
    d2_launch(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


def check_process_count(num_gpus: int) -> None:
    """--num-gpus N is at most one process per GPU (without CUDA: per CPU core)."""
    cuda = torch.cuda.is_available()
    limit = torch.cuda.device_count() if cuda else (os.cpu_count() or 1)
    if not 1 <= num_gpus <= limit:
        what = f"{limit} GPUs" if cuda else f"no CUDA and {limit} CPU cores (one process each)"
        raise SystemExit(
            f"--num-gpus {num_gpus} is invalid: this machine has {what}: expected 1..{limit}"
        )
