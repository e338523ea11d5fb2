"""Training hooks and the progress printer of RandWire training."""

import logging
import math
import random
from typing import List, Optional, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import hooks
from detectron2.utils import comm
from detectron2.utils.events import JSONWriter

from ..data.dataset_checks import check_categories, dataset_categories
from ..modeling.randwire import RandWire
from ..run_settings import RunConfig
from .output_dir import has_metric

__all__ = [
    "ThroughputHook",
    "RunSeed",
    "TrainCategories",
    "StepSeed",
    "BestCheckpoint",
    "best_checkpoint_hook",
    "PendingEvaluation",
    "pending_evaluation_hook",
    "evaluation_metrics",
    "check_best_checkpoint",
]

# TEST.BEST_CHECKPOINT_MODE (train.best_checkpoint.mode): keep the highest or the lowest value.
BEST_MODES = ("max", "min")
# COCOEvaluator's metrics per task (its _derive_coco_results; also "<task>/AP-<category>").
COCO_METRICS = {
    "bbox": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
    "segm": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
    "keypoints": ("AP", "AP50", "AP75", "APm", "APl"),
}
COCO_ARCHITECTURES = ("GeneralizedRCNN", "RetinaNet", "PanopticFPN")


class ThroughputHook(hooks.HookBase):
    """Records images/s of the last step (global batch / step time) as `images_per_sec`."""

    def __init__(self, global_batch: int):
        self.global_batch = global_batch

    def after_step(self):
        storage = self.trainer.storage
        if "time" in storage.histories():
            storage.put_scalar(
                "images_per_sec", self.global_batch / storage.history("time").latest()
            )


class RunSeed:
    """The run's seed: SEED when >= 0, else one drawn at start and shared by all processes;
    checkpointed, so that `--resume` keeps it."""

    def __init__(self, seed: int):
        self.seed = int(seed) if seed is not None and seed >= 0 else comm.shared_random_seed()

    def state_dict(self):
        return {"seed": self.seed}

    def load_state_dict(self, state):
        self.seed = int(state["seed"])


class TrainCategories:
    """The categories of a detector's first training dataset, checkpointed as "categories":
    predict, export, evaluation and `--resume` refuse a dataset of other categories."""

    def __init__(self, record=None):
        self.record = dict(record or {})

    @classmethod
    def of(cls, cfg) -> "TrainCategories":
        """Of the config's first training dataset; empty except in the main process (it saves)."""
        names = RunConfig.of(cfg).datasets("train_datasets")
        if not names or names[0] not in DatasetCatalog.list() or not comm.is_main_process():
            return cls()
        return cls(dataset_categories(names[0]))

    def state_dict(self):
        return dict(self.record)

    def load_state_dict(self, state):
        if self.record and state:  # else nothing to compare
            check_categories(state, [self.record["dataset"]], "--resume: the checkpoint")


class StepSeed(hooks.HookBase):
    """Key each iteration's randomness (torch, numpy, random, the trunks' edge removal, Sec. 4.2)
    on (run seed, iteration, rank): a resumed run draws what an uninterrupted one draws."""

    def __init__(self, run_seed: RunSeed):
        self.run_seed = run_seed
        self.trunks = []

    def before_train(self):
        model = getattr(self.trainer.model, "module", self.trainer.model)
        self.trunks = [m for m in model.modules() if isinstance(m, RandWire)]

    def before_step(self):
        key = (self.run_seed.seed, self.trainer.iter, comm.get_rank())
        seed = int(np.random.SeedSequence(key).generate_state(1)[0])
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        for trunk in self.trunks:
            trunk.seed_edge_removal(key)


class BestCheckpoint(hooks.BestCheckpointer):
    """Detectron2's BestCheckpointer (`model_best.pth`, after every evaluation), resumable: the
    best value travels in checkpoints, `last_checkpoint` is not re-tagged, and an unreported
    metric is an error, not a warning. Register it after the EvalHook."""

    def __init__(self, checkpointer, eval_period: int, metric: str, mode: str = "max", key=""):
        if mode not in BEST_MODES:
            raise ValueError(f"{key or 'mode'} mode={mode!r} is invalid: expected 'max' or 'min'")
        super().__init__(eval_period, checkpointer, metric, mode)
        self.key = key or "the best-checkpoint metric"

    @property
    def metric(self) -> str:
        return self._val_metric

    def state_dict(self):
        return {"metric": self._val_metric, "best": self.best_metric, "best_iter": self.best_iter}

    def load_state_dict(self, state):
        if state.get("metric") == self._val_metric:
            self.best_metric, self.best_iter = state["best"], state["best_iter"]

    def _best_checking(self):
        latest = self.trainer.storage.latest()
        metric = self._val_metric
        if metric not in latest:
            reported = sorted(k for k in latest if "/" in k and "loss" not in k)
            raise ValueError(
                f"{self.key}={metric!r} is not among the metrics the evaluation reported: "
                f"expected one of {reported}"
            )
        value, iteration = latest[metric]
        best, best_iter = self.best_metric, self.best_iter
        if best is not None and math.isfinite(value) and not self._compare(value, best):
            self._logger.info(
                f"{metric} = {value:.4g} at iteration {iteration}: model_best.pth stays at "
                f"{best:.4g} (iteration {best_iter})"
            )
            return
        if self._update_best(float(value), int(iteration)):  # not NaN or infinite
            self._checkpointer.save(self._file_prefix, tag_last=False, iteration=iteration)
            self._logger.info(
                f"{metric} = {value:.4g} at iteration {iteration}: saved as model_best.pth"
            )


