"""The checkpoint format: what a checkpoint holds, how it is written, loaded and checked.

Format (a dict of tensors and plain values, as `torch.save` writes it):
    "model":               state dict; every RandWire trunk holds a `wiring_fingerprint` buffer
    "arch":                "RandWireClassifier" or the detector's meta-architecture name
    "wiring":              NetworkWiring JSON of the trunk (rebuild with WIRING_FILE)
    "wiring_fingerprint":  its fingerprint (16 hex digits)
    "pixel_mean", "pixel_std", "input_format":  the input normalization used in training
    "cfg":                 the config that made the checkpoint (yaml text)
    plus whatever the trainer adds ("iteration", "optimizer", "scheduler", "classes", ...).

Loading is strict where a silent mismatch would give wrong numbers: another wiring raises
`WiringMismatchError`; missing or reshaped trunk tensors, another architecture, an unreadable
file and non-finite values raise `CheckpointError`. A classifier checkpoint given to a detector
is mapped on the fly ("backbone.<stage>" -> "backbone.bottom_up.<stage>", head dropped).
"""

import contextlib
import glob
import logging
import os
import urllib.error
from typing import Dict, List, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from .checkpoint_conversion import convert_classifier_checkpoint  # noqa: F401  (__all__)
from .checkpoint_conversion import CLASSIFIER_ARCH, classifier_to_detector
from .data.dataset_checks import check_categories
from .graphs import NetworkWiring
from .modeling.randwire import RandWire, WiringMismatchError
from .run_settings import RunConfig, changed_keys
from .trust import read_bounded
from .trust.weights import CheckpointError, read_checkpoint, read_pickled_weights
from .utils.atomic import atomic_torch_save, atomic_write

__all__ = [
    "CheckpointError",
    "WeightsMismatchError",
    "RandWireCheckpointer",
    "SafeDetectionCheckpointer",
    "read_pickled_weights",
    "atomic_torch_save",
    "read_checkpoint",
    "check_weights_on_disk",
    "weights_download_named",
    "find_trunk",
    "classifier_to_detector",
    "convert_classifier_checkpoint",
    "config_lines",
    "check_input_normalization",
    "build_checkpointer",
    "load_for_eval",
    "wiring_of_checkpoint",
]

# A checkpoint's training state: dropped when a classifier checkpoint loads into a detector.
_TRAINING_STATE = ("trainer", "optimizer", "scheduler", "iteration")
logger = logging.getLogger(__name__)


def check_weights_on_disk(weights: str, key: str = "MODEL.WEIGHTS") -> None:
    """Weights (`key`) that are a local path (not a URL) must exist."""
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"{key}={weights!r} does not exist ({os.path.abspath(weights)}): give a "
            "checkpoint file, a detectron2:// or https:// URL, or an empty string (random init)"
        )


@contextlib.contextmanager
def weights_download_named(key: str, weights: str):
    """Inside: a failed download of `weights` is an OSError naming `key`, the URL and why."""
    try:
        yield
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        if "://" not in (weights or ""):
            raise
        reason = getattr(e, "reason", None) or e
        raise OSError(
            f"{key}={weights!r} cannot be downloaded ({reason}): without network access, "
            f"download it elsewhere and set {key} to the local file"
        ) from e


