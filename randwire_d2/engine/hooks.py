"""Training hooks and the progress printer of RandWire training."""

import datetime
import logging
import random

import numpy as np
import torch
from detectron2.engine import hooks
from detectron2.utils import comm
from detectron2.utils.events import EventWriter, get_event_storage

from ..modeling.randwire import RandWire

__all__ = ["ThroughputHook", "RunSeed", "StepSeed", "ProgressPrinter"]


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
    """The seed of a run's data order and of its steps' randomness: SEED (a LazyConfig's
    train.seed) when >= 0, else one drawn at start and shared by all processes. Checkpointed, so
    that `--resume` continues with the seed the run started with."""

    def __init__(self, seed: int):
        self.seed = int(seed) if seed is not None and seed >= 0 else comm.shared_random_seed()

    def state_dict(self):
        return {"seed": self.seed}

    def load_state_dict(self, state):
        self.seed = int(state["seed"])


class StepSeed(hooks.HookBase):
    """Key each iteration's randomness on (run seed, iteration, rank): the global torch, numpy
    and random generators (RPN/ROI box sampling, dropout) and the trunks' edge removal (Sec.
    4.2). A resumed run then draws what an uninterrupted one draws, and processes draw
    differently."""

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


class ProgressPrinter(EventWriter):
    """One line per write: epoch, iteration, losses, lr, images/s, data time and ETA."""

    def __init__(self, max_iter: int, iters_per_epoch: int, window_size: int = 20):
        self.logger = logging.getLogger("detectron2.utils.events")
        self.max_iter, self.iters_per_epoch, self.window = max_iter, iters_per_epoch, window_size

    def write(self):
        storage = get_event_storage()
        it, h = storage.iter, storage.histories()
        if it >= self.max_iter:
            return

        def med(name):
            return h[name].median(storage.count_samples(name, self.window))

        fields = [
            f"epoch: {(it + 1) / self.iters_per_epoch:.2f}",
            f"iter: {it + 1}/{self.max_iter}",
        ]
        fields += [f"{k}: {med(k):.4g}" for k in h if "loss" in k]
        if "lr" in h:
            fields.append(f"lr: {h['lr'].latest():.5g}")
        if "time" in h:
            fields.append(f"images/s: {med('images_per_sec'):.1f}")
            eta = h["time"].median(1000) * (self.max_iter - it - 1)
            fields.append(f"eta: {datetime.timedelta(seconds=int(eta))}")
        if "data_time" in h:
            fields.append(f"data_time: {med('data_time'):.4f}")
        self.logger.info("  ".join(fields))
