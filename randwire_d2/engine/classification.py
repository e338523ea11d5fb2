"""ImageNet-style pretraining of RandWireClassifier on Detectron2's engine (Sec. 4, 4.2).

The recipe: SGD with momentum 0.9, lr 0.1 per 256 images scaled linearly with the global batch,
linear warmup (Goyal et al.), half-period cosine decay, label smoothing 0.1; weight decay, epochs,
dropout and edge removal per regime (configs/imagenet). Schedules are written in epochs
(PRETRAIN.*) and turned into iterations from the training-set size and the global batch
(SOLVER.IMS_PER_BATCH, over all processes). Evaluation reports top-1/top-5 at every
PRETRAIN.TEST_CROPS size (224 for Tables 2-3, 320 for Table 4), summed over processes.
"""

import dataclasses
import datetime
import functools
import logging
import os
import weakref
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks, launch
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset
from detectron2.utils import comm
from detectron2.utils.events import EventWriter, JSONWriter, TensorboardXWriter, get_event_storage
from detectron2.utils.logger import setup_logger

from ..checkpoint import RandWireCheckpointer, find_trunk
from ..data.imagefolder import build_cls_test_loader, build_cls_train_loader, scan_image_folder

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

IMAGENET_TRAIN_IMAGES = 1_281_167
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


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


def topk_correct(
    scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> List[int]:
    """For each k, how many rows of `scores` (N x classes) rank their label among the top k
    (k is capped at the class count)."""
    maxk = min(max(ks), scores.shape[1])
    top = scores.topk(maxk, dim=1).indices
    hit = top == labels.view(-1, 1).to(top.device)
    return [int(hit[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


class ClassificationEvaluator(DatasetEvaluator):
    """Top-k accuracy (percent) of {"scores"} outputs against the inputs' "label", summed over
    every process; every process gets the result."""

    def __init__(self, ks: Sequence[int] = (1, 5)):
        self.ks = tuple(ks)
        self.reset()

    def reset(self):
        self._correct = [0] * len(self.ks)
        self._count = 0

    def process(self, inputs, outputs):
        scores = torch.stack([o["scores"] for o in outputs])
        labels = torch.as_tensor([x["label"] for x in inputs])
        for i, c in enumerate(topk_correct(scores, labels, self.ks)):
            self._correct[i] += c
        self._count += len(inputs)

    def evaluate(self):
        parts = comm.all_gather((self._correct, self._count))
        total = sum(n for _, n in parts)
        if total == 0:
            raise ValueError("evaluated 0 images: the validation set is empty")
        return {
            f"top{k}": 100.0 * sum(c[i] for c, _ in parts) / total for i, k in enumerate(self.ks)
        }


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
        # DDP on CPU must not get device_ids (Detectron2's default passes [local rank]).
        model = create_ddp_model(
            model, broadcast_buffers=False, device_ids=[comm.get_local_rank()] if on_cuda else None
        )
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
