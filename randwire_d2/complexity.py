"""Model complexity as the paper counts it: fvcore FLOPs (one multiply-add = one FLOP), params.

`flops_params` measures one model; `seed_statistics` gives mean and std over the paper's seeds
(Tables 2-3 report "mean +- std" over seeds 1..5); `find_channels` sets C to the integer whose
complexity is nearest the target (Sec. 4: "set C to the nearest integer such that target model
complexity is met").
"""

import logging
from typing import Callable, Dict, Iterable, Tuple

import numpy as np
import torch
from detectron2.modeling import build_model
from fvcore.nn import FlopCountAnalysis
from torch import nn

from .graphs import graph_statistics
from .modeling.execution import execution_mode

__all__ = [
    "Logits",
    "flops_params",
    "flops_by_stage",
    "model_complexity",
    "seed_statistics",
    "find_channels",
    "wiring_stats",
    "parse_count",
]


class Logits(nn.Module):
    """A RandWireClassifier as a tensor -> logits module (as a torchvision classifier is)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.logits(x)


def _flop_counter(module: nn.Module, input_size: int) -> FlopCountAnalysis:
    net = Logits(module) if hasattr(module, "logits") else module
    x = torch.zeros(1, 3, input_size, input_size, device=next(module.parameters()).device)
    counter = FlopCountAnalysis(net, x)
    counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    logging.getLogger("fvcore.nn.jit_analysis").setLevel(logging.ERROR)
    return counter


def flops_params(module: nn.Module, input_size: int = 224) -> Tuple[int, int]:
    """(FLOPs, params) of `module` on one 3 x size x size image, in eval mode.

    `module` is a RandWireClassifier (its logits are counted) or any module taking a tensor.
    """
    was_training = module.training
    module.eval()
    # The reference execution: the fast one folds norms into convs, which fvcore counts apart.
    with torch.no_grad(), execution_mode(module, "reference"):
        flops = int(_flop_counter(module, input_size).total())
    module.train(was_training)
    params = sum(p.numel() for p in module.parameters())
    return flops, params


def flops_by_stage(model: nn.Module, input_size: int = 224) -> Dict[str, Tuple[int, int]]:
    """{stage or "head": (FLOPs, params)} of a RandWireClassifier, in eval mode."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), execution_mode(model, "reference"):
        by_module = _flop_counter(model, input_size).by_module()
    model.train(was_training)
    out = {}
    for name in model.backbone.stage_names:
        stage = getattr(model.backbone, name)
        out[name] = (
            int(by_module["model.backbone." + name]),
            sum(p.numel() for p in stage.parameters()),
        )
    out["head"] = (int(by_module["model.head"]), sum(p.numel() for p in model.head.parameters()))
    return out


def parse_count(text) -> float:
    """'583M', '4.0B', '5.6e6' or a number -> float."""
    if isinstance(text, (int, float)):
        return float(text)
    units = {"K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9}
    t = str(text).strip().upper()
    try:
        return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise ValueError(f"count={text!r} is invalid: expected a number like 583M, 4.0B or 5.6e6")


def model_complexity(cfg, input_size: int = 224) -> Tuple[int, int]:
    """(FLOPs, params) of the classifier `build_model(cfg)` on the CPU."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    return flops_params(build_model(cfg), input_size)


def seed_statistics(cfg, seeds: Iterable[int] = range(1, 6), input_size: int = 224) -> Dict:
    """FLOPs and params for each seed s (MODEL.RANDWIRE.SEED), with their mean and std."""
    rows = {}
    for s in seeds:
        c = cfg.clone()
        c.defrost()
        c.MODEL.RANDWIRE.SEED = int(s)
        rows[int(s)] = model_complexity(c, input_size)
    flops = np.array([f for f, _ in rows.values()], dtype=np.float64)
    params = np.array([p for _, p in rows.values()], dtype=np.float64)
    return {
        "per_seed": rows,
        "flops_mean": float(flops.mean()),
        "flops_std": float(flops.std()),
        "params_mean": float(params.mean()),
        "params_std": float(params.std()),
    }


def find_channels(
    cfg,
    target_flops: float,
    seeds: Iterable[int] = range(1, 6),
    input_size: int = 224,
    measure: Callable = None,
) -> Tuple[int, float]:
    """C whose mean FLOPs over `seeds` is nearest `target_flops`; returns (C, its mean FLOPs).

    FLOPs grow monotonically with C, so a bisection finds the bracketing pair; of the two, the
    nearer one wins.
    """
    if target_flops <= 0:
        raise ValueError(f"target_flops={target_flops!r} is invalid: expected a positive number")
    seeds = list(seeds)

    def mean_flops(c: int) -> float:
        conf = cfg.clone()
        conf.defrost()
        conf.MODEL.RANDWIRE.CHANNELS = int(c)
        if measure is not None:
            return float(measure(conf))
        return seed_statistics(conf, seeds, input_size)["flops_mean"]

    cache: Dict[int, float] = {}

    def f(c: int) -> float:
        if c not in cache:
            cache[c] = mean_flops(c)
        return cache[c]

    lo, hi = 2, 4
    while f(hi) < target_flops:
        lo, hi = hi, hi * 2
        if hi > 1 << 14:
            raise ValueError(f"target_flops={target_flops!r} needs C > {1 << 14}: too large")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if f(mid) < target_flops:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda c: abs(f(c) - target_flops))
    return best, f(best)


def wiring_stats(wiring) -> Dict[str, Dict[str, float]]:
    """Per stage: its node count and `visualize.graph_statistics` (edges, input/output nodes,
    degrees, path length, depth, ...)."""
    return {name: {"nodes": w.num_nodes, **graph_statistics(w)} for name, w in wiring.items()}
