"""Classifier checkpoint -> detector checkpoint (the logic of tools/convert_cls_to_d2.py)."""

from typing import Dict, List, Tuple

import torch

from ..checkpoint import CLASSIFIER_ARCH, atomic_torch_save, classifier_to_detector

__all__ = ["convert_classifier_checkpoint", "config_lines"]

# What a converted checkpoint keeps besides the mapped weights.
_CARRIED = ("wiring", "wiring_fingerprint", "pixel_mean", "pixel_std", "input_format", "cfg")


def convert_classifier_checkpoint(
    src: str, dst: str, prefix: str = "backbone.bottom_up."
) -> Tuple[Dict, List[Tuple[str, str]], List[str]]:
    """Write the trunk of RandWireClassifier checkpoint `src` as detector weights to `dst`.

    The output keeps the wiring, its fingerprint and the input statistics, loads with
    `torch.load(..., weights_only=True)`, and is given to a detector as MODEL.WEIGHTS.
    Returns (output dict, [(old key, new key)], [dropped keys]).
    """
    data = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or "model" not in data:
        raise ValueError(
            f"{src} is not a randwire_d2 checkpoint: expected a dict with a 'model' entry"
        )
    arch = data.get("arch")
    if arch != CLASSIFIER_ARCH:
        raise ValueError(f"{src} holds arch={arch!r}: expected a {CLASSIFIER_ARCH} checkpoint")
    if "wiring" not in data or "wiring_fingerprint" not in data:
        raise ValueError(f"{src} carries no wiring: cannot check it against the detector's")
    model, mapped, dropped = classifier_to_detector(data["model"], prefix)
    out = {"model": model, "arch": "GeneralizedRCNN", "converted_from": CLASSIFIER_ARCH}
    out.update({k: data[k] for k in _CARRIED if k in data})
    dropped += [k for k in data if k not in _CARRIED and k not in ("model", "arch")]
    atomic_torch_save(out, dst)
    return out, mapped, dropped


def config_lines(data: Dict) -> List[str]:
    """The config overrides that make a detector read images as the pretraining did."""
    lines = []
    if "pixel_mean" in data:
        # The statistics went through float32 buffers: print them at float32 precision.
        for key in ("pixel_mean", "pixel_std"):
            values = [float(f"{v:.6g}") for v in data[key]]
            lines.append(f"MODEL.{key.upper()} {values}")
    if "input_format" in data:
        lines.append(f"INPUT.FORMAT {data['input_format']}")
    return lines
