"""Starting a run from its weights or resuming it from its last checkpoint, for both trainers;
a resume refuses a config that contradicts what it restores."""

import logging
from typing import Callable, Tuple

from ..checkpoint import check_input_normalization, weights_download_named
from ..run_settings import RESTORED, RESUME_SECTIONS, RunConfig, changed_keys
from .output_dir import truncate_metrics

__all__ = ["resume_or_load", "check_resume", "log_resume", "check_frozen_stages_have_weights"]

logger = logging.getLogger(__name__)


def resume_or_load(
    cfg, checkpointer, loop, step, resume: bool, build_loader: Callable, run_seed, data_order: bool
) -> Tuple[int, dict]:
    """Load the weights, or with `resume` the last checkpoint; (start iteration, the rest of the
    checkpoint). `loop` holds `iter`, `step`'s data become `build_loader(start_iter)`;
    `data_order`: whether that loader continues an interrupted run's data."""
    run = RunConfig.of(cfg)
    with weights_download_named(run.key("weights"), run.get("weights")):
        extras = checkpointer.resume_or_load(run.get("weights"), resume=resume)
    resumed = extras.pop("__resumed_from__", None) or (resume and checkpointer.has_checkpoint())
    start_iter = loop.iter + 1 if resumed else 0
    if resumed:
        check_resume(run, extras, start_iter)
    step.reset_data_loader(lambda: build_loader(start_iter))
    if resumed:
        truncate_metrics(run.get("output_dir"), start_iter)
        log_resume(start_iter, resumed, run_seed.seed, data_order)
    else:
        check_frozen_stages_have_weights(run)
        check_input_normalization(run, extras)
    return start_iter, extras


def check_frozen_stages_have_weights(run) -> None:
    """Frozen stages without pretrained weights (they would stay random) are an error."""
    freeze_at, weights = run.get("freeze_at", 0) or 0, run.get("weights")
    freeze_key, weights_key = run.key("freeze_at"), run.key("weights")
    if freeze_at > 0 and not weights:
        raise ValueError(
            f"{freeze_key}={freeze_at} freezes the first {freeze_at} stages, but {weights_key} "
            f"is empty: they would stay random. Give pretrained {weights_key}, or set "
            f"{freeze_key} 0 to train from scratch."
        )


def check_resume(run, checkpoint: dict, start_iter: int) -> None:
    """Refuse a resume that contradicts RESTORED state or leaves nothing to train; log the
    other changes it applies."""
    old, new = run.saved_flat(checkpoint), run.flat()
    max_key, weights_key = run.key("max_iter"), run.key("weights")
    max_iter = new[max_key]
    if start_iter == max_iter == old.get(max_key):
        logger.warning(
            "--resume: the run trained all its iterations: only its final evaluation runs"
        )
    elif start_iter >= max_iter:
        raise ValueError(
            f"--resume: the checkpoint is at iteration {start_iter}, but {max_key}="
            f"{max_iter}: nothing is left to train (another batch or epoch count?). "
            f"Start a new OUTPUT_DIR with {weights_key} set to the checkpoint to fine-tune."
        )
    if not old:
        return
    restored = {run.key(name) for name in RESTORED}
    changed = changed_keys(old, new)
    refused = [f"{k} {old[k]!r} -> {new[k]!r}" for k in changed if k in restored]
    if refused:
        raise ValueError(
            "--resume restores the checkpoint's optimizer and data order, which contradict the "
            f"config: {'; '.join(refused)}. Resume with the checkpoint's values, or start a new "
            f"OUTPUT_DIR with {weights_key} set to the checkpoint."
        )
    shown = RESUME_SECTIONS[run.lazy]
    applied = [f"{k} {old[k]!r} -> {new[k]!r}" for k in changed if k.split(".")[0] in shown]
    if applied:
        logger.warning("--resume applies changed keys: " + "; ".join(applied))


def log_resume(start_iter: int, source, seed: int, data_order: bool = True) -> None:
    """The line both trainers print when they resume: what was restored, and from where."""
    what = "model, optimizer, lr scheduler, iteration, " + ("data order, " if data_order else "")
    where = source if isinstance(source, str) else "the last checkpoint"
    logger.info(f"Resumed at iteration {start_iter}: {what}run seed {seed} restored from {where}")