def nonfinite_keys(state: Dict[str, torch.Tensor]) -> List[str]:
    """Keys of floating-point tensors holding NaN or inf."""
    return [
        k
        for k, v in state.items()
        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def find_trunk(model: torch.nn.Module) -> Tuple[str, RandWire]:
    """(state-dict prefix, module) of the RandWire trunk inside `model`."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    for name, m in model.named_modules():
        if isinstance(m, RandWire):
            return (name + "." if name else ""), m
    raise ValueError(f"{type(model).__name__} has no RandWire trunk")


def checkpoint_extras(model: torch.nn.Module, run=None) -> Dict:
    """What every checkpoint of a RandWire model carries besides its weights."""
    _, trunk = find_trunk(model)
    inner = getattr(model, "module", model)
    extras = {
        "arch": type(inner).__name__,
        "wiring": trunk.wiring.to_json(),
        "wiring_fingerprint": trunk.wiring.fingerprint(),
    }
    if hasattr(inner, "pixel_mean"):
        extras["pixel_mean"] = [float(v) for v in inner.pixel_mean.flatten().tolist()]
        extras["pixel_std"] = [float(v) for v in inner.pixel_std.flatten().tolist()]
    if run is not None:
        fmt = run.get("input_format") if not run.lazy else getattr(inner, "input_format", None)
        if fmt:
            extras["input_format"] = fmt
        extras.update(run.snapshot())
    return extras


def _describe(keys, limit: int = 3) -> str:
    keys = list(keys)
    return ", ".join(str(k) for k in keys[:limit]) + (", ..." if len(keys) > limit else "")


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose loading never runs code from the file (`.pth`/`.pyth`:
    weights_only torch.load; `.pkl`: an unpickler of numpy arrays only)."""

    def save(self, name: str, tag_last: bool = True, **kwargs) -> None:
        """fvcore's save; `tag_last=False` leaves last_checkpoint alone (model_best.pth)."""
        if tag_last:
            return super().save(name, **kwargs)
        self.tag_last_checkpoint = lambda basename: None  # this save only
        try:
            return super().save(name, **kwargs)
        finally:
            del self.tag_last_checkpoint

    def get_checkpoint_file(self) -> str:
        """The file in save_dir that last_checkpoint names (read bounded); "" when none."""
        path = os.path.join(self.save_dir, "last_checkpoint")
        if not os.path.lexists(path):
            return ""
        name = read_bounded(path, "last_checkpoint", "marker", text=True).strip()
        if not name or name != os.path.basename(name) or name in (".", ".."):
            raise CheckpointError(
                f"{path} names {name[:80]!r}: expected the file name of a checkpoint in "
                f"{self.save_dir}"
            )
        return os.path.join(self.save_dir, name)

    def _load_file(self, filename):
        if filename.endswith(".pyth"):
            data = read_checkpoint(filename)
            if "model_state" not in data:
                raise CheckpointError(
                    f"{filename} is not a pycls checkpoint: it has no 'model_state' entry"
                )
            state = data["model_state"]
            state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        if not filename.endswith(".pkl"):
            return super()._load_file(filename)
        data = read_pickled_weights(filename)
        if "model" in data and "__author__" in data:  # Detectron2's model zoo format
            self.logger.info(f"Reading a file from '{data['__author__']}'")
        else:  # Caffe2 / Detectron1 model zoo
            blobs = data.get("blobs", data)
            blobs = {k: v for k, v in blobs.items() if not str(k).endswith("_momentum")}
            data = {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
        if not isinstance(data["model"], dict):
            raise CheckpointError(f"{filename}: its 'model' is a {type(data['model']).__name__}")
        for k, v in data["model"].items():
            if not isinstance(v, np.ndarray):
                raise CheckpointError(
                    f"{filename} holds {k!r} as a {type(v).__name__}: the weights of a .pkl "
                    "file are numpy arrays"
                )
        return data

    def _torch_load(self, f):
        return read_checkpoint(f)


class RandWireCheckpointer(SafeDetectionCheckpointer):
    """SafeDetectionCheckpointer that writes atomically with the wiring and input statistics,
    refuses non-finite values and weights that do not fit the trunk (`strict`: any tensor),
    maps classifier checkpoints into detectors, and resumes from the newest intact one."""

    def __init__(self, model, save_dir="", *, cfg=None, strict: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.run = None if cfg is None else RunConfig.of(cfg)  # cfg: a config or its RunConfig
        self.strict = strict

    def save(self, name: str, tag_last: bool = True, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        bad = nonfinite_keys(data["model"])
        if bad:
            raise FloatingPointError(
                f"not saving {name}.pth: {len(bad)} tensors hold NaN/inf ({_describe(bad)}); "
                "training diverged. The last intact checkpoint stays in place."
            )
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(checkpoint_extras(self.model, self.run))
        data.update(kwargs)
        save_file = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_torch_save(data, save_file)
        if tag_last:
            self.tag_last_checkpoint(f"{name}.pth")

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename), "w")

    def _load_file(self, filename):
        loaded = super()._load_file(filename)
        inner = getattr(self.model, "module", self.model)
        ours, theirs = type(inner).__name__, loaded.get("arch")
        # tools/convert_cls_to_d2.py's output names arch GeneralizedRCNN but holds only a trunk:
        # it fits every detector (RetinaNet too).
        converted = loaded.get("converted_from") == CLASSIFIER_ARCH and ours != CLASSIFIER_ARCH
        if theirs == CLASSIFIER_ARCH and ours != CLASSIFIER_ARCH:
            prefix, _ = find_trunk(self.model)
            loaded["model"], mapped, dropped = classifier_to_detector(loaded["model"], prefix)
            logger.info(
                f"Loaded a {CLASSIFIER_ARCH} checkpoint into {ours}: {len(mapped)} trunk tensors "
                f"mapped to '{prefix}*', dropped {dropped}"
            )
            # A fine-tuning start: optimizer/scheduler/iteration of the pretraining don't apply.
            loaded = {k: v for k, v in loaded.items() if k not in _TRAINING_STATE}
            loaded["__mapped_from_classifier__"] = True
        elif theirs is not None and theirs != ours and not converted:
            raise CheckpointError(
                f"{filename} is a {theirs} checkpoint, but the model is a {ours}: "
                + (
                    f"a detector's weights cannot initialise a {CLASSIFIER_ARCH}; give a "
                    "checkpoint of tools/train_cls.py"
                    if ours == CLASSIFIER_ARCH
                    else "give a checkpoint of this architecture or of tools/train_cls.py"
                )
            )
        bad = nonfinite_keys(loaded["model"])
        if bad:
            raise CheckpointError(
                f"{filename} holds NaN/inf in {len(bad)} tensors ({_describe(bad)}): written by "
                "a diverged run; its numbers would be meaningless"
            )
        trainer = loaded.get("trainer") if isinstance(loaded.get("trainer"), dict) else {}
        iterations = {"iteration": loaded.get("iteration", -1)}
        iterations["trainer.iteration"] = trainer.get("iteration", -1)
        for where, it in iterations.items():
            if type(it) is not int or it < -1:
                raise CheckpointError(
                    f"{filename} holds {where}={it!r}: expected an iteration >= -1"
                )
        return loaded

    def _load_model(self, checkpoint):
        # A classifier's trunk (mapped or converted) leaves the detector's heads to initialize.
        trunk_only = checkpoint.pop("__mapped_from_classifier__", "converted_from" in checkpoint)
        held = f"{len(checkpoint['model'])} tensors ({_describe(checkpoint['model'])})"
        incompatible = super()._load_model(checkpoint)
        prefix, _ = find_trunk(self.model)
        reshaped = [k for k, _, _ in incompatible.incorrect_shapes]
        unloaded = [k for k in incompatible.missing_keys if k not in reshaped]
        missing = [k for k in unloaded if k.startswith(prefix) or self.strict]
        shapes = [
            s for s in incompatible.incorrect_shapes if s[0].startswith(prefix) or self.strict
        ]
        if missing or shapes:
            lines = []
            if missing:
                lines.append(f"{len(missing)} tensors are missing ({_describe(missing)})")
            if shapes:
                k, theirs, ours = shapes[0]
                lines.append(
                    f"{len(shapes)} have other shapes (e.g. {k}: {theirs} in the file, {ours} in "
                    "the model; other MODEL.RANDWIRE.CHANNELS, REGIME or NUM_CLASSES?)"
                )
            raise WeightsMismatchError(
                f"the weights do not fit the model: {'; '.join(lines)}. The file holds {held}. "
                "Give a checkpoint of this model (tools/train_cls.py / train_net.py)."
            )
        others = reshaped if trunk_only else reshaped + unloaded
        if others:
            logger.warning(
                f"{len(others)} tensors outside the trunk do not fit and keep their "
                f"initialization: {_describe(others, 6)}"
            )
        return incompatible

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict:
        """As fvcore's, but a missing, unreadable or non-finite last checkpoint falls back to the
        newest intact one beside it (and says so)."""
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        last = self.get_checkpoint_file()
        others = sorted(glob.glob(os.path.join(self.save_dir, "*.pth")), key=os.path.getmtime)
        # model_best.pth (BestCheckpoint) is an earlier iteration, never the run's newest state.
        others = [p for p in others if os.path.basename(p) != "model_best.pth"]
        candidates = [last] + [p for p in reversed(others) if p != last]
        for i, candidate in enumerate(candidates):
            try:
                if not os.path.isfile(candidate):
                    raise CheckpointError(f"{candidate} does not exist")
                loaded = self.load(candidate)
            except (WeightsMismatchError, WiringMismatchError) as e:
                # every checkpoint of OUTPUT_DIR is of the run's model: the config changed
                raise WeightsMismatchError(self._resume_mismatch(candidate, e)) from e
            except (CheckpointError, FloatingPointError) as e:
                self._parsed_url_during_load = None  # DetectionCheckpointer.load left it set
                logger.warning(f"cannot resume from {candidate}: {e}")
                continue
            if i:
                logger.warning(f"resumed from {candidate} instead of the last checkpoint {last}")
            loaded["__resumed_from__"] = candidate
            return loaded
        raise CheckpointError(f"no intact checkpoint to resume from in {self.save_dir}")

    def _resume_mismatch(self, candidate: str, error: Exception) -> str:
        """The message of a --resume mismatch: the model keys the config changed, or `error`."""
        changed, run = [], self.run
        if run is not None:
            old, new = run.saved_flat(read_checkpoint(candidate, "checkpoint")), run.flat()
            changed = [
                f"{k} {old[k]!r} -> {new[k]!r}"
                for k in changed_keys(old, new)
                if k.lower().startswith("model.")
            ]
        keys = f"the config changed {'; '.join(changed)} (checkpoint -> config)" if changed else str(error)  # fmt: skip
        return (
            f"--resume: {candidate} does not fit the model this config builds: {keys}. Resume "
            "with the checkpoint's values, or start a new OUTPUT_DIR to train the changed model"
        )


class WeightsMismatchError(CheckpointError):
    """Weights that are intact but of another model (other shapes, tensors or wiring)."""


def config_lines(data: Dict) -> List[str]:
    """The config overrides that make a model read images as the checkpoint's training did."""
    lines = []
    if "pixel_mean" in data:
        # The statistics went through float32 buffers: print them at float32 precision.
        for key in ("pixel_mean", "pixel_std"):
            lines.append(f"MODEL.{key.upper()} {[float(f'{v:.6g}') for v in data[key]]}")
    if "input_format" in data:
        lines.append(f"INPUT.FORMAT {data['input_format']}")
    return lines


def check_input_normalization(cfg, checkpoint: dict) -> bool:
    """Warn (and return False) when the checkpoint's pixel statistics or channel order differ
    from the config's; not an error: fine-tuning on other statistics is legitimate."""
    run = RunConfig.of(cfg)
    mismatched = []
    for name in ("pixel_mean", "pixel_std", "input_format"):
        ours, theirs = run.get(name), checkpoint.get(name)
        if ours is None or theirs is None:
            continue
        if name == "input_format" and theirs != ours:
            mismatched.append(f"{run.key(name)} {theirs} (config: {ours})")
        elif name != "input_format" and not np.allclose(theirs, list(ours), rtol=0, atol=1e-3):
            values = [float(f"{v:.6g}") for v in theirs]
            mismatched.append(f"{run.key(name)} {values} (config: {list(ours)})")
    if mismatched:
        logger.warning(
            "The weights were trained with other input normalization than this config; to "
            "match it set: " + "; ".join(mismatched)
        )
    return not mismatched


def wiring_of_checkpoint(path: str) -> NetworkWiring:
    """The wiring a checkpoint was trained with (to rebuild its model)."""
    data = read_checkpoint(path, "checkpoint")
    if "wiring" not in data:
        raise CheckpointError(f"{path} carries no 'wiring': not a randwire_d2 checkpoint")
    return NetworkWiring.from_json(data["wiring"])


def build_checkpointer(model, save_dir: str = "", cfg=None, **kwargs):
    """RandWireCheckpointer for models with a RandWire trunk, else SafeDetectionCheckpointer."""
    inner = getattr(model, "module", model)
    if any(isinstance(m, RandWire) for m in inner.modules()):
        return RandWireCheckpointer(model, save_dir, cfg=cfg, **kwargs)
    kwargs.pop("strict", None)
    return SafeDetectionCheckpointer(model, save_dir, **kwargs)


def load_for_eval(cfg, model: torch.nn.Module, resume: bool = False) -> Dict:
    """Load the weights (or with `resume` OUTPUT_DIR's last checkpoint) into `model` strictly;
    returns the rest of the checkpoint (class names, input statistics, ...)."""
    run = RunConfig.of(cfg)
    save_dir = run.get("output_dir", "") if resume else ""
    checkpointer = build_checkpointer(model, save_dir, cfg=run, strict=True)
    weights = run.get("weights", "") or ""
    if not weights and not (resume and checkpointer.has_checkpoint()):
        raise ValueError(
            f"{run.key('weights')}='' and no checkpoint to resume: --eval-only needs weights to "
            "evaluate"
        )
    with weights_download_named(run.key("weights"), weights):
        extras = checkpointer.resume_or_load(weights, resume=resume)
    check_input_normalization(run, extras)
    if type(getattr(model, "module", model)).__name__ != CLASSIFIER_ARCH:
        source = f"{run.key('weights')}={weights!r}" if weights else "the last checkpoint"
        check_categories(extras.get("categories"), run.datasets("test_datasets"), source)
    return extras
