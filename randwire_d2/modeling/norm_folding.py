"""Norms as fixed per-channel affine maps, folded into the convolution before them: FrozenBN
always, BatchNorm2d in eval with running statistics."""

from typing import Optional

from detectron2.layers import FrozenBatchNorm2d
from torch import nn

__all__ = ["affine_of_norm", "foldable"]


def affine_of_norm(norm: nn.Module):
    """(a, b) with norm(z) = a * z + b per channel, for FrozenBN and BN using running stats."""
    if isinstance(norm, FrozenBatchNorm2d):
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        return scale, norm.bias - norm.running_mean * scale
    scale = (norm.running_var + norm.eps).rsqrt()
    if norm.weight is not None:
        scale = norm.weight * scale
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return scale, shift


def foldable(norm: nn.Module, conv: Optional[nn.Module] = None) -> bool:
    """Whether `norm` is now a fixed per-channel affine map (FrozenBN, or BatchNorm2d in eval
    with running statistics: `affine_of_norm`) that folds into the conv before it. Given `conv`,
    also whether the fast execution can run that conv with the folded weight and bias (a
    zero-padded Conv2d without bias); `frozen.py`, which rewrites the conv, asks about the norm."""
    if type(norm) not in (nn.BatchNorm2d, FrozenBatchNorm2d):
        return False
    if type(norm) is nn.BatchNorm2d and (norm.training or norm.running_mean is None):
        return False
    if conv is None:
        return True
    return isinstance(conv, nn.Conv2d) and conv.bias is None and conv.padding_mode == "zeros"
