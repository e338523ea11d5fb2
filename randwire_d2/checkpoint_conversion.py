"""A RandWireClassifier checkpoint as detector weights: its trunk under the detector's key prefix,
with the wiring, its fingerprint and the input statistics it was trained with."""

from typing import Dict, List, Tuple

import torch

from .trust.weights import CheckpointError, read_checkpoint
from .utils.atomic import atomic_torch_save

__all__ = ["CLASSIFIER_ARCH", "classifier_to_detector", "convert_classifier_checkpoint"]

CLASSIFIER_ARCH = "RandWireClassifier"
# What a converted checkpoint keeps besides the mapped weights.
_CARRIED = ("wiring", "wiring_fingerprint", "pixel_mean", "pixel_std", "input_format", "cfg")


def classifier_to_detector(
    state: Dict[str, torch.Tensor], prefix: str = "backbone.bottom_up."
) -> Tuple[Dict[str, torch.Tensor], List[Tuple[str, str]], List[str]]:
    """Map a RandWireClassifier state dict to a detector's trunk under `prefix`.

    Returns (new state dict, [(old, new) key pairs], [dropped keys]).
    """
    mapped = [(k, prefix + k.removeprefix("backbone.")) for k in state if k.startswith("backbone.")]
    dropped = [k for k in state if not k.startswith("backbone.")]  # classifier head, statistics
    return {new: state[old] for old, new in mapped}, mapped, dropped


def convert_classifier_checkpoint(
    src: str, dst: str, prefix: str = "backbone.bottom_up."
) -> Tuple[Dict, List[Tuple[str, str]], List[str]]:
    """Write the trunk of RandWireClassifier checkpoint `src` as detector weights to `dst`.

    The output keeps the wiring, its fingerprint and the input statistics, loads with
    `torch.load(..., weights_only=True)`, and is given to a detector as MODEL.WEIGHTS.
    Returns (output dict, [(old key, new key)], [dropped keys]).
    """
    data = read_checkpoint(src, "input")
    if "model" not in data:
        raise CheckpointError(f"{src} is not a randwire_d2 checkpoint: it has no 'model' entry")
    if data.get("arch") != CLASSIFIER_ARCH:
        raise CheckpointError(
            f"{src} holds arch={data.get('arch')!r}: expected a {CLASSIFIER_ARCH} checkpoint"
        )
    if "wiring" not in data or "wiring_fingerprint" not in data:
        raise CheckpointError(f"{src} carries no wiring: cannot check it against the detector's")
    model, mapped, dropped = classifier_to_detector(data["model"], prefix)
    out = {"model": model, "arch": "GeneralizedRCNN", "converted_from": CLASSIFIER_ARCH}
    out.update({k: data[k] for k in _CARRIED if k in data})
    dropped += [k for k in data if k not in _CARRIED and k not in ("model", "arch")]
    atomic_torch_save(out, dst)
    return out, mapped, dropped
