"""RandWireTrainer: what the classification and detection trainers share.

Detectron2's DefaultTrainer, with: DistributedDataParallel that also works on CPU (gloo;
Detectron2's `create_ddp_model` passes `device_ids` even without CUDA), checkpoints that carry
the wiring (RandWireCheckpointer), AMP only where it can run, an OUTPUT_DIR that one run holds at
a time, and a resume that says what it restored and refuses what the restored state contradicts.
"""

import fcntl
import glob
import inspect
import json
import logging
import os
import socket
import sys
import time
import weakref
from typing import Optional, Tuple

import torch
import torch.distributed as dist
from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import RandWireCheckpointer, SafeDetectionCheckpointer, check_input_normalization
from ..config import flatten, flatten_lazy
from ..modeling.randwire import RandWire
from .hooks import BestCheckpoint, RunSeed, StepSeed, ThroughputHook

__all__ = [
    "RandWireTrainer",
    "step_trainer",
    "create_ddp_model",
    "build_checkpointer",
    "claim_output_dir",
    "resolve_device",
    "check_amp_dtype",
    "check_iterations",
]

logger = logging.getLogger(__name__)
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
# Keys whose values a resumed run takes from the checkpoint's optimizer and data order, whatever
# the config says: a change is refused rather than printed and ignored.
RESTORED_KEYS = (
    "SOLVER.BASE_LR",
    "SOLVER.IMS_PER_BATCH",
    "SOLVER.MOMENTUM",
    "SOLVER.NESTEROV",
    "SOLVER.WEIGHT_DECAY",
    "SOLVER.WEIGHT_DECAY_NORM",
    "SEED",
)
LAZY_RESTORED_KEYS = (  # the same, in a LazyConfig
    "optimizer.lr",
    "optimizer.momentum",
    "optimizer.nesterov",
    "optimizer.weight_decay",
    "optimizer.params.weight_decay_norm",
    "dataloader.train.total_batch_size",
    "train.seed",
)
_HELD_OUTPUT_DIRS = {}  # absolute path -> the open, locked lock file of this process


def create_ddp_model(
    model: torch.nn.Module, side_stream: bool = False, **kwargs
) -> torch.nn.Module:
    """DistributedDataParallel(model) when there are > 1 processes; `device_ids` only on CUDA.
    Detectron2's `broadcast_buffers` becomes `forward_sync_buffers` where torch deprecates the
    former (2.13+): the same per-forward behaviour, and buffers still agree at the start. With
    `side_stream` (a step captured in a CUDA graph) DDP is built on a side stream, as capturing
    its backward requires."""
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


def build_checkpointer(model, save_dir: str = "", cfg=None, **kwargs):
    """RandWireCheckpointer (wiring + fingerprint in every file) for models with a RandWire
    trunk; SafeDetectionCheckpointer (Detectron2's, loading without running code) for the
    ResNet baselines."""
    inner = getattr(model, "module", model)
    if any(isinstance(m, RandWire) for m in inner.modules()):
        return RandWireCheckpointer(model, save_dir, cfg=cfg, **kwargs)
    kwargs.pop("strict", None)
    return SafeDetectionCheckpointer(model, save_dir, **kwargs)


def resolve_device(cfg) -> None:
    """MODEL.DEVICE (a LazyConfig's train.device) "cuda*" on a machine without CUDA becomes
    "cpu", with a warning."""
    node, key, name = (
        (cfg.MODEL, "DEVICE", "MODEL.DEVICE")
        if "MODEL" in cfg
        else (
            cfg.train,
            "device",
            "train.device",
        )
    )
    if node[key].startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"{name}={node[key]!r} but CUDA is not available: using CPU")
        node[key] = "cpu"


# The iteration counts of a run, by config system: (yaml key, LazyConfig key, least value).
ITERATION_KEYS = (
    ("SOLVER.MAX_ITER", "train.max_iter", 1),
    ("SOLVER.CHECKPOINT_PERIOD", "train.checkpointer.period", 1),
    ("TEST.EVAL_PERIOD", "train.eval_period", 0),
    ("SOLVER.WARMUP_ITERS", None, 0),
)


