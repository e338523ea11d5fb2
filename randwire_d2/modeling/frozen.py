"""The frozen execution, for export: the eval-mode fast execution with its per-call work done once.

Traced as it is, the fast execution (norms folded on every call, sigmoid of the aggregation
weights) gives a larger graph than the reference loop. Frozen, the norms are folded into the conv
weights (`norm_folding.foldable`, also for conv -> BN pairs outside the wired stages) and the
coefficients sigmoid(w_i) are constants.
"""

import copy
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .classifier import ClassifierHead
from .execution import STAGE_INPUT
from .norm_folding import affine_of_norm, foldable
from .randwire import RandWire, WiredStage

__all__ = ["FrozenStage", "fold_conv_norms", "freeze_for_export"]


def _fold_into_conv(conv: nn.Conv2d, norm: nn.Module) -> None:
    """conv <- norm(conv) in place: W' = a W, b' = a b + c for norm(z) = a z + c."""
    a, c = (t.detach() for t in affine_of_norm(norm))
    with torch.no_grad():
        bias = c if conv.bias is None else a * conv.bias + c
        conv.weight.copy_(conv.weight * a.view(-1, 1, 1, 1).to(conv.weight.dtype))
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)


def fold_conv_norms(module: nn.Module) -> int:
    """Fold every eval-mode BatchNorm / FrozenBN that directly follows a conv into that conv, in
    place; the number folded."""
    folded = 0
    for m in list(module.modules()):
        pairs = []
        if isinstance(m, nn.Conv2d) and foldable(getattr(m, "norm", None)):
            pairs.append((m, m, "norm"))
        elif isinstance(m, ClassifierHead) and foldable(m.norm):
            pairs.append((m.conv, m, "norm"))
        elif isinstance(m, nn.Sequential):
            children = list(m.named_children())
            for (_, conv), (name, norm) in zip(children, children[1:]):
                if isinstance(conv, nn.Conv2d) and foldable(norm):
                    pairs.append((conv, m, name))
        for conv, parent, name in pairs:
            _fold_into_conv(conv, getattr(parent, name))
            setattr(parent, name, None if parent is conv else nn.Identity())
            folded += 1
    return folded


class FrozenStage(nn.Module):
    """A wired stage for inference: y_v = f_v(ReLU(sum_i c_i y_u_i)) in `StagePlan` order, with
    constant c_i = sigmoid(w_i) and each node's affine norm folded into its last conv."""

    def __init__(self, stage: WiredStage):
        """`stage`: an eval-mode `WiredStage`, whose modules are shared (freeze a copy)."""
        super().__init__()
        self.sources = stage.plan.sources
        self.outputs = stage.plan.outputs
        self.coefficients: List[Optional[Tuple[float, ...]]] = []
        self.relu_first: List[bool] = []
        self.nodes = nn.ModuleList()
        for node, spec in zip(stage.nodes, stage.specs):
            c = None if node.weight is None else torch.sigmoid(node.weight.detach()).tolist()
            self.coefficients.append(None if c is None else tuple(c))
            self.relu_first.append(spec.relu_first)
            if not spec.relu_first:  # a user op of another form: run its transform as it is
                self.nodes.append(node.transform)
                continue
            layers = list(spec.layers)
            if foldable(spec.norm, layers[-1]):
                _fold_into_conv(layers[-1], spec.norm)
            else:
                layers.append(spec.norm)
            self.nodes.append(nn.Sequential(*layers))

    def forward(self, x):
        relu_x: Optional[torch.Tensor] = None
        y: List[torch.Tensor] = []
        for src, c, relu, op in zip(self.sources, self.coefficients, self.relu_first, self.nodes):
            if src[0] == STAGE_INPUT:
                if relu and relu_x is None:
                    relu_x = F.relu(x)
                s = relu_x if relu else x
            else:
                s = y[src[0]] if c is None else y[src[0]] * c[0]
                for u, ci in zip(src[1:], c[1:] if c is not None else ()):
                    s = s + y[u] * ci
                s = F.relu(s) if relu else s
            y.append(op(s))
        out = y[self.outputs[0]]
        for u in self.outputs[1:]:
            out = out + y[u]
        return out / len(self.outputs) if len(self.outputs) > 1 else out


def freeze_for_export(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` whose wired stages are `FrozenStage`s and whose conv -> BN
    pairs are folded: the same function (up to float rounding), a smaller graph."""
    frozen = copy.deepcopy(model).eval()
    inner = getattr(frozen, "module", frozen)  # DistributedDataParallel
    trunk = next((m for m in inner.modules() if isinstance(m, RandWire)), None)
    if trunk is None:
        raise ValueError(f"{type(inner).__name__} has no RandWire trunk")
    for name, stage in trunk.wired_stages().items():
        setattr(trunk, name, FrozenStage(stage))
    fold_conv_norms(frozen)
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen
