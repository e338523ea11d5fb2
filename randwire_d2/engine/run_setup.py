"""The checks every run applies before it builds anything, for both config systems (each takes
a config or its RunConfig; amp_dtype the RunConfig), and the set-up of its OUTPUT_DIR and logs."""

import logging
from typing import Optional

import torch
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import check_weights_on_disk
from ..data.dataset_checks import check_datasets_fit_model, check_datasets_on_disk, prepare_datasets
from ..modeling.execution_path import EXECUTIONS, check_triton
from ..modeling.regional_compile import check_compile
from ..run_settings import RunConfig
from .hooks import check_best_checkpoint
from .output_dir import claim_output_dir

__all__ = [
    "AMP_DTYPES",
    "resolve_device",
    "check_iterations",
    "precision",
    "amp_dtype",
    "check_detection_run",
    "check_run_keys",
    "setup_run",
]

logger = logging.getLogger(__name__)
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
ITERATION_SETTINGS = {"max_iter": 1, "checkpoint_period": 1, "eval_period": 0, "warmup_iters": 0}


def resolve_device(cfg) -> None:
    """A "cuda*" device on a machine without CUDA becomes "cpu", with a warning."""
    run = RunConfig.of(cfg)
    device = run.get("device")
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"{run.key('device')}={device!r} but CUDA is not available: using CPU")
        run.set("device", "cpu")


def check_iterations(cfg) -> None:
    """The iteration counts (ITERATION_SETTINGS) are integers of at least their least values; a
    LazyConfig may leave all but train.max_iter out."""
    run = RunConfig.of(cfg)
    for name, least in ITERATION_SETTINGS.items():
        key = run.key(name)
        if key is None:
            continue
        value = run.select(key)
        if value is None and run.lazy and name != "max_iter":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{key}={value!r} is invalid: expected an integer >= {least}")


def precision(name: str, key: str) -> torch.dtype:
    """The dtype of AMP precision `name`, read from config `key`."""
    if name not in AMP_DTYPES:
        raise ValueError(f"{key}={name!r} is invalid: expected one of {sorted(AMP_DTYPES)}")
    return AMP_DTYPES[name]


def amp_dtype(run, on_cuda: bool, precision_key: Optional[str] = None) -> Optional[torch.dtype]:
    """The AMP dtype of RunConfig `run` (precision at `precision_key`, default float16), None for
    float32 (AMP off, or on CPU with a warning)."""
    if not run.get("amp", False):
        return None
    key = precision_key or run.key("amp_precision")
    dtype = precision(run.select(key, "float16"), key)
    if not on_cuda:
        logger.warning(f"{run.key('amp')} needs CUDA: training in float32 on CPU")
        return None
    return dtype


def check_detection_run(cfg, eval_only: bool) -> None:
    """Before anything is built: the device, the iteration counts, the datasets (train unless
    `eval_only`) on disk and fitting the model, the weights on disk."""
    run = RunConfig.of(cfg)
    resolve_device(run)
    if not eval_only:
        check_iterations(run)
    datasets = run.datasets("test_datasets")
    if not eval_only:
        datasets += run.datasets("train_datasets")
    check_datasets_on_disk(datasets)
    check_weights_on_disk(run.get("weights"), key=run.key("weights"))
    prepare_datasets(datasets)
    check_datasets_fit_model(datasets, run)


def check_run_keys(cfg) -> None:
    """Before OUTPUT_DIR is written, the keys a run would refuse only when it builds its model or
    evaluates: the execution, the compile regions, the best checkpoint's metric and mode."""
    run = RunConfig.of(cfg)
    execution = run.get("execution", "fast")
    if execution not in EXECUTIONS:
        raise ValueError(
            f"{run.key('execution')}={execution!r} is unknown: expected one of {list(EXECUTIONS)}"
        )
    check_compile(run.get("compile", ""), execution, run.get("memory_efficient", False))
    if execution == "triton":
        check_triton(torch.device(run.get("device", "cpu")), run.key("execution"))
    check_best_checkpoint(run)


def setup_run(cfg, args) -> None:
    """Check the run's keys, hold its OUTPUT_DIR, then Detectron2's default_setup and the
    project's log to the same folder."""
    run = RunConfig.of(cfg)
    check_run_keys(run)
    output_dir = run.get("output_dir")
    claim_output_dir(output_dir, args.resume or args.eval_only, args.overwrite)
    default_setup(run.cfg, args)
    setup_logger(output_dir, distributed_rank=comm.get_rank(), name="randwire_d2")
