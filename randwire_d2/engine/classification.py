"""ImageNet-style pretraining of RandWireClassifier on Detectron2's engine (Sec. 4, 4.2).

The recipe: SGD with momentum 0.9, lr 0.1 per 256 images scaled linearly with the global batch,
linear warmup (Goyal et al.), half-period cosine decay, label smoothing 0.1; weight decay, epochs,
dropout and edge removal per regime (configs/imagenet). Schedules are written in epochs
(PRETRAIN.*) and turned into iterations from the training-set size and the global batch
(SOLVER.IMS_PER_BATCH, over all processes). Evaluation reports top-1/top-5 at every
PRETRAIN.TEST_CROPS size (224 for Tables 2-3, 320 for Table 4), summed over processes.
"""

import datetime
import functools
import logging
import os
import weakref
from collections import OrderedDict
from typing import Dict, Optional, Sequence

import torch
import torch.distributed as dist
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks, launch
from detectron2.evaluation import inference_on_dataset
from detectron2.utils import comm
from detectron2.utils.events import EventWriter, JSONWriter, TensorboardXWriter, get_event_storage
from detectron2.utils.logger import setup_logger

from ..checkpoint import RandWireCheckpointer, find_trunk
from ..data.imagefolder import build_cls_test_loader, build_cls_train_loader, scan_image_folder
from .detection import create_ddp_model
from .distributed import CloseProcessGroupAfter
from .evaluation import ClassificationEvaluator, topk_correct
from .schedule import (
    IMAGENET_TRAIN_IMAGES,
    Schedule,
    apply_schedule,
    dry_run_schedule,
    resolve_schedule,
)

__all__ = [
    "IMAGENET_TRAIN_IMAGES",
    "Schedule",
    "resolve_schedule",
    "dry_run_schedule",
    "apply_schedule",
    "topk_correct",
    "ClassificationEvaluator",
    "ClassificationTrainer",
    "default_device",
    "training_set_size",
    "evaluate_checkpoint",
    "launch_from_env_or_args",
]

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class ClassList:
    """The class names of the training folder, checkpointed; resuming with others is an error."""

    def __init__(self, classes: Sequence[str]):
        self.classes = list(classes)

    def state_dict(self):
        return list(self.classes)

    def load_state_dict(self, classes):
        if list(classes) != self.classes:
            raise ValueError(
                f"the checkpoint was trained on classes {list(classes)[:5]}... ({len(classes)}), "
                f"but the data has {self.classes[:5]}... ({len(self.classes)})"
            )


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


class EdgeRemovalSeed(hooks.HookBase):
    """Key each iteration's edge removal (Sec. 4.2) on (SEED, iteration, rank): a resumed run
    removes the same edges as an uninterrupted one, and processes remove different edges."""

    def __init__(self, seed: int):
        self.seed = seed
        self.trunk = None

    def before_train(self):
        _, self.trunk = find_trunk(self.trainer.model)

    def before_step(self):
        self.trunk.seed_edge_removal((self.seed, self.trainer.iter, comm.get_rank()))


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