def check_iterations(cfg) -> None:
    """The iteration counts of a yaml CfgNode or a LazyConfig (ITERATION_KEYS) are integers in
    range: `train.max_iter=-5` would train nothing and evaluate the untrained model, 0 divide by
    zero after evaluating, a string fail inside the scheduler."""
    from omegaconf import OmegaConf

    lazy = not isinstance(cfg, CfgNode)
    for yaml_key, lazy_key, least in ITERATION_KEYS:
        key = lazy_key if lazy else yaml_key
        if key is None:
            continue
        if lazy:
            value = OmegaConf.select(cfg, key, default=None)
            if value is None and key != "train.max_iter":
                continue
        else:
            value = flatten(cfg)[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{key}={value!r} is invalid: expected an integer >= {least}")


def check_amp_dtype(cfg) -> torch.dtype:
    if cfg.PRETRAIN.AMP_DTYPE not in AMP_DTYPES:
        raise ValueError(
            f"PRETRAIN.AMP_DTYPE={cfg.PRETRAIN.AMP_DTYPE!r} is invalid: expected one of "
            f"{sorted(AMP_DTYPES)}"
        )
    return AMP_DTYPES[cfg.PRETRAIN.AMP_DTYPE]


def claim_output_dir(output_dir: str, resume: bool = True, overwrite: bool = False) -> bool:
    """Hold OUTPUT_DIR for this run (main process; until release or exit) and return whether
    this call took it. A directory another live process holds is refused, naming the holder.
    Without `resume`, checkpoints of an earlier run are refused unless `overwrite` (which
    deletes them and its metrics.json). Partial files of a killed run (.tmp_*) are removed."""
    if not comm.is_main_process():
        return False
    path = os.path.abspath(output_dir)
    took = path not in _HELD_OUTPUT_DIRS
    if took:
        os.makedirs(path, exist_ok=True)
        f = open(os.path.join(path, ".lock"), "a+")
        try:  # a POSIX lock: per process, not inherited by data loader workers
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RuntimeError(
                f"OUTPUT_DIR={output_dir!r} is in use by {holder}. Two runs in one OUTPUT_DIR "
                "overwrite each other's checkpoints and metrics: choose another OUTPUT_DIR."
            ) from None
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}: ")
        f.write(" ".join(sys.argv) + "\n")
        f.flush()
        _HELD_OUTPUT_DIRS[path] = f
    for tmp in glob.glob(os.path.join(path, ".tmp_*")):
        os.remove(tmp)  # we hold the directory: no one else is writing it
    old = sorted(glob.glob(os.path.join(path, "*.pth")) + glob.glob(os.path.join(path, "last_*")))
    if old and not resume:
        names = ", ".join(os.path.basename(p) for p in old[:4]) + (", ..." if len(old) > 4 else "")
        if not overwrite:
            if took:
                release_output_dir(path)
            raise FileExistsError(
                f"OUTPUT_DIR={output_dir!r} holds checkpoints of an earlier run ({names}): pass "
                "--resume to continue it, choose another OUTPUT_DIR, or pass --overwrite to "
                "delete them and start over"
            )
        for p in old + glob.glob(os.path.join(path, "metrics.json")):
            os.remove(p)
        logger.warning(f"--overwrite: deleted {names} and metrics.json of {output_dir}")
    return took


def release_output_dir(output_dir: str) -> None:
    f = _HELD_OUTPUT_DIRS.pop(os.path.abspath(output_dir), None)
    if f is not None:
        f.close()


def check_frozen_stages_have_weights(
    freeze_at: int,
    weights: str,
    keys: Tuple[str, str] = ("MODEL.BACKBONE.FREEZE_AT", "MODEL.WEIGHTS"),
) -> None:
    """Frozen stages (`keys[0]` > 0) without pretrained weights (`keys[1]`) would stay random."""
    freeze_key, weights_key = keys
    if freeze_at > 0 and not weights:
        raise ValueError(
            f"{freeze_key}={freeze_at} freezes the first {freeze_at} stages, but {weights_key} "
            f"is empty: they would stay random. Give pretrained {weights_key}, or set "
            f"{freeze_key} 0 to train from scratch."
        )


def check_resume(cfg, checkpoint: dict, start_iter: int) -> None:
    """Refuse a resume whose config contradicts the restored optimizer / data state or leaves
    nothing to train; name the other solver/test changes it applies. `cfg` is a yaml CfgNode or
    a LazyConfig."""
    if isinstance(cfg, CfgNode):
        old = flatten(CfgNode.load_cfg(checkpoint["cfg"])) if "cfg" in checkpoint else {}
        new, restored, shown = flatten(cfg), RESTORED_KEYS, ("SOLVER", "TEST", "PRETRAIN")
        max_key, weights_key = "SOLVER.MAX_ITER", "MODEL.WEIGHTS"
    else:
        old, new = checkpoint.get("lazy_cfg", {}), flatten_lazy(cfg)
        restored, shown = LAZY_RESTORED_KEYS, ("optimizer", "lr_multiplier", "train", "dataloader")
        max_key, weights_key = "train.max_iter", "train.init_checkpoint"
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
    changed = [k for k in new if k in old and _as_lists(old[k]) != _as_lists(new[k])]
    refused = [f"{k} {old[k]!r} -> {new[k]!r}" for k in changed if k in restored]
    if refused:
        raise ValueError(
            "--resume restores the checkpoint's optimizer and data order, which contradict the "
            f"config: {'; '.join(refused)}. Resume with the checkpoint's values, or start a new "
            f"OUTPUT_DIR with {weights_key} set to the checkpoint."
        )
    applied = [f"{k} {old[k]!r} -> {new[k]!r}" for k in changed if k.split(".")[0] in shown]
    if applied:
        logger.warning("--resume applies changed keys: " + "; ".join(applied))


def _as_lists(value):
    """A config value with tuples as lists: a checkpoint's yaml holds lists where the running
    config holds tuples (SOLVER.STEPS), and they are the same setting."""
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value


