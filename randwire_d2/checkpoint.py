"""Checkpoints that carry their wiring, written atomically, loadable with weights_only=True.

Format (a dict of tensors and plain values, as `torch.save` writes it):
    "model":               state dict; every RandWire trunk holds a `wiring_fingerprint` buffer
    "arch":                "RandWireClassifier" or the detector's meta-architecture name
    "wiring":              NetworkWiring JSON of the trunk (rebuild with WIRING_FILE)
    "wiring_fingerprint":  its fingerprint (16 hex digits)
    "pixel_mean", "pixel_std", "input_format":  the input normalization used in training
    "cfg":                 the config that made the checkpoint (yaml text)
    plus whatever the trainer adds ("iteration", "optimizer", "scheduler", "classes", ...).

Loading weights whose fingerprint differs from the model's raises `WiringMismatchError`
(see `RandWire._load_from_state_dict`), both through this checkpointer and plain
`load_state_dict`. A classifier checkpoint given to a detector is converted on the fly:
"backbone.<stage>..." becomes "backbone.bottom_up.<stage>..." and the classifier head is dropped.
"""

import logging
import os
import tempfile
from typing import Dict, List, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from .graphs import NetworkWiring
from .modeling.randwire import RandWire

__all__ = [
    "RandWireCheckpointer",
    "atomic_torch_save",
    "find_trunk",
    "checkpoint_extras",
    "classifier_to_detector",
    "wiring_of_checkpoint",
]

CLASSIFIER_ARCH = "RandWireClassifier"


def atomic_torch_save(obj, path: str) -> None:
    """torch.save to a temporary file in the same folder, then rename: a crash mid-write
    leaves the previous file intact."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".pth")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _atomic_write_text(text: str, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def find_trunk(model: torch.nn.Module) -> Tuple[str, RandWire]:
    """(state-dict prefix, module) of the RandWire trunk inside `model`."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    for name, m in model.named_modules():
        if isinstance(m, RandWire):
            return (name + "." if name else ""), m
    raise ValueError(f"{type(model).__name__} has no RandWire trunk")


def checkpoint_extras(model: torch.nn.Module, cfg=None) -> Dict:
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
    if cfg is not None:
        extras["input_format"] = cfg.INPUT.FORMAT
        extras["cfg"] = cfg.dump()
    return extras


def classifier_to_detector(
    state: Dict[str, torch.Tensor], prefix: str = "backbone.bottom_up."
) -> Tuple[Dict[str, torch.Tensor], List[Tuple[str, str]], List[str]]:
    """Map a RandWireClassifier state dict to a detector's trunk under `prefix`.

    Returns (new state dict, [(old, new) key pairs], [dropped keys]).
    """
    new, mapped, dropped = {}, [], []
    for k, v in state.items():
        if k.startswith("backbone."):
            nk = prefix + k[len("backbone.") :]
            new[nk] = v
            mapped.append((k, nk))
        else:
            dropped.append(k)  # classifier head, pixel statistics
    return new, mapped, dropped


class RandWireCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that writes atomically, adds the wiring and input statistics to
    every checkpoint, and loads RandWireClassifier checkpoints into detectors."""

    def __init__(self, model, save_dir="", *, cfg=None, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.cfg = cfg

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(checkpoint_extras(self.model, self.cfg))
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        _atomic_write_text(last_filename_basename, os.path.join(self.save_dir, "last_checkpoint"))

    def _torch_load(self, f):
        with PathManager.open(f, "rb") as fh:
            return torch.load(fh, map_location="cpu", weights_only=True)

    def _load_file(self, filename):
        loaded = super()._load_file(filename)
        inner = getattr(self.model, "module", self.model)
        if loaded.get("arch") == CLASSIFIER_ARCH and type(inner).__name__ != CLASSIFIER_ARCH:
            prefix, _ = find_trunk(self.model)
            loaded["model"], mapped, dropped = classifier_to_detector(loaded["model"], prefix)
            logging.getLogger(__name__).info(
                f"Loaded a {CLASSIFIER_ARCH} checkpoint into {type(inner).__name__}: "
                f"{len(mapped)} trunk tensors mapped to '{prefix}*', dropped {dropped}"
            )
            # A fine-tuning start: optimizer/scheduler/iteration of the pretraining don't apply.
            loaded = {k: v for k, v in loaded.items() if k not in ("trainer", "optimizer", "scheduler", "iteration")}
        return loaded


def wiring_of_checkpoint(path: str) -> NetworkWiring:
    """The wiring a checkpoint was trained with (to rebuild its model)."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    if "wiring" not in data:
        raise ValueError(f"{path} carries no 'wiring': not a randwire_d2 checkpoint")
    return NetworkWiring.from_json(data["wiring"])
