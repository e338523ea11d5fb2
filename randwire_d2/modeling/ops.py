"""Node transformations (Sec. 3.2, Fig. 2 and Fig. 6), looked up by name.

Each is ReLU -> op -> norm, with `op` one of: 3x3 separable conv (3x3 depthwise then 1x1, no
non-linearity between, the paper's default), 3x3 regular conv, 3x3 max-pool + 1x1 conv, or
3x3 avg-pool + 1x1 conv. Users register more with the decorator `register_node_op(name)`.
"""

from typing import Callable, Dict

from detectron2.layers import get_norm
from torch import nn

__all__ = ["NODE_OPS", "NORMS", "register_node_op", "build_node_op", "norm_layer"]

# The norm names Detectron2's `get_norm` accepts ("" = no norm); a callable is accepted too.
NORMS = ("BN", "FrozenBN", "SyncBN", "naiveSyncBN", "naiveSyncBN_N", "nnSyncBN", "GN", "LN", "")

# Name -> function(in_channels, out_channels, stride, norm) -> nn.Module whose last child is the
# norm layer. `norm` is a Detectron2 norm name ("BN", "FrozenBN", "SyncBN", "GN", ...).
NODE_OPS: Dict[str, Callable[..., nn.Module]] = {}


def register_node_op(name: str):
    def deco(fn):
        if name in NODE_OPS:
            raise ValueError(f"node op {name!r} is already registered")
        NODE_OPS[name] = fn
        return fn

    return deco


def norm_layer(norm: str, channels: int) -> nn.Module:
    """Detectron2's `get_norm`, except that "GN" uses the largest group count <= 32 that divides
    `channels`: get_norm's fixed 32 groups cannot split the paper's widths (C=109 gives 54, 109,
    218, ... channels; a prime width gets one group)."""
    if not (callable(norm) or norm in NORMS):
        raise ValueError(
            f"MODEL.RANDWIRE.NORM={norm!r} is unknown: expected a callable or one of {list(NORMS)}"
        )
    if norm == "GN":
        return nn.GroupNorm(max(g for g in range(1, 33) if channels % g == 0), channels)
    return get_norm(norm, channels)


def _triplet(op: nn.Module, out_channels: int, norm: str) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), op, norm_layer(norm, out_channels))


@register_node_op("sep_conv3x3")
def sep_conv3x3(in_channels, out_channels, stride, norm):
    op = nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
    )
    return _triplet(op, out_channels, norm)


@register_node_op("conv3x3")
def conv3x3(in_channels, out_channels, stride, norm):
    return _triplet(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), out_channels, norm
    )


@register_node_op("max_pool3x3_conv1x1")
def max_pool3x3_conv1x1(in_channels, out_channels, stride, norm):
    op = nn.Sequential(
        nn.MaxPool2d(3, stride, 1), nn.Conv2d(in_channels, out_channels, 1, bias=False)
    )
    return _triplet(op, out_channels, norm)


@register_node_op("avg_pool3x3_conv1x1")
def avg_pool3x3_conv1x1(in_channels, out_channels, stride, norm):
    op = nn.Sequential(
        nn.AvgPool2d(3, stride, 1, count_include_pad=False),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
    )
    return _triplet(op, out_channels, norm)


def build_node_op(name: str, in_channels: int, out_channels: int, stride: int, norm: str):
    if name not in NODE_OPS:
        raise ValueError(f"NODE_OP={name!r} is unknown: expected one of {sorted(NODE_OPS)}")
    return NODE_OPS[name](in_channels, out_channels, stride, norm)
