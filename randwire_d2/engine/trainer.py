"""RandWireTrainer: what the classification and detection trainers share."""

import inspect
import logging
import weakref
from typing import Optional

import torch
import torch.distributed as dist
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import build_checkpointer
from ..run_settings import RunConfig
from .hooks import RunSeed, StepSeed, ThroughputHook, best_checkpoint_hook, pending_evaluation_hook
from .output_dir import claim_output_dir, release_output_dir
from .resume import resume_or_load
from .run_setup import amp_dtype

__all__ = ["RandWireTrainer", "step_trainer", "create_ddp_model", "broadcast_buffers"]

logger = logging.getLogger(__name__)


def create_ddp_model(
    model: torch.nn.Module, side_stream: bool = False, **kwargs
) -> torch.nn.Module:
    """DistributedDataParallel(model) when there are > 1 processes; `device_ids` only on CUDA
    (Detectron2's passes them even without), `broadcast_buffers` as `forward_sync_buffers` where
    torch deprecates it (2.13+); with `side_stream` (a CUDA-graph capture) built on a side stream.
    """
    if comm.get_world_size() == 1:
        return model
    cuda = next(model.parameters()).device.type == "cuda"
    if "device_ids" not in kwargs and cuda:
        kwargs["device_ids"] = [comm.get_local_rank()]
    if "broadcast_buffers" in kwargs and _DDP_HAS_FORWARD_SYNC:
        kwargs.setdefault("forward_sync_buffers", kwargs.pop("broadcast_buffers"))
    if side_stream and cuda:
        with torch.cuda.stream(torch.cuda.Stream()):
            return DistributedDataParallel(model, **kwargs)
    return DistributedDataParallel(model, **kwargs)


_DDP_HAS_FORWARD_SYNC = (
    "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
)


def step_trainer(model, data_loader, optimizer, amp_dtype: Optional[torch.dtype] = None):
    """SimpleTrainer, or AMPTrainer in `amp_dtype` (float16 with a GradScaler). Keywords:
    AMPTrainer's third positional argument is gather_metric_period, not the scaler."""
    if amp_dtype is None:
        return SimpleTrainer(model, data_loader, optimizer)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    return AMPTrainer(model, data_loader, optimizer, grad_scaler=scaler, precision=amp_dtype)


class RandWireTrainer(DefaultTrainer):
    """DefaultTrainer + CPU-capable DDP + RandWireCheckpointer + AMP where it can run + an
    OUTPUT_DIR held for the run + a checked resume. Tasks override the classmethods and `prepare`.
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        self.run = RunConfig.of(cfg)  # the run's settings (`cfg` may be them), passed down
        self.run.cfg = cfg = self.prepare(self.run.cfg)  # the config it trains with
        self._claimed = claim_output_dir(cfg.OUTPUT_DIR)
        self.run_seed = RunSeed(cfg.SEED)
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg, seed=self.run_seed.seed)
        model = create_ddp_model(
            model, side_stream=self.captures_step(cfg), broadcast_buffers=False
        )
        on_cuda = next(model.parameters()).device.type == "cuda"
        dtype = amp_dtype(self.run, on_cuda, self.amp_precision_key)
        self._trainer = self.build_step_trainer(cfg, model, data_loader, optimizer, dtype)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = build_checkpointer(
            model,
            cfg.OUTPUT_DIR,
            cfg=self.run,
            trainer=weakref.proxy(self),
            run_seed=self.run_seed,
            **self.checkpointables(),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def prepare(self, cfg):
        """The config this trainer trains with (a task may resolve or scale keys)."""
        return DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

    # The key of the AMP precision (None: float16).
    amp_precision_key: Optional[str] = None

    @classmethod
    def captures_step(cls, cfg) -> bool:
        """Whether the step runs as a captured CUDA graph (see build_step_trainer)."""
        return False

    def build_step_trainer(self, cfg, model, data_loader, optimizer, amp_dtype):
        """The trainer of one iteration (`step_trainer`; a task may capture it in a graph)."""
        return step_trainer(model, data_loader, optimizer, amp_dtype)

    def checkpointables(self) -> dict:
        return {}

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0, seed: Optional[int] = None):
        """The training batches from iteration `start_iter` on, in run seed `seed`'s order. Here
        Detectron2's loader, whose order restarts on resume; tasks override it."""
        if start_iter:
            logger.warning(
                f"--resume: {cls.__name__}'s training data restart their order: the data of "
                f"iteration {start_iter} on differ from an uninterrupted run's"
            )
        return DefaultTrainer.build_train_loader(cfg)

    @classmethod
    def resumes_data_order(cls, cfg) -> bool:
        """Whether build_train_loader(cfg, start_iter) continues an interrupted run's data."""
        return False

    def resume_or_load(self, resume=True):
        self.start_iter, extras = resume_or_load(
            self.run,
            self.checkpointer,
            self,
            self._trainer,
            resume,
            lambda start_iter: self.build_train_loader(self.cfg, start_iter, self.run_seed.seed),
            self.run_seed,
            self.resumes_data_order(self.cfg),
        )
        return extras

    def train(self):
        try:
            return super().train()
        finally:
            if self._claimed:
                release_output_dir(self.cfg.OUTPUT_DIR)

    def build_hooks(self):
        ret = super().build_hooks()
        extra = [ThroughputHook(self.cfg.SOLVER.IMS_PER_BATCH), StepSeed(self.run_seed)]
        ret = ret[:2] + extra + ret[2:]  # after IterationTimer and LRScheduler
        best = best_checkpoint_hook(self.run, self.checkpointer, self.main_metric(self.cfg))
        at = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook)) + 1
        if best is not None:
            ret.insert(at, best)
            at += 1
        ret.insert(at, pending_evaluation_hook(self.run, ret, self.main_metric(self.cfg)))
        return ret

    @classmethod
    def main_metric(cls, cfg) -> str:
        """The metric TEST.BEST_CHECKPOINT_METRIC "auto" keeps the best of."""
        return "bbox/AP"

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        broadcast_buffers(model)
        return super().test(cfg, model, evaluators)


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (BN statistics), so that all evaluate the same model."""
    if comm.get_world_size() > 1:
        for b in getattr(model, "module", model).buffers():
            dist.broadcast(b.data, src=0)
