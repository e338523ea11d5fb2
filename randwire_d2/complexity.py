"""Model complexity as the paper counts it: fvcore FLOPs (one multiply-add = one FLOP), params.

`flops_params` / `model_complexity` trace a built model with fvcore; `analytic_complexity` /
`analytic_by_stage` give the same numbers in closed form (tests hold them equal), so sweeps can
plan runs without building models. `find_channels` sets C as Sec. 4 does.
"""

import functools
import logging
from typing import Callable, Dict, Iterable, Optional, Tuple

import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.utils.analysis import FlopCountAnalysis as DetectronFlopCountAnalysis
from fvcore.nn import FlopCountAnalysis
from torch import nn

from .graphs import graph_statistics
from .modeling import ops
from .modeling.classifier import ClassifierLogits
from .modeling.randwire import STAGE_STRIDES, execution_mode, stage_specs, wiring_from_cfg

__all__ = ["module_flops", "flops_params", "flops_by_stage", "model_complexity"]
__all__ += ["analytic_complexity", "analytic_by_stage", "seed_statistics"]
__all__ += ["find_channels", "wiring_stats", "parse_count"]

logger = logging.getLogger(__name__)


def module_flops(model: nn.Module, inputs) -> Dict[str, int]:
    """{module name ("" the whole): FLOPs} of `model` on `inputs` by fvcore, in eval mode and the
    reference execution (the fast one folds norms, which fvcore counts apart). A list[dict] input
    goes through Detectron2's FlopCountAnalysis (module names under "model.")."""
    analysis = DetectronFlopCountAnalysis if isinstance(inputs, list) else FlopCountAnalysis
    logging.getLogger("fvcore.nn.jit_analysis").setLevel(logging.ERROR)
    was_training = model.training
    model.eval()
    with torch.no_grad(), execution_mode(model, "reference"):
        counter = analysis(model, inputs).unsupported_ops_warnings(False)
        by_module = counter.uncalled_modules_warnings(False).by_module()
    model.train(was_training)
    return by_module


def _classifier_flops(module: nn.Module, input_size: int) -> Dict[str, int]:
    wrap = hasattr(module, "logits")  # a classifier: its logits, in its mode (restored after)
    net = ClassifierLogits(module, normalize=False).train(module.training) if wrap else module
    x = torch.zeros(1, 3, input_size, input_size, device=next(module.parameters()).device)
    return module_flops(net, x)


def flops_params(module: nn.Module, input_size: int = 224) -> Tuple[int, int]:
    """(FLOPs, params) in eval mode of `module` (classifier logits, or any module) on 3 x S x S."""
    flops = int(_classifier_flops(module, input_size)[""])
    return flops, sum(p.numel() for p in module.parameters())


def flops_by_stage(model: nn.Module, input_size: int = 224) -> Dict[str, Tuple[int, int]]:
    """{stage or "head": (FLOPs, params)} of a RandWireClassifier, in eval mode."""
    by_module = _classifier_flops(model, input_size)
    out = {}
    for name in [f"backbone.{stage}" for stage in model.backbone.stage_names] + ["head"]:
        params = sum(p.numel() for p in model.get_submodule(name).parameters())
        out[name.split(".")[-1]] = (int(by_module["model." + name]), params)
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


def _build_on_cpu(cfg) -> nn.Module:
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg)


def model_complexity(cfg, input_size: int = 224) -> Tuple[int, int]:
    """(FLOPs, params) of `build_model(cfg)` traced by fvcore on the CPU."""
    return flops_params(_build_on_cpu(cfg), input_size)


# The closed form. fvcore counts a conv as (weight size) x (output positions), an eval-mode
# batch_norm as 2 per element, group_norm as 5, adaptive_avg_pool2d as 1 per input element, linear
# as in x out; relu, pooling, sigmoid, mul, add and div count 0 (aggregation, pools, output mean).

# Norms whose count the closed form knows. The BN family turns into FrozenBN (no parameters) in
# a frozen stage (MODEL.BACKBONE.FREEZE_AT); GroupNorm stays as it is.
_KNOWN_NORMS = ("BN", "FrozenBN", "SyncBN", "naiveSyncBN", "naiveSyncBN_N", "nnSyncBN", "GN")


