"""Training and evaluation from a LazyConfig (tools/lazyconfig_train_net.py), as Detectron2's
`tools/lazyconfig_train_net.py` does it, with what the yaml trainers guarantee: CPU-capable DDP,
the RandWire checkpointer (wiring check, atomic writes, classifier -> detector transfer through
`train.init_checkpoint`), AMP only where it runs, one run per output_dir, and a checked resume.

The config has Detectron2's top-level keys: `model`, `dataloader` (train, test, evaluator),
`optimizer`, `lr_multiplier` and `train` (output_dir, init_checkpoint, max_iter, amp, ddp,
checkpointer, eval_period, log_period, device, seed).
"""

import logging

import torch
from detectron2.config import instantiate
from detectron2.engine import default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from omegaconf import OmegaConf

from ..checkpoint import check_input_normalization, check_weights_on_disk
from ..data.checks import (
    check_datasets_on_disk,
    check_mask_format,
    check_num_classes,
    prepare_datasets,
)
from ..data.detection_loader import build_resumable_train_loader
from .hooks import BestCheckpoint, RunSeed, StepSeed, ThroughputHook
from .trainer import (
    AMP_DTYPES,
    broadcast_buffers,
    build_checkpointer,
    check_frozen_stages_have_weights,
    check_iterations,
    check_resume,
    claim_output_dir,
    create_ddp_model,
    log_resume,
    release_output_dir,
    resolve_device,
    step_trainer,
    truncate_metrics,
)

__all__ = [
    "setup_lazy",
    "build_model",
    "build_train_loader",
    "do_train",
    "do_test",
    "load_for_eval",
    "lazy_num_classes",
    "describe_lazy_schedule",
]

logger = logging.getLogger(__name__)


def lazy_num_classes(cfg):
    """(key, value) of the model's class count: roi_heads.num_classes (R-CNN) or num_classes
    (RetinaNet, FCOS); (None, None) when the model has neither."""
    for key in ("model.roi_heads.num_classes", "model.num_classes"):
        node = cfg
        for part in key.split("."):
            node = node.get(part) if hasattr(node, "get") else None
        if isinstance(node, int):
            return key, node
    return None, None


def _dataset_names(loader_cfg) -> list:
    names = loader_cfg.dataset.names
    return [names] if isinstance(names, str) else list(names)


def setup_lazy(cfg, args) -> None:
    """Check what can be checked before anything is built: the device, the datasets on disk,
    their class count against the model's, train.init_checkpoint; then hold train.output_dir."""
    resolve_device(cfg)
    if not args.eval_only:
        check_iterations(cfg)
    datasets = _dataset_names(cfg.dataloader.test) if "test" in cfg.dataloader else []
    if not args.eval_only:
        datasets += _dataset_names(cfg.dataloader.train)
    check_datasets_on_disk(datasets)
    check_weights_on_disk(cfg.train.init_checkpoint, key="train.init_checkpoint")
    prepare_datasets(datasets)
    key, num_classes = lazy_num_classes(cfg)
    if key is not None:
        check_num_classes(datasets, num_classes, key=key)
    mapper = cfg.dataloader.train.get("mapper", {})
    if not args.eval_only and mapper.get("use_instance_mask", False):
        fmt = mapper.get("instance_mask_format", "polygon")
        keys = tuple(
            f"dataloader.train.mapper.{k}" for k in ("use_instance_mask", "instance_mask_format")
        )
        check_mask_format(_dataset_names(cfg.dataloader.train), True, fmt, keys)
    claim_output_dir(cfg.train.output_dir, args.resume or args.eval_only, args.overwrite)


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


def load_for_eval(cfg, model, resume: bool) -> None:
    """Weights for --eval-only: train.init_checkpoint, or the last checkpoint with --resume;
    strict (every tensor must fit)."""
    checkpointer = build_checkpointer(model, cfg.train.output_dir, cfg=cfg, strict=True)
    if not cfg.train.init_checkpoint and not (resume and checkpointer.has_checkpoint()):
        raise ValueError(
            "train.init_checkpoint='' and no checkpoint to resume: nothing to evaluate"
        )
    extras = checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    check_input_normalization(cfg, extras)


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
    name = target if isinstance(target, str) else getattr(target, "__qualname__", "")
    return (
        (target is build_detection_train_loader or name.endswith("build_detection_train_loader"))
        and set(loader_cfg.keys()) <= _RESUMABLE_LOADER_KEYS
        and loader_cfg.get("sampler") is None
    )


