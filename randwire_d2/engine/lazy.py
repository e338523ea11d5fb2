"""Training and evaluation from a LazyConfig (tools/lazyconfig_train_net.py), as Detectron2's
tool does it, with what the yaml trainers guarantee: CPU-capable DDP, the RandWire checkpointer,
AMP only where it runs, one run per output_dir, and a checked resume.
"""

import logging

import torch
from detectron2.config import instantiate
from detectron2.engine import default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.registry import locate
from omegaconf import OmegaConf

from ..checkpoint import build_checkpointer
from ..data.detection_loader import build_resumable_train_loader
from ..run_settings import RunConfig
from .hooks import (
    RunSeed,
    StepSeed,
    ThroughputHook,
    TrainCategories,
    best_checkpoint_hook,
    pending_evaluation_hook,
)
from .output_dir import release_output_dir
from .resume import resume_or_load
from .run_setup import amp_dtype, check_detection_run, setup_run
from .trainer import broadcast_buffers, create_ddp_model, step_trainer

__all__ = [
    "setup_lazy",
    "build_model",
    "build_train_loader",
    "do_train",
    "do_test",
    "describe_lazy_schedule",
]

logger = logging.getLogger(__name__)


def setup_lazy(cfg, args) -> None:
    """Check what can be checked before anything is built, then hold train.output_dir."""
    check_detection_run(cfg, args.eval_only)
    setup_run(cfg, args)


def build_model(cfg) -> torch.nn.Module:
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    logger.info(f"Model:\n{model}")
    return model


def do_test(cfg, model):
    """COCO (or the configured) evaluation of `model` on dataloader.test."""
    if "evaluator" not in cfg.dataloader:
        return {}
    broadcast_buffers(model)
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process():
        print_csv_format(results)
    return results


# What build_resumable_train_loader reproduces of Detectron2's build_detection_train_loader.
_RESUMABLE_LOADER_KEYS = {
    "_target_",
    "dataset",
    "mapper",
    "total_batch_size",
    "aspect_ratio_grouping",
    "num_workers",
}


def _resumable(loader_cfg) -> bool:
    from detectron2.data import build_detection_train_loader

    target = loader_cfg.get("_target_")
    target = locate(target) if isinstance(target, str) else target  # what it is, not its name
    return (
        target is build_detection_train_loader
        and set(loader_cfg.keys()) <= _RESUMABLE_LOADER_KEYS
        and loader_cfg.get("sampler") is None
    )


def build_train_loader(cfg, start_iter: int = 0, seed: int = 0):
    """dataloader.train from iteration `start_iter` on: resumable when it is a plain
    build_detection_train_loader (`_resumable`), else instantiated as written."""
    loader = cfg.dataloader.train
    if not _resumable(loader):
        if start_iter:
            logger.warning(
                "--resume: dataloader.train is not Detectron2's build_detection_train_loader "
                "with dataset, mapper, total_batch_size, aspect_ratio_grouping and num_workers "
                f"only: its order restarts, so the data of iteration {start_iter} on differ "
                "from an uninterrupted run's"
            )
        return instantiate(loader)
    # fmt: off
    return build_resumable_train_loader(
        instantiate(loader.dataset),
        instantiate(loader.mapper),
        loader.total_batch_size,
        seed                  = seed,
        start_iter            = start_iter,
        rank                  = comm.get_rank(),
        world_size            = comm.get_world_size(),
        aspect_ratio_grouping = loader.get("aspect_ratio_grouping", True),
        num_workers           = loader.get("num_workers", 0),
        batch_key             = "dataloader.train.total_batch_size",
    )
    # fmt: on


def describe_lazy_schedule(cfg) -> str:
    """The lr schedule a LazyConfig trains with, in iterations (`lr_multiplier` is evaluated on
    iteration / train.max_iter, so its warmup and steps scale with train.max_iter)."""
    max_iter = int(cfg.train.max_iter)
    sched = instantiate(cfg.lr_multiplier)
    values = [float(sched(i / max_iter)) for i in range(max_iter)]
    lr = OmegaConf.select(cfg, "optimizer.lr", default=None)
    warmup = 0
    while warmup + 1 < max_iter and values[warmup + 1] > values[warmup] + 1e-12:
        warmup += 1
    parts = []
    if warmup:
        parts.append(f"warmup {warmup} iteration{'s' * (warmup != 1)} from {values[0]:.4g}x")
    steps = [
        f"x{values[i]:.4g} from iteration {i}"
        for i in range(warmup + 1, max_iter)
        if abs(values[i] - values[i - 1]) > 1e-12
    ]
    kind = type(sched).__name__
    changes = steps if len(steps) <= 6 else steps[:3] + [f"... ({len(steps)} changes)"]
    parts.append(
        f"then x{values[warmup]:.4g}" + (": " + ", ".join(changes) if changes else " throughout")
    )
    return (
        f"train.max_iter: {max_iter}   optimizer.lr: {lr}   lr_multiplier: {kind}\n"
        f"lr schedule: {'; '.join(parts)}\n"
        "(lr_multiplier is defined on iteration / train.max_iter: changing train.max_iter "
        "moves the warmup and the steps with it)"
    )


def do_train(cfg, args):
    """Train `cfg.train.max_iter` iterations, evaluating every train.eval_period and at the end."""
    cfg = (run := RunConfig.of(cfg)).cfg  # `cfg`: a LazyConfig or its RunConfig
    if comm.is_main_process():
        logger.info("Schedule:\n" + describe_lazy_schedule(cfg))
    model = build_model(cfg)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    run_seed = RunSeed(cfg.train.get("seed", -1))
    train_loader = build_train_loader(cfg, 0, run_seed.seed)
    ddp = dict(cfg.train.get("ddp", {}))
    fp16_compression = ddp.pop("fp16_compression", False)
    model = create_ddp_model(model, **ddp)
    if fp16_compression and comm.get_world_size() > 1:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        model.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    on_cuda = next(model.parameters()).device.type == "cuda"
    trainer = step_trainer(model, train_loader, optimizer, amp_dtype(run, on_cuda))
    checkpointer = build_checkpointer(
        model,
        cfg.train.output_dir,
        cfg=run,
        trainer=trainer,
        run_seed=run_seed,
        categories=TrainCategories.of(run),
    )
    batch = cfg.dataloader.train.get("total_batch_size", 0)
    main = comm.is_main_process()
    registered = [
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        ThroughputHook(batch),
        StepSeed(run_seed),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
        hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
        best_checkpoint_hook(run, checkpointer, "bbox/AP"),
        (
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if main
            else None
        ),
    ]
    registered.append(pending_evaluation_hook(run, registered, "bbox/AP"))
    trainer.register_hooks(registered)
    start_iter, _ = resume_or_load(
        run,
        checkpointer,
        trainer,
        trainer,
        args.resume,
        lambda start: build_train_loader(cfg, start, run_seed.seed),
        run_seed,
        _resumable(cfg.dataloader.train),
    )
    try:
        trainer.train(start_iter, cfg.train.max_iter)
    finally:
        release_output_dir(cfg.train.output_dir)