def log_resume(start_iter: int, source, seed: int, data_order: bool = True) -> None:
    """The line both trainers print when they resume: what was restored, and from where."""
    what = "model, optimizer, lr scheduler, iteration, " + ("data order, " if data_order else "")
    where = source if isinstance(source, str) else "the last checkpoint"
    logger.info(f"Resumed at iteration {start_iter}: {what}run seed {seed} restored from {where}")


def truncate_metrics(output_dir: str, start_iter: int) -> None:
    """Drop metrics.json lines of iterations >= start_iter (written after the checkpoint a run
    resumes from), so that every iteration appears once."""
    path = os.path.join(output_dir, "metrics.json")
    if not comm.is_main_process() or not os.path.isfile(path):
        return
    with open(path, "r+") as f:
        lines = f.readlines()
        keep = [ln for ln in lines if not ln.strip() or _iteration(ln) < start_iter]
        f.seek(0)
        f.writelines(keep)
        f.truncate()
    if len(keep) < len(lines):
        logger.info(
            f"metrics.json: dropped {len(lines) - len(keep)} lines after iteration {start_iter - 1}"
        )


def _iteration(line: str) -> int:
    try:
        return int(json.loads(line).get("iteration", -1))
    except ValueError:  # a line cut by a kill
        return -1


def step_trainer(model, data_loader, optimizer, amp_dtype: Optional[torch.dtype] = None):
    """The trainer of one iteration: SimpleTrainer, or AMPTrainer in `amp_dtype` (float16 with
    a GradScaler, bfloat16 without). Arguments by keyword: AMPTrainer's third positional one is
    gather_metric_period, not the scaler."""
    if amp_dtype is None:
        return SimpleTrainer(model, data_loader, optimizer)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    return AMPTrainer(model, data_loader, optimizer, grad_scaler=scaler, precision=amp_dtype)


class RandWireTrainer(DefaultTrainer):
    """DefaultTrainer + CPU-capable DDP + RandWireCheckpointer + AMP where it can run + an
    OUTPUT_DIR held for the run + a checked resume. Tasks override the Detectron2 classmethods
    (build_train_loader, test, ...) and `prepare(cfg)`."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.prepare(cfg)
        self._claimed = claim_output_dir(cfg.OUTPUT_DIR)
        self.run_seed = RunSeed(cfg.SEED)
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg, seed=self.run_seed.seed)
        model = create_ddp_model(
            model, side_stream=self.captures_step(cfg), broadcast_buffers=False
        )
        on_cuda = next(model.parameters()).device.type == "cuda"
        if cfg.SOLVER.AMP.ENABLED and not on_cuda:
            logger.warning("SOLVER.AMP.ENABLED needs CUDA: training in float32 on CPU")
        amp_dtype = self.amp_dtype(cfg) if cfg.SOLVER.AMP.ENABLED and on_cuda else None
        self._trainer = self.build_step_trainer(cfg, model, data_loader, optimizer, amp_dtype)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = build_checkpointer(
            model,
            cfg.OUTPUT_DIR,
            cfg=cfg,
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

    def amp_dtype(self, cfg) -> torch.dtype:
        return torch.float16

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
        """The training batches from iteration `start_iter` on, in the order of run seed `seed`
        (SEED when None). Here Detectron2's loader, whose order restarts on resume (said when
        resuming); the tasks override it with loaders that continue where a run stopped."""
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
        extras = self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        resumed = extras.pop("__resumed_from__", None) or (
            resume and self.checkpointer.has_checkpoint()
        )
        if resumed:
            self.start_iter = self.iter + 1
            check_resume(self.cfg, extras, self.start_iter)
        # The data continue where the checkpoint left them (seed restored with the checkpoint).
        self._trainer.reset_data_loader(
            lambda: self.build_train_loader(self.cfg, self.start_iter, self.run_seed.seed)
        )
        if resumed:
            truncate_metrics(self.cfg.OUTPUT_DIR, self.start_iter)
            log_resume(
                self.start_iter, resumed, self.run_seed.seed, self.resumes_data_order(self.cfg)
            )
            return extras
        check_frozen_stages_have_weights(self.cfg.MODEL.BACKBONE.FREEZE_AT, self.cfg.MODEL.WEIGHTS)
        check_input_normalization(self.cfg, extras)
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
        metric = self.cfg.TEST.BEST_CHECKPOINT_METRIC
        if metric:
            best = BestCheckpoint(
                self.checkpointer,
                self.cfg.TEST.EVAL_PERIOD,
                self.main_metric(self.cfg) if metric == "auto" else metric,
                self.cfg.TEST.BEST_CHECKPOINT_MODE,
                "TEST.BEST_CHECKPOINT_METRIC",
            )
            at = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook))
            ret.insert(at + 1, best)
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
    """Give every process rank 0's buffers (BN statistics), so that all evaluate, and rank 0
    saves, the same model."""
    if comm.get_world_size() > 1:
        for b in getattr(model, "module", model).buffers():
            dist.broadcast(b.data, src=0)
