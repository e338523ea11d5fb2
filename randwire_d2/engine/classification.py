"""ImageNet-style pretraining of RandWireClassifier on Detectron2's engine (Sec. 4, 4.2).

The recipe: SGD momentum 0.9, lr 0.1 per 256 images (linear scaling), linear warmup (Goyal et
al.), half-period cosine decay, label smoothing 0.1; the rest per regime (configs/imagenet).
Evaluation reports top-1/top-5 at every PRETRAIN.TEST_CROPS size (224 for Tables 2-3, 320 for
Table 4), summed over processes.
"""

import logging
import os
from collections import OrderedDict
from typing import Sequence

import torch
from detectron2.evaluation import inference_on_dataset
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter

from ..checkpoint import load_for_eval
from ..data.cls_loaders import build_cls_test_loader, build_cls_train_loader
from ..data.dataset_checks import check_image_folder
from ..run_settings import RunConfig
from .cuda_graphs import GraphedStepTrainer, check_cuda_graphs
from .evaluation import ClassificationEvaluator
from .trainer import RandWireTrainer, broadcast_buffers

__all__ = ["ClassList", "ClassificationTrainer", "evaluate_checkpoint", "check_gpu_keys"]

DECODES = ("cpu", "cuda")


def check_gpu_keys(cfg, runnable: bool = True) -> None:
    """PRETRAIN.DECODE and PRETRAIN.CUDA_GRAPHS valid and, when `runnable`, able to run here."""
    if cfg.PRETRAIN.DECODE not in DECODES:
        raise ValueError(
            f"PRETRAIN.DECODE={cfg.PRETRAIN.DECODE!r} is invalid: expected one of {list(DECODES)}"
        )
    if not runnable:
        return
    device = cfg.MODEL.DEVICE
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    if cfg.PRETRAIN.DECODE == "cuda" and not cuda:
        raise ValueError(
            f"PRETRAIN.DECODE='cuda' needs CUDA, but the model runs on {device!r}"
            f"{'' if torch.cuda.is_available() else ' (CUDA is not available)'}: set "
            "PRETRAIN.DECODE 'cpu'"
        )
    if cfg.PRETRAIN.CUDA_GRAPHS:
        fp16 = cfg.SOLVER.AMP.ENABLED and cfg.PRETRAIN.AMP_DTYPE == "float16"
        check_cuda_graphs(device if cuda else "cpu", torch.float16 if fp16 else None)


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


def _check_classes(cfg, classes: Sequence[str], where: str) -> None:
    if len(classes) != cfg.MODEL.CLASSIFIER.NUM_CLASSES:
        raise ValueError(
            f"MODEL.CLASSIFIER.NUM_CLASSES={cfg.MODEL.CLASSIFIER.NUM_CLASSES} does not match the "
            f"{len(classes)} classes of {where}"
        )