def best_checkpoint_hook(run, checkpointer, auto_metric: str) -> Optional[BestCheckpoint]:
    """BestCheckpoint for the best-checkpoint metric ("auto": `auto_metric`), None if unset."""
    metric = run.get("best_metric", "") or ""
    if not metric:
        return None
    # fmt: off
    return BestCheckpoint(
        checkpointer, run.get("eval_period"), auto_metric if metric == "auto" else metric,
        run.get("best_mode", "max"), run.key("best_metric"),
    )
    # fmt: on


class PendingEvaluation(hooks.HookBase):
    """A run resumed from an evaluation iteration's checkpoint whose metrics.json lacks `metric`
    there (stopped mid-evaluation) evaluates that iteration before training on."""

    def __init__(self, output_dir: str, eval_period: int, metric: str, evaluate, best, writer):
        self.output_dir, self.period, self.metric = output_dir, eval_period, metric
        self.evaluate, self.best, self.writer = evaluate, best, writer

    def before_train(self):
        iteration = self.trainer.start_iter - 1  # the iteration of the checkpoint resumed
        if iteration < 0 or self.period <= 0 or (iteration + 1) % self.period:
            return
        if iteration + 1 >= self.trainer.max_iter:
            return  # the final evaluation runs after training, resumed or not
        missing = comm.is_main_process() and not has_metric(self.output_dir, iteration, self.metric)
        if not comm.all_gather(missing)[0]:  # every process evaluates, or none
            return
        logging.getLogger(__name__).warning(
            f"--resume: metrics.json has no {self.metric} at iteration {iteration}, the "
            "checkpoint's: the run stopped before that evaluation ended. Evaluating it now."
        )
        storage = self.trainer.storage
        self.trainer.iter = storage.iter = iteration  # as if the evaluation ran in its turn
        try:
            self.evaluate._do_eval()
            if self.best is not None:
                self.best._best_checking()
            for w in getattr(self.writer, "_writers", ()):
                if isinstance(w, JSONWriter):
                    w.write()  # recorded now, not at the next write
        finally:
            self.trainer.iter = storage.iter = iteration + 1


def pending_evaluation_hook(run, registered, auto_metric: str) -> Optional[PendingEvaluation]:
    """PendingEvaluation for the EvalHook among `registered` (None without one), judged by the
    BestCheckpoint's metric, else `auto_metric`."""
    evaluate = next((h for h in registered if isinstance(h, hooks.EvalHook)), None)
    if evaluate is None:
        return None
    best = next((h for h in registered if isinstance(h, BestCheckpoint)), None)
    writer = next((h for h in registered if isinstance(h, hooks.PeriodicWriter)), None)
    # fmt: off
    return PendingEvaluation(
        run.get("output_dir"), run.get("eval_period") or 0, best.metric if best else auto_metric,
        evaluate, best, writer,
    )
    # fmt: on


def evaluation_metrics(cfg) -> Optional[Tuple[List[str], List[str]]]:
    """(the metric names `cfg`'s evaluation reports, the tasks that also report
    "<task>/AP-<category name>"), or None for a meta-architecture evaluated elsewhere."""
    cfg = (run := RunConfig.of(cfg)).cfg
    if not run.lazy and cfg.MODEL.META_ARCHITECTURE == "RandWireClassifier":
        tops = ["top1"] + ["top5"] * (cfg.MODEL.CLASSIFIER.NUM_CLASSES > 5)
        return [f"val_{crop}/{top}" for crop in cfg.PRETRAIN.TEST_CROPS for top in tops], []
    if not run.lazy and cfg.MODEL.META_ARCHITECTURE not in COCO_ARCHITECTURES:
        return None
    tasks = ["bbox"] + ["segm"] * bool(run.get("mask_on", False))
    tasks += ["keypoints"] * bool(not run.lazy and cfg.MODEL.KEYPOINT_ON)
    datasets = run.datasets("test_datasets")
    prefixes = [f"{d}/" for d in datasets] if len(datasets) > 1 else [""]
    tasks = [p + t for p in prefixes for t in tasks]
    return [f"{t}/{m}" for t in tasks for m in COCO_METRICS[t.rsplit("/", 1)[-1]]], tasks


def check_best_checkpoint(cfg) -> None:
    """At setup: the best-checkpoint mode is one of BEST_MODES, its metric "", "auto" or one
    that `evaluation_metrics` reports."""
    run = RunConfig.of(cfg)
    mode = run.get("best_mode", "max")
    if mode not in BEST_MODES:
        raise ValueError(
            f"{run.key('best_mode')}={mode!r} is invalid: expected one of {list(BEST_MODES)}"
        )
    metric = run.get("best_metric", "") or ""
    known = evaluation_metrics(run)
    if metric in ("", "auto") or known is None:
        return
    names, per_category = known
    if metric in names or any(str(metric).startswith(f"{t}/AP-") for t in per_category):
        return
    categories = f", or '<task>/AP-<category name>' for the tasks {per_category}"
    raise ValueError(
        f"{run.key('best_metric')}={metric!r} is not a metric this run's evaluation reports: "
        f"expected '' (off), 'auto' or one of {names}{categories * bool(per_category)}"
    )