def _conv(cin: int, cout: int, kernel: int, positions: int, groups: int = 1) -> Tuple[int, int]:
    params = cout * (cin // groups) * kernel * kernel
    return params * positions, params


def _norm(norm: str, channels: int, positions: int, frozen: bool) -> Tuple[int, int]:
    if norm == "GN":
        return 5 * channels * positions, 2 * channels
    no_params = norm == "FrozenBN" or frozen
    return 2 * channels * positions, 0 if no_params else 2 * channels


def _add(*counts: Tuple[int, int]) -> Tuple[int, int]:
    return sum(f for f, _ in counts), sum(p for _, p in counts)


# Node op name -> (its function in ops.NODE_OPS, (in, out, output positions) -> (FLOPs, params)
# of the op before its norm). All four keep the 3x3, padding 1 geometry: output = ceil(in / s).
_NODE_OP_COUNTS = {
    "sep_conv3x3": (
        ops.sep_conv3x3,
        lambda cin, cout, n: _add(_conv(cin, cin, 3, n, groups=cin), _conv(cin, cout, 1, n)),
    ),
    "conv3x3": (ops.conv3x3, lambda cin, cout, n: _conv(cin, cout, 3, n)),
    "max_pool3x3_conv1x1": (ops.max_pool3x3_conv1x1, lambda cin, cout, n: _conv(cin, cout, 1, n)),
    "avg_pool3x3_conv1x1": (ops.avg_pool3x3_conv1x1, lambda cin, cout, n: _conv(cin, cout, 1, n)),
}


def _down(size: int) -> int:
    """Output side of a 3x3, stride 2, padding 1 conv or pool."""
    return (size - 1) // 2 + 1


def _not_in_closed_form(cfg) -> Optional[str]:
    """What of `cfg` the closed form does not know (then it is traced), or None."""
    rw = cfg.MODEL.RANDWIRE
    if cfg.MODEL.META_ARCHITECTURE != "RandWireClassifier":
        return f"MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r} (not a classifier)"
    if cfg.MODEL.BACKBONE.NAME != "build_randwire_backbone":
        return f"MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME!r}"
    known = _NODE_OP_COUNTS.get(rw.NODE_OP)
    if known is None or ops.NODE_OPS.get(rw.NODE_OP) is not known[0]:
        return (
            f"MODEL.RANDWIRE.NODE_OP={rw.NODE_OP!r} (the closed form knows the shipped "
            f"{list(_NODE_OP_COUNTS)})"
        )
    if not isinstance(rw.NORM, str) or rw.NORM not in _KNOWN_NORMS:
        return f"MODEL.RANDWIRE.NORM={rw.NORM!r} (the closed form knows {list(_KNOWN_NORMS)})"
    # What the model refuses: tracing it raises the model's own error.
    if not set(rw.OUT_FEATURES) or not set(rw.OUT_FEATURES) <= set(STAGE_STRIDES):
        return f"MODEL.RANDWIRE.OUT_FEATURES={list(rw.OUT_FEATURES)!r}"
    if not 0 <= cfg.MODEL.BACKBONE.FREEZE_AT <= len(STAGE_STRIDES):
        return f"MODEL.BACKBONE.FREEZE_AT={cfg.MODEL.BACKBONE.FREEZE_AT!r}"
    return None


def _wired_stage(wiring, cin: int, c: int, positions: int, op: str, norm: str, frozen: bool):
    """(FLOPs, params) of a WiredStage: per node its aggregation weights (none for one input),
    its op (from `cin` channels on the nodes the stage input feeds) and its norm."""
    op_count, inputs, counts = _NODE_OP_COUNTS[op][1], set(wiring.input_nodes), []
    for v in range(wiring.num_nodes):
        degree = len(wiring.predecessors(v))
        counts.append((0, degree if degree > 1 else 0))
        counts.append(op_count(cin if v in inputs else c, c, positions))
        counts.append(_norm(norm, c, positions, frozen))
    return _add(*counts)


_SAID: set = set()


def _traced_instead(unknown: str) -> None:
    if unknown not in _SAID:
        _SAID.add(unknown)
        logger.warning(
            f"randwire_d2.complexity has no closed form for {unknown}: its FLOPs and params are "
            "counted by an fvcore trace of the built model (slower)"
        )


def _closed_form(cfg, input_size: int) -> Optional[Dict[str, Tuple[int, int]]]:
    """{stage or "head": (FLOPs, params)}, or None (logged once) for a `cfg` it does not know."""
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"input_size={input_size!r} is invalid: expected an integer >= 1")
    unknown = _not_in_closed_form(cfg)
    if unknown:
        _traced_instead(unknown)
        return None
    rw = cfg.MODEL.RANDWIRE
    c, norm, freeze_at = rw.CHANNELS, rw.NORM, cfg.MODEL.BACKBONE.FREEZE_AT
    specs = stage_specs(rw.REGIME, 4, c)  # as RandWire: N is the wiring's
    wiring = wiring_from_cfg(cfg)
    if sorted(wiring.stages) != sorted(name for name, _, _ in specs):
        _traced_instead(f"a wiring of stages {sorted(wiring.stages)} in regime {rw.REGIME!r}")
        return None
    # As RandWire: conv1, conv2 (small: one conv), the random stages, up to the last output;
    # stage i (conv1 = 0) is frozen when FREEZE_AT > i.
    names = ["conv1", "conv2"] + [name for name, _, _ in specs if name != "conv2"]
    last = max(names.index(f) for f in rw.OUT_FEATURES)
    out, shape = {}, {}  # shape: stage -> (channels, side)
    side = _down(input_size)
    conv1 = _conv(len(cfg.MODEL.PIXEL_MEAN), c // 2, 3, side * side)
    out["conv1"] = _add(conv1, _norm(norm, c // 2, side * side, freeze_at > 0))
    shape["conv1"] = (c // 2, side)
    if rw.REGIME == "small" and last >= 1:
        side = _down(side)
        conv2 = _conv(c // 2, c, 3, side * side)
        out["conv2"] = _add(conv2, _norm(norm, c, side * side, freeze_at > 1))
        shape["conv2"] = (c, side)
    for name, _, channels in specs:
        i = names.index(name)
        if i > last:
            break
        cin, side = shape[names[i - 1]][0], _down(side)
        frozen = freeze_at > i
        out[name] = _wired_stage(wiring[name], cin, channels, side * side, rw.NODE_OP, norm, frozen)
        shape[name] = (channels, side)
    # Stages after the head's input (OUT_FEATURES ["conv5", "conv3"]) feed only outputs the
    # logits drop: the trace has no ops of theirs; their parameters still count.
    head_input = rw.OUT_FEATURES[-1]
    for name in names[names.index(head_input) + 1 : last + 1]:
        out[name] = (0, out[name][1])
    # The ClassifierHead: 1x1 conv, norm, global average pool, fc.
    cin, side = shape[head_input]
    width, classes = cfg.MODEL.CLASSIFIER.HEAD_CHANNELS, cfg.MODEL.CLASSIFIER.NUM_CLASSES
    out["head"] = _add(
        _conv(cin, width, 1, side * side),
        _norm(norm, width, side * side, False),
        (width * side * side, 0),
        (width * classes, width * classes + classes),
    )
    return out


def analytic_by_stage(cfg, input_size: int = 224) -> Dict[str, Tuple[int, int]]:
    """`flops_by_stage` of the classifier of `cfg`, in closed form where known, else traced."""
    found = _closed_form(cfg, input_size)
    return flops_by_stage(_build_on_cpu(cfg), input_size) if found is None else found


def analytic_complexity(cfg, input_size: int = 224) -> Tuple[int, int]:
    """`model_complexity` of `cfg`, in closed form where known, else traced."""
    found = _closed_form(cfg, input_size)
    return model_complexity(cfg, input_size) if found is None else _add(*found.values())


def seed_statistics(
    cfg, seeds: Iterable[int] = range(1, 6), input_size: int = 224, trace: bool = False
) -> Dict:
    """FLOPs and params for each seed s (MODEL.RANDWIRE.SEED) and their mean and std (Tables 2-3:
    seeds 1..5); in closed form, or with `trace` by fvcore traces of the built models."""
    count = model_complexity if trace else analytic_complexity
    rows = {}
    for s in seeds:
        c = cfg.clone()
        c.defrost()
        c.MODEL.RANDWIRE.SEED = int(s)
        rows[int(s)] = count(c, input_size)
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
    trace: bool = False,
) -> Tuple[int, float]:
    """(C, its mean FLOPs) for the C whose mean FLOPs over `seeds` (closed form, traced with
    `trace`, or `measure(cfg)`) is nearest `target_flops`, by bisection (FLOPs grow with C)."""
    if target_flops <= 0:
        raise ValueError(f"target_flops={target_flops!r} is invalid: expected a positive number")
    seeds = list(seeds)

    @functools.lru_cache(maxsize=None)
    def f(c: int) -> float:
        conf = cfg.clone()
        conf.defrost()
        conf.MODEL.RANDWIRE.CHANNELS = int(c)
        if measure is not None:
            return float(measure(conf))
        return seed_statistics(conf, seeds, input_size, trace)["flops_mean"]

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
    """Per stage: its node count and `graphs.graph_statistics`."""
    return {name: {"nodes": w.num_nodes, **graph_statistics(w)} for name, w in wiring.items()}
