"""A run's settings read from either config system by name (SETTINGS: "weights" is MODEL.WEIGHTS
or train.init_checkpoint), so that each rule of a run is written once. A LazyConfig may lack a
key, which then reads as the default given.
"""

from typing import List, Optional, Tuple

from detectron2.config import CfgNode

from .config import flatten, flatten_lazy
from .trust.yaml_safe import loads_yaml

__all__ = ["RunConfig", "SETTINGS", "RESTORED", "NUM_CLASSES_KEYS", "is_lazy", "changed_keys"]

# setting -> (yaml key, LazyConfig key); None where that config system has no such setting.
SETTINGS = {
    "device": ("MODEL.DEVICE", "train.device"),
    "output_dir": ("OUTPUT_DIR", "train.output_dir"),
    "weights": ("MODEL.WEIGHTS", "train.init_checkpoint"),
    "seed": ("SEED", "train.seed"),
    "max_iter": ("SOLVER.MAX_ITER", "train.max_iter"),
    "checkpoint_period": ("SOLVER.CHECKPOINT_PERIOD", "train.checkpointer.period"),
    "eval_period": ("TEST.EVAL_PERIOD", "train.eval_period"),
    "warmup_iters": ("SOLVER.WARMUP_ITERS", None),
    "amp": ("SOLVER.AMP.ENABLED", "train.amp.enabled"),
    "amp_precision": (None, "train.amp.precision"),
    "freeze_at": ("MODEL.BACKBONE.FREEZE_AT", "model.backbone.bottom_up.freeze_at"),
    "best_metric": ("TEST.BEST_CHECKPOINT_METRIC", "train.best_checkpoint.metric"),
    "best_mode": ("TEST.BEST_CHECKPOINT_MODE", "train.best_checkpoint.mode"),
    "execution": ("MODEL.RANDWIRE.EXECUTION", "model.backbone.bottom_up.execution"),
    "compile": ("MODEL.RANDWIRE.COMPILE", None),
    "memory_efficient": (
        "MODEL.RANDWIRE.MEMORY_EFFICIENT",
        "model.backbone.bottom_up.memory_efficient",
    ),
    "pixel_mean": ("MODEL.PIXEL_MEAN", "model.pixel_mean"),
    "pixel_std": ("MODEL.PIXEL_STD", "model.pixel_std"),
    "input_format": ("INPUT.FORMAT", "model.input_format"),
    "train_datasets": ("DATASETS.TRAIN", "dataloader.train.dataset.names"),
    "test_datasets": ("DATASETS.TEST", "dataloader.test.dataset.names"),
    "mask_on": ("MODEL.MASK_ON", "dataloader.train.mapper.use_instance_mask"),
    "mask_format": ("INPUT.MASK_FORMAT", "dataloader.train.mapper.instance_mask_format"),
    "base_lr": ("SOLVER.BASE_LR", "optimizer.lr"),
    "batch": ("SOLVER.IMS_PER_BATCH", "dataloader.train.total_batch_size"),
    "momentum": ("SOLVER.MOMENTUM", "optimizer.momentum"),
    "nesterov": ("SOLVER.NESTEROV", "optimizer.nesterov"),
    "weight_decay": ("SOLVER.WEIGHT_DECAY", "optimizer.weight_decay"),
    "weight_decay_norm": ("SOLVER.WEIGHT_DECAY_NORM", "optimizer.params.weight_decay_norm"),
}
# What a resume restores whatever the config says: a change is refused, not silently ignored.
RESTORED = ("base_lr", "batch", "momentum", "nesterov", "weight_decay", "weight_decay_norm", "seed")
# The config sections whose changes a resume applies, and names (yaml, LazyConfig).
RESUME_SECTIONS = (
    ("SOLVER", "TEST", "PRETRAIN"),
    ("optimizer", "lr_multiplier", "train", "dataloader"),
)
# Meta-architecture -> the yaml key holding its number of object classes (None: no classes).
NUM_CLASSES_KEYS = {
    "GeneralizedRCNN": "MODEL.ROI_HEADS.NUM_CLASSES",
    "PanopticFPN": "MODEL.ROI_HEADS.NUM_CLASSES",
    "RetinaNet": "MODEL.RETINANET.NUM_CLASSES",
    "ProposalNetwork": None,
}
LAZY_NUM_CLASSES_KEYS = ("model.roi_heads.num_classes", "model.num_classes")  # R-CNN; RetinaNet