class ClassificationTrainer(RandWireTrainer):
    """RandWireTrainer for RandWireClassifier on ImageFolder data: deterministic, resumable
    data order, AMP in PRETRAIN.AMP_DTYPE, top-1/top-5 evaluation at several test sizes."""

    def prepare(self, cfg):
        if cfg.SEED < 0:
            raise ValueError(f"SEED={cfg.SEED} is invalid: expected >= 0 (the data order uses it)")
        check_gpu_keys(cfg)
        splits = check_image_folder(cfg.PRETRAIN.DATA_ROOT, ("train", "val"))
        self.classes, samples = splits["train"]
        _check_classes(cfg, self.classes, f"{cfg.PRETRAIN.DATA_ROOT}/train")
        self.iters_per_epoch = max(1, len(samples) // cfg.SOLVER.IMS_PER_BATCH)
        return cfg

    amp_precision_key = "PRETRAIN.AMP_DTYPE"

    @classmethod
    def main_metric(cls, cfg) -> str:
        return f"val_{cfg.PRETRAIN.TEST_CROPS[0]}/top1"

    @classmethod
    def captures_step(cls, cfg) -> bool:
        return bool(cfg.PRETRAIN.CUDA_GRAPHS)

    def build_step_trainer(self, cfg, model, data_loader, optimizer, amp_dtype):
        if not cfg.PRETRAIN.CUDA_GRAPHS:
            return super().build_step_trainer(cfg, model, data_loader, optimizer, amp_dtype)
        check_cuda_graphs(str(next(model.parameters()).device), amp_dtype)
        return GraphedStepTrainer(model, data_loader, optimizer, amp_dtype)

    def checkpointables(self):
        return {"classes": ClassList(self.classes)}

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        if cfg.PRETRAIN.CHANNELS_LAST:
            model = model.to(memory_format=torch.channels_last)
        return model

    @classmethod
    def resumes_data_order(cls, cfg) -> bool:
        return True

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0, seed=None):
        _, samples = check_image_folder(cfg.PRETRAIN.DATA_ROOT, ("train",))["train"]
        # fmt: off
        return build_cls_train_loader(
            samples,
            crop          = cfg.PRETRAIN.TRAIN_CROP,
            crop_scale    = cfg.PRETRAIN.TRAIN_CROP_SCALE,
            global_batch  = cfg.SOLVER.IMS_PER_BATCH,
            seed          = cfg.SEED if seed is None else seed,
            start_iter    = start_iter,
            max_iter      = cfg.SOLVER.MAX_ITER,
            rank          = comm.get_rank(),
            world_size    = comm.get_world_size(),
            num_workers   = cfg.DATALOADER.NUM_WORKERS,
            image_format  = cfg.INPUT.FORMAT,
            pin_memory    = torch.cuda.is_available(),
            # PRETRAIN.DECODE "cuda": workers read bytes; batches decode on the GPU
            decode_device = cfg.MODEL.DEVICE if cfg.PRETRAIN.DECODE == "cuda" else None,
        )
        # fmt: on

    @classmethod
    def build_test_loader(cls, cfg, crop: int):
        _, samples = check_image_folder(cfg.PRETRAIN.DATA_ROOT, ("val",))["val"]
        # fmt: off
        return build_cls_test_loader(
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
        # fmt: on

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """{"val_<crop>": {"top1", "top5"}} for every PRETRAIN.TEST_CROPS size."""
        broadcast_buffers(model)
        results = OrderedDict()
        for crop in cfg.PRETRAIN.TEST_CROPS:
            loader = cls.build_test_loader(cfg, crop)
            results[f"val_{crop}"] = inference_on_dataset(model, loader, ClassificationEvaluator())
        if comm.is_main_process():
            logging.getLogger(__name__).info(describe_results(results, cfg.PRETRAIN.TEST_CROPS))
        return results

    def build_hooks(self):
        ret = super().build_hooks()
        if comm.is_main_process():  # PeriodicWriter: every iteration of a short epoch is written
            ret[-1]._period = min(20, self.iters_per_epoch)
        return ret

    def build_writers(self):
        os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
        return [
            CommonMetricPrinter(self.max_iter, window_size=20),
            # Unsmoothed: each line holds its iteration's values, so the lines a resumed run
            # writes equal the uninterrupted run's.
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"), window_size=1),
            TensorboardXWriter(self.cfg.OUTPUT_DIR),
        ]


def describe_results(results: "OrderedDict", crops: Sequence[int]) -> str:
    """The printed results: one line per test crop, the first the main result."""
    lines = [f"Classification results (main: val_{crops[0]}, PRETRAIN.TEST_CROPS[0]):"]
    for i, (name, r) in enumerate(results.items()):
        ks = sorted(int(k[3:]) for k in r)
        line = f"{name:>10}  " + "  ".join(f"top-{k} {r[f'top{k}']:6.2f}" for k in ks)
        if i:
            line += (
                f"   (extra test size {crops[i]}: PRETRAIN.TEST_CROPS[{i}], not the main result)"
            )
        lines.append(line)
    missing = [k for k in (5,) if all(f"top{k}" not in r for r in results.values())]
    if missing:
        lines.append("(top-5 is not reported: the data have 5 or fewer classes)")
    return "\n".join(lines)


def evaluate_checkpoint(cfg, resume: bool = False):
    """Top-1/top-5 of MODEL.WEIGHTS (with `resume`: the last checkpoint) on PRETRAIN.DATA_ROOT/val
    (no train/ folder needed); every weight must fit the model."""
    cfg = (run := RunConfig.of(cfg)).cfg  # `cfg`: a config or its RunConfig
    classes, _ = check_image_folder(cfg.PRETRAIN.DATA_ROOT, ("val",))["val"]
    model = ClassificationTrainer.build_model(cfg)
    loaded = load_for_eval(run, model, resume)
    if "classes" in loaded and list(loaded["classes"]) != classes:
        raise ValueError(
            f"the checkpoint's classes {loaded['classes'][:5]}... ({len(loaded['classes'])}) "
            f"differ from those of {cfg.PRETRAIN.DATA_ROOT}/val {classes[:5]}... ({len(classes)})"
        )
    _check_classes(cfg, classes, f"{cfg.PRETRAIN.DATA_ROOT}/val")
    return ClassificationTrainer.test(cfg, model)