@functools.lru_cache(maxsize=8)
def _scan(folder: str):
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{folder!r} is not a folder: expected ImageFolder data (PRETRAIN.DATA_ROOT/<split>/<class>/*)"
        )
    return scan_image_folder(folder)


def default_device(cfg):
    """MODEL.DEVICE, or "cpu" when it asks for CUDA on a machine without it."""
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).warning(
            f"MODEL.DEVICE={cfg.MODEL.DEVICE!r} but CUDA is not available: using 'cpu'"
        )
        return "cpu"
    return cfg.MODEL.DEVICE


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (BN statistics), so that all evaluate, and rank 0
    saves, the same model."""
    if comm.get_world_size() > 1:
        for b in getattr(model, "module", model).buffers():
            dist.broadcast(b.data, src=0)


class ClassificationTrainer(DefaultTrainer):
    """DefaultTrainer for RandWireClassifier on ImageFolder data: epoch-based schedule,
    deterministic resumable data order, DDP without device_ids on CPU, AMP on GPU, top-1/top-5
    evaluation at several test sizes."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        logger = logging.getLogger("detectron2")
        if not logger.isEnabledFor(logging.INFO):
            setup_logger()
        if cfg.SEED < 0:
            raise ValueError(
                f"SEED={cfg.SEED} is invalid: expected >= 0 (the data order is keyed on it)"
            )
        self.classes, self.train_samples = _scan(os.path.join(cfg.PRETRAIN.DATA_ROOT, "train"))
        if len(self.classes) != cfg.MODEL.CLASSIFIER.NUM_CLASSES:
            raise ValueError(
                f"MODEL.CLASSIFIER.NUM_CLASSES={cfg.MODEL.CLASSIFIER.NUM_CLASSES} does not match the "
                f"{len(self.classes)} class folders of {cfg.PRETRAIN.DATA_ROOT}/train"
            )
        self.schedule = resolve_schedule(cfg, len(self.train_samples), comm.get_world_size())
        cfg = apply_schedule(cfg, self.schedule)
        logger.info(f"Schedule:\n{self.schedule}")

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        on_cuda = next(model.parameters()).device.type == "cuda"
        model = create_ddp_model(model, broadcast_buffers=False)  # no device_ids on CPU
        loader = self.build_train_loader(cfg, self.train_samples, start_iter=0)
        if cfg.SOLVER.AMP.ENABLED and on_cuda:
            dtype = AMP_DTYPES.get(cfg.PRETRAIN.AMP_DTYPE)
            if dtype is None:
                raise ValueError(
                    f"PRETRAIN.AMP_DTYPE={cfg.PRETRAIN.AMP_DTYPE!r} is unknown: expected one of {sorted(AMP_DTYPES)}"
                )
            scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
            self._trainer = AMPTrainer(
                model, loader, optimizer, grad_scaler=scaler, precision=dtype
            )
        else:
            if cfg.SOLVER.AMP.ENABLED:
                logger.warning("SOLVER.AMP.ENABLED needs CUDA: training in float32 on CPU")
            self._trainer = SimpleTrainer(model, loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = RandWireCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            cfg=cfg,
            trainer=weakref.proxy(self),
            classes=ClassList(self.classes),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume)
        # Continue the data order where the checkpoint left it.
        self._trainer.reset_data_loader(
            lambda: self.build_train_loader(
                self.cfg, self.train_samples, start_iter=self.start_iter
            )
        )

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        if cfg.PRETRAIN.CHANNELS_LAST:
            model = model.to(memory_format=torch.channels_last)
        return model

    @classmethod
    def build_train_loader(cls, cfg, samples, start_iter: int = 0):
        # fmt: off
        return build_cls_train_loader(
            samples,
            crop         = cfg.PRETRAIN.TRAIN_CROP,
            crop_scale   = cfg.PRETRAIN.TRAIN_CROP_SCALE,
            global_batch = cfg.SOLVER.IMS_PER_BATCH,
            seed         = cfg.SEED,
            start_iter   = start_iter,
            max_iter     = cfg.SOLVER.MAX_ITER,
            rank         = comm.get_rank(),
            world_size   = comm.get_world_size(),
            num_workers  = cfg.DATALOADER.NUM_WORKERS,
            image_format = cfg.INPUT.FORMAT,
            pin_memory   = torch.cuda.is_available(),
        )
        # fmt: on

    @classmethod
    def build_test_loaders(cls, cfg) -> Dict[int, torch.utils.data.DataLoader]:
        """{crop size: loader of this process's shard of PRETRAIN.DATA_ROOT/val}."""
        classes, samples = _scan(os.path.join(cfg.PRETRAIN.DATA_ROOT, "val"))
        train_classes, _ = _scan(os.path.join(cfg.PRETRAIN.DATA_ROOT, "train"))
        if classes != train_classes:
            raise ValueError(
                f"val classes {classes[:5]}... differ from train classes {train_classes[:5]}..."
            )
        # fmt: off
        return {
            crop: build_cls_test_loader(
                samples,
                crop         = crop,
                crop_ratio   = cfg.PRETRAIN.TEST_CROP_RATIO,
                batch_size   = max(1, cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()),
                rank         = comm.get_rank(),
                world_size   = comm.get_world_size(),
                num_workers  = cfg.DATALOADER.NUM_WORKERS,
                image_format = cfg.INPUT.FORMAT,
                pin_memory   = torch.cuda.is_available(),
            )
            for crop in cfg.PRETRAIN.TEST_CROPS
        }
        # fmt: on

    @classmethod
    def test(cls, cfg, model, loaders=None):
        """{"val_<crop>": {"top1", "top5"}} for every PRETRAIN.TEST_CROPS size."""
        logger = logging.getLogger(__name__)
        loaders = loaders or cls.build_test_loaders(cfg)
        results = OrderedDict()
        for crop, loader in loaders.items():
            results[f"val_{crop}"] = inference_on_dataset(model, loader, ClassificationEvaluator())
        if comm.is_main_process():
            lines = [
                f"{name:>10}  top-1 {r['top1']:6.2f}  top-5 {r['top5']:6.2f}"
                for name, r in results.items()
            ]
            logger.info("Classification results:\n" + "\n".join(lines))
        return results

    def build_hooks(self):
        cfg, s = self.cfg, self.schedule
        test_loaders = {}

        def test_and_save_results():
            broadcast_buffers(self.model)
            if not test_loaders:  # built once: their workers persist across evaluations
                test_loaders.update(self.build_test_loaders(cfg))
            self._last_eval_results = self.test(cfg, self.model, test_loaders)
            return self._last_eval_results

        ret = [
            hooks.IterationTimer(),
            hooks.LRScheduler(),
            ThroughputHook(s.global_batch),
            EdgeRemovalSeed(cfg.SEED),
        ]
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, s.checkpoint_period))
        ret.append(hooks.EvalHook(s.eval_period, test_and_save_results))
        if comm.is_main_process():
            ret.append(
                hooks.PeriodicWriter(self.build_writers(), period=min(20, s.iters_per_epoch))
            )
        return ret

    def build_writers(self):
        os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
        return [
            ProgressPrinter(self.max_iter, self.schedule.iters_per_epoch),
            # Unsmoothed: each line holds its iteration's values, so the lines a resumed run
            # writes equal the uninterrupted run's.
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"), window_size=1),
            TensorboardXWriter(self.cfg.OUTPUT_DIR),
        ]


def training_set_size(cfg) -> Optional[int]:
    """Images in PRETRAIN.DATA_ROOT/train, or None when that folder does not exist."""
    folder = os.path.join(cfg.PRETRAIN.DATA_ROOT, "train")
    return len(_scan(folder)[1]) if os.path.isdir(folder) else None


def evaluate_checkpoint(cfg, resume: bool = False):
    """Top-1/top-5 of MODEL.WEIGHTS (or, with resume, OUTPUT_DIR's last checkpoint)."""
    model = ClassificationTrainer.build_model(cfg)
    checkpointer = RandWireCheckpointer(model, cfg.OUTPUT_DIR, cfg=cfg)
    if not cfg.MODEL.WEIGHTS and not (resume and checkpointer.has_checkpoint()):
        raise ValueError(
            "MODEL.WEIGHTS='' and no checkpoint to resume: --eval-only needs weights to evaluate"
        )
    loaded = checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
    classes, _ = _scan(os.path.join(cfg.PRETRAIN.DATA_ROOT, "val"))
    if "classes" in loaded and list(loaded["classes"]) != classes:
        raise ValueError(
            f"the checkpoint's classes {loaded['classes'][:5]}... differ from the val classes {classes[:5]}..."
        )
    return ClassificationTrainer.test(cfg, model)


def _init_from_torchrun_env() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR)."""
    if not all(k in os.environ for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")):
        return False
    local_rank = int(os.environ["LOCAL_RANK"])
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", torch.cuda.device_count() or 1))
    has_gpu = torch.cuda.is_available()
    if has_gpu:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if has_gpu else "gloo", init_method="env://")
    comm.create_local_process_group(local_size)
    comm.synchronize()
    return True


def launch_from_env_or_args(main_func, args) -> None:
    """Run main_func(args) in the process group torchrun set up, or spawn args.num_gpus
    processes per machine with Detectron2's launch (gloo on CPU)."""
    main_func = CloseProcessGroupAfter(main_func)
    if _init_from_torchrun_env():
        main_func(args)
        return
    launch(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