def is_lazy(cfg) -> bool:
    return not isinstance(cfg, CfgNode)


class RunConfig:
    """The settings of `cfg`, a yaml CfgNode or a LazyConfig, by the names of SETTINGS."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.lazy = is_lazy(cfg)

    @classmethod
    def of(cls, cfg) -> "RunConfig":
        """`cfg` itself where it is a RunConfig, else one of the config `cfg`."""
        return cfg if isinstance(cfg, RunConfig) else cls(cfg)

    def key(self, name: str) -> Optional[str]:
        """The config key of setting `name` in this config system (None: it has none)."""
        return SETTINGS[name][self.lazy]

    def get(self, name: str, default=None):
        return self.select(self.key(name), default)

    def select(self, key: Optional[str], default=None):
        """The value at dotted `key` (`default` when the key is None or, lazy, absent)."""
        if key is None:
            return default
        if self.lazy:
            from omegaconf import OmegaConf

            return OmegaConf.select(self.cfg, key, default=default)
        node = self.cfg
        for part in key.split("."):
            node = node[part]
        return node

    def set(self, name: str, value) -> None:
        *parents, last = self.key(name).split(".")
        node = self.cfg
        for part in parents:
            node = node[part]
        node[last] = value

    def override(self, name: str, value) -> str:
        """How an override of setting `name` is written on this config system's command line."""
        key = self.key(name)
        return f"{key}={value}" if self.lazy else f"{key} {value}"

    def flat(self) -> dict:
        """The config's plain values by dotted key."""
        return flatten_lazy(self.cfg) if self.lazy else flatten(self.cfg)

    def saved_flat(self, checkpoint: dict) -> dict:
        """The flat config a checkpoint of this config system was trained with ({} if none)."""
        if self.lazy:
            return checkpoint.get("lazy_cfg", {})
        if "cfg" not in checkpoint:
            return {}
        saved = loads_yaml(checkpoint["cfg"], "the checkpoint", "the config")
        return flatten(saved) if isinstance(saved, dict) else {}

    def snapshot(self) -> dict:
        """What a checkpoint saves of the config: the yaml ("cfg") or the flat lazy values."""
        return {"lazy_cfg": self.flat()} if self.lazy else {"cfg": self.cfg.dump()}

    def datasets(self, name: str) -> List[str]:
        """The dataset names of "train_datasets" or "test_datasets" (lazy: maybe one string)."""
        names = self.get(name)
        if names is None:
            return []
        return [names] if isinstance(names, str) else list(names)

    def num_classes(self) -> Tuple[Optional[str], Optional[int]]:
        """(key, value) of the detector's class count, e.g. ("MODEL.RETINANET.NUM_CLASSES", 80);
        (None, None) when the model has no such key."""
        if not self.lazy:
            key = NUM_CLASSES_KEYS.get(self.cfg.MODEL.META_ARCHITECTURE)
            return (key, int(self.select(key))) if key else (None, None)
        for key in LAZY_NUM_CLASSES_KEYS:
            value = self.select(key)
            if isinstance(value, int):
                return key, value
        return None, None


def changed_keys(old: dict, new: dict) -> List[str]:
    """The keys of flat config `new` whose values differ from `old` (lists equal to tuples)."""
    return [k for k in new if k in old and _as_lists(old[k]) != _as_lists(new[k])]


def _as_lists(value):
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value