def build_train_loader(cfg, start_iter: int = 0, seed: int = 0):
    """dataloader.train from iteration `start_iter` on. Detectron2's
    build_detection_train_loader (dataset, mapper, total_batch_size, aspect_ratio_grouping,
    num_workers) is built by `build_resumable_train_loader`, so a resumed run continues its
    data; any other loader is instantiated as written and restarts its order on resume."""
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
    """The learning-rate schedule a LazyConfig trains with, in iterations: Detectron2 evaluates
    `lr_multiplier` on the fraction iteration / train.max_iter, so its warmup and steps scale
    with train.max_iter (the yaml route keeps SOLVER.STEPS as given)."""
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


def best_checkpoint_hook(cfg, checkpointer):
    """BestCheckpoint for train.best_checkpoint.metric ("auto": bbox/AP), or None when unset."""
    metric = OmegaConf.select(cfg, "train.best_checkpoint.metric", default="") or ""
    if not metric:
        return None
    # fmt: off
    return BestCheckpoint(
        checkpointer, cfg.train.eval_period, "bbox/AP" if metric == "auto" else metric,
        OmegaConf.select(cfg, "train.best_checkpoint.mode", default="max"),
        "train.best_checkpoint.metric",
    )
    # fmt: on


def do_train(cfg, args):
    """Train `cfg.train.max_iter` iterations with Detectron2's hooks; evaluate at the end (and
    every train.eval_period iterations)."""
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
    amp = cfg.train.get("amp", {})
    amp_dtype = None
    if amp.get("enabled", False):
        name = amp.get("precision", "float16")
        if name not in AMP_DTYPES:
            raise ValueError(
                f"train.amp.precision={name!r} is invalid: expected one of {sorted(AMP_DTYPES)}"
            )
        if on_cuda:
            amp_dtype = AMP_DTYPES[name]
        else:
            logger.warning("train.amp.enabled needs CUDA: training in float32 on CPU")
    trainer = step_trainer(model, train_loader, optimizer, amp_dtype)
    checkpointer = build_checkpointer(
        model, cfg.train.output_dir, cfg=cfg, trainer=trainer, run_seed=run_seed
    )
    batch = cfg.dataloader.train.get("total_batch_size", 0)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            ThroughputHook(batch),
            StepSeed(run_seed),
            (
                hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
                if comm.is_main_process()
                else None
            ),
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            best_checkpoint_hook(cfg, checkpointer),
            (
                hooks.PeriodicWriter(
                    default_writers(cfg.train.output_dir, cfg.train.max_iter),
                    period=cfg.train.log_period,
                )
                if comm.is_main_process()
                else None
            ),
        ]
    )
    extras = checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    resumed = extras.pop("__resumed_from__", None) or (
        args.resume and checkpointer.has_checkpoint()
    )
    start_iter = trainer.iter + 1 if resumed else 0
    if resumed:
        check_resume(cfg, extras, start_iter)
    trainer.reset_data_loader(lambda: build_train_loader(cfg, start_iter, run_seed.seed))
    if resumed:
        truncate_metrics(cfg.train.output_dir, start_iter)
        log_resume(start_iter, resumed, run_seed.seed, _resumable(cfg.dataloader.train))
    else:
        key = "model.backbone.bottom_up.freeze_at"
        freeze_at = OmegaConf.select(cfg, key, default=0) or 0
        check_frozen_stages_have_weights(
            freeze_at, cfg.train.init_checkpoint, (key, "train.init_checkpoint")
        )
        check_input_normalization(cfg, extras)
    try:
        trainer.train(start_iter, cfg.train.max_iter)
    finally:
        release_output_dir(cfg.train.output_dir)
