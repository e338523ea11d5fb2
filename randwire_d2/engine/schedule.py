"""Pretraining schedules: epochs (PRETRAIN.*) turned into iterations and the peak lr.

Sec. 4: lr 0.1 per 256 images scaled linearly with the global batch (SOLVER.IMS_PER_BATCH, over
all processes), linear warmup (Goyal et al.), half-period cosine decay.
"""

import dataclasses
from typing import Tuple

__all__ = ["IMAGENET_TRAIN_IMAGES", "Schedule", "resolve_schedule", "dry_run_schedule", "apply_schedule"]

IMAGENET_TRAIN_IMAGES = 1_281_167


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A pretraining schedule in iterations, resolved from epochs."""

    dataset_size: int
    world_size: int
    global_batch: int
    epochs: float
    iters_per_epoch: int
    max_iter: int
    warmup_iters: int
    peak_lr: float
    checkpoint_period: int
    eval_period: int
    recipe: Tuple[Tuple[str, str], ...] = ()

    def __str__(self):
        rows = [
            ("training images", f"{self.dataset_size:,}"),
            ("processes", self.world_size),
            (
                "global batch",
                f"{self.global_batch} ({self.global_batch // self.world_size} per process)",
            ),
            ("epochs", f"{self.epochs:g}"),
            ("iterations per epoch", f"{self.iters_per_epoch:,}"),
            ("total iterations", f"{self.max_iter:,}"),
            ("warmup iterations", f"{self.warmup_iters:,}"),
            ("peak lr", f"{self.peak_lr:g}"),
            ("checkpoint period", f"{self.checkpoint_period:,} iterations"),
            (
                "eval period",
                f"{self.eval_period:,} iterations" if self.eval_period else "after training",
            ),
        ] + list(self.recipe)
        return "\n".join(f"{k:>22}: {v}" for k, v in rows)


def resolve_schedule(cfg, dataset_size: int, world_size: int) -> Schedule:
    """Turn PRETRAIN's epochs and SOLVER.IMS_PER_BATCH into iterations and the peak lr."""
    p, batch = cfg.PRETRAIN, cfg.SOLVER.IMS_PER_BATCH
    if world_size < 1 or batch % world_size:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={batch} is invalid for {world_size} processes: expected a "
            "multiple of the process count (it is the global batch)"
        )
    if not 0 < batch <= dataset_size:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={batch} is invalid: expected 1..{dataset_size} (the training images)"
        )
    if p.EPOCHS <= 0:
        raise ValueError(f"PRETRAIN.EPOCHS={p.EPOCHS!r} is invalid: expected > 0")
    if not 0 <= p.WARMUP_EPOCHS <= p.EPOCHS:
        raise ValueError(
            f"PRETRAIN.WARMUP_EPOCHS={p.WARMUP_EPOCHS!r} is invalid: expected [0, {p.EPOCHS}]"
        )
    if p.CHECKPOINT_PERIOD_EPOCHS <= 0 or p.EVAL_PERIOD_EPOCHS < 0:
        raise ValueError(
            f"PRETRAIN.CHECKPOINT_PERIOD_EPOCHS={p.CHECKPOINT_PERIOD_EPOCHS!r} / EVAL_PERIOD_EPOCHS="
            f"{p.EVAL_PERIOD_EPOCHS!r} are invalid: expected > 0 / >= 0"
        )
    ipe = dataset_size // batch  # the sampler drops each epoch's last partial batch
    max_iter = max(1, round(p.EPOCHS * ipe))
    return Schedule(
        dataset_size=dataset_size,
        world_size=world_size,
        global_batch=batch,
        epochs=float(p.EPOCHS),
        iters_per_epoch=ipe,
        max_iter=max_iter,
        warmup_iters=min(max_iter, round(p.WARMUP_EPOCHS * ipe)),
        peak_lr=p.LR_PER_256 * batch / 256,
        checkpoint_period=max(1, round(p.CHECKPOINT_PERIOD_EPOCHS * ipe)),
        eval_period=max(1, round(p.EVAL_PERIOD_EPOCHS * ipe)) if p.EVAL_PERIOD_EPOCHS > 0 else 0,
        recipe=_recipe(cfg),
    )


def _recipe(cfg) -> Tuple[Tuple[str, str], ...]:
    """What else of Sec. 4 / 4.2 the config sets, for the dry-run printout."""
    s, m = cfg.SOLVER, cfg.MODEL
    amp = cfg.PRETRAIN.AMP_DTYPE if s.AMP.ENABLED else "off"
    return (
        (
            "lr schedule",
            f"{s.LR_SCHEDULER_NAME} (warmup from {s.WARMUP_FACTOR:g} x peak, ends at {s.BASE_LR_END:g})",
        ),
        ("momentum", f"{s.MOMENTUM:g}"),
        ("weight decay", f"{s.WEIGHT_DECAY:g} (norm layers: {s.WEIGHT_DECAY_NORM:g})"),
        ("label smoothing", f"{m.CLASSIFIER.LABEL_SMOOTHING:g}"),
        ("dropout before fc", f"{m.CLASSIFIER.DROPOUT:g}"),
        ("edge removal p", f"{m.RANDWIRE.DROP_EDGE_PROB:g}"),
        ("mixed precision", f"{amp} (on GPU)"),
        ("test crops", ", ".join(str(c) for c in cfg.PRETRAIN.TEST_CROPS)),
    )


def dry_run_schedule(cfg, dataset_size: int, world_size: int) -> Schedule:
    """The schedule `tools/train_cls.py` would train with; reads no data and trains nothing."""
    return resolve_schedule(cfg, dataset_size, world_size)


def apply_schedule(cfg, schedule: Schedule):
    """A copy of cfg whose SOLVER/TEST iteration keys hold the resolved schedule.

    Idempotent: BASE_LR is always recomputed from PRETRAIN.LR_PER_256, never scaled twice.
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.BASE_LR = schedule.peak_lr
    cfg.SOLVER.MAX_ITER = schedule.max_iter
    cfg.SOLVER.WARMUP_ITERS = schedule.warmup_iters
    cfg.SOLVER.CHECKPOINT_PERIOD = schedule.checkpoint_period
    cfg.TEST.EVAL_PERIOD = schedule.eval_period
    cfg.freeze()
    return cfg
