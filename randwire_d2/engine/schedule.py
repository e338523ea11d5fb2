"""Pretraining schedules: epochs (PRETRAIN.*) resolved once into the SOLVER/TEST keys.

Sec. 4: lr 0.1 per 256 images scaled linearly with the global batch, linear warmup (Goyal et
al.), half-period cosine decay. A SOLVER/TEST key the user set explicitly is kept over its
epoch-derived value, with a warning.
"""

import logging
from typing import Collection

__all__ = ["IMAGENET_TRAIN_IMAGES", "DERIVED_FROM", "resolve_schedule", "describe_schedule"]

IMAGENET_TRAIN_IMAGES = 1_281_167
DERIVED_FROM = {
    "SOLVER.BASE_LR": "PRETRAIN.LR_PER_256",
    "SOLVER.MAX_ITER": "PRETRAIN.EPOCHS",
    "SOLVER.WARMUP_ITERS": "PRETRAIN.WARMUP_EPOCHS",
    "SOLVER.CHECKPOINT_PERIOD": "PRETRAIN.CHECKPOINT_PERIOD_EPOCHS",
    "TEST.EVAL_PERIOD": "PRETRAIN.EVAL_PERIOD_EPOCHS",
}


def _get(cfg, key):
    node, leaf = key.split(".")
    return cfg[node][leaf]


def _check(ok: bool, key: str, value, allowed: str):
    if not ok:
        raise ValueError(f"{key}={value!r} is invalid: expected {allowed}")


def resolve_schedule(cfg, dataset_size: int, world_size: int, explicit: Collection[str] = ()):
    """A frozen copy of cfg whose DERIVED_FROM keys hold the schedule of PRETRAIN's epochs for
    `dataset_size` images, except those in `explicit`. Idempotent."""
    p, batch = cfg.PRETRAIN, cfg.SOLVER.IMS_PER_BATCH
    _check(
        world_size >= 1 and batch % world_size == 0,
        "SOLVER.IMS_PER_BATCH",
        batch,
        f"a multiple of the {world_size} processes (it is the global batch)",
    )
    _check(
        0 < batch <= dataset_size,
        "SOLVER.IMS_PER_BATCH",
        batch,
        f"1..{dataset_size} (the training images)",
    )
    _check(p.EPOCHS > 0, "PRETRAIN.EPOCHS", p.EPOCHS, "> 0 (fractions allowed)")
    _check(
        0 <= p.WARMUP_EPOCHS <= p.EPOCHS,
        "PRETRAIN.WARMUP_EPOCHS",
        p.WARMUP_EPOCHS,
        f"[0, PRETRAIN.EPOCHS={p.EPOCHS:g}]",
    )
    _check(p.LR_PER_256 > 0, "PRETRAIN.LR_PER_256", p.LR_PER_256, "> 0")
    _check(
        p.CHECKPOINT_PERIOD_EPOCHS > 0,
        "PRETRAIN.CHECKPOINT_PERIOD_EPOCHS",
        p.CHECKPOINT_PERIOD_EPOCHS,
        "> 0",
    )
    _check(
        p.EVAL_PERIOD_EPOCHS >= 0,
        "PRETRAIN.EVAL_PERIOD_EPOCHS",
        p.EVAL_PERIOD_EPOCHS,
        ">= 0 (0: evaluate after training only)",
    )
    ipe = dataset_size // batch  # the sampler drops each epoch's last partial batch
    explicit = set(explicit) & set(DERIVED_FROM)
    epoch_iters = round(p.EPOCHS * ipe)
    given = "SOLVER.MAX_ITER" in explicit
    max_iter = cfg.SOLVER.MAX_ITER if given else epoch_iters
    _check(
        max_iter >= 1,
        "SOLVER.MAX_ITER" if given else "PRETRAIN.EPOCHS",
        max_iter if given else p.EPOCHS,
        f"at least one iteration ({ipe} per epoch)",
    )
    derived = {
        "SOLVER.BASE_LR": p.LR_PER_256 * batch / 256,
        "SOLVER.MAX_ITER": epoch_iters,
        # Warmup is a fraction of training: a shortened run keeps its proportions.
        "SOLVER.WARMUP_ITERS": round(max_iter * p.WARMUP_EPOCHS / p.EPOCHS),
        "SOLVER.CHECKPOINT_PERIOD": min(max_iter, max(1, round(p.CHECKPOINT_PERIOD_EPOCHS * ipe))),
        "TEST.EVAL_PERIOD": (
            max(1, round(p.EVAL_PERIOD_EPOCHS * ipe)) if p.EVAL_PERIOD_EPOCHS else 0
        ),
    }
    cfg = cfg.clone()
    cfg.defrost()
    for key, value in derived.items():
        node, leaf = key.split(".")
        if key not in explicit:
            cfg[node][leaf] = value
        elif _get(cfg, key) != value:
            logging.getLogger(__name__).warning(
                f"{key}={_get(cfg, key)} is given explicitly: it is used instead of the "
                f"{value:g} that {DERIVED_FROM[key]} would give"
            )
    _check(cfg.SOLVER.BASE_LR > 0, "SOLVER.BASE_LR", cfg.SOLVER.BASE_LR, "> 0")
    for key in ("SOLVER.CHECKPOINT_PERIOD", "SOLVER.WARMUP_ITERS", "TEST.EVAL_PERIOD"):
        _check(
            _get(cfg, key) >= (key == "SOLVER.CHECKPOINT_PERIOD"),
            key,
            _get(cfg, key),
            "an iteration count >= 1" if key == "SOLVER.CHECKPOINT_PERIOD" else ">= 0",
        )
    cfg.freeze()
    return cfg


def describe_schedule(cfg, dataset_size: int, world_size: int) -> str:
    """The resolved schedule and the rest of Sec. 4's recipe, one `name: value` per line."""
    s, m, batch = cfg.SOLVER, cfg.MODEL, cfg.SOLVER.IMS_PER_BATCH
    ipe = max(1, dataset_size // batch)
    amp = cfg.PRETRAIN.AMP_DTYPE if s.AMP.ENABLED else "off"
    rows = [
        ("training images", f"{dataset_size:,}"),
        ("processes", world_size),
        ("global batch", f"{batch} ({batch // world_size} per process)"),
        ("epochs", f"{s.MAX_ITER / ipe:g}"),
        ("iterations per epoch", f"{ipe:,}"),
        ("total iterations", f"{s.MAX_ITER:,}"),
        ("warmup iterations", f"{s.WARMUP_ITERS:,}"),
        ("peak lr", f"{s.BASE_LR:g}"),
        ("checkpoint period", f"{s.CHECKPOINT_PERIOD:,} iterations"),
        (
            "eval period",
            f"{cfg.TEST.EVAL_PERIOD:,} iterations" if cfg.TEST.EVAL_PERIOD else "after training",
        ),
        (
            "lr schedule",
            f"{s.LR_SCHEDULER_NAME} (warmup from {s.WARMUP_FACTOR:g} x peak, "
            f"ends at {s.BASE_LR_END:g})",
        ),
        ("momentum", f"{s.MOMENTUM:g}"),
        ("weight decay", f"{s.WEIGHT_DECAY:g} (norm layers: {s.WEIGHT_DECAY_NORM:g})"),
        ("label smoothing", f"{m.CLASSIFIER.LABEL_SMOOTHING:g}"),
        ("dropout before fc", f"{m.CLASSIFIER.DROPOUT:g}"),
        ("edge removal p", f"{m.RANDWIRE.DROP_EDGE_PROB:g}"),
        ("mixed precision", f"{amp} (on GPU)"),
        ("test crops", ", ".join(str(c) for c in cfg.PRETRAIN.TEST_CROPS)),
    ]
    return "\n".join(f"{k:>22}: {v}" for k, v in rows)
