"""RandWire trunk (Xie et al., ICCV 2019, Sec. 3.2, Table 1) as a Detectron2 backbone, shared by
the classifier and the detector; stage outputs `conv2..conv5` have strides 4..32.

Deliberate deviations: `conv1` has C // 2 channels (54 for C=109), and edge removal (Sec. 4.2)
is a zero weight on the removed edge, so every parameter stays in the autograd graph (DDP).
"""

import contextlib
import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from ..config import generator_params
from ..graphs import NetworkWiring, sample_stages
from ..limits import MAX_CHANNELS, check_int
from .ops import norm_layer
from .regional_compile import COMPILE_REGIONS, check_compile, compile_regions
from .wired_stage import Node, WiredStage

__all__ = ["Node", "WiredStage", "RandWire", "REGIMES"]
__all__ += ["stage_specs", "network_wiring", "wiring_from_cfg", "build_randwire_backbone"]
__all__ += ["WiringMismatchError", "COMPILE_REGIONS", "execution_mode"]

# Per regime: (stage name, node count as a multiple of N, channels as a multiple of C); stage
# `conv1` (3x3 conv, C//2, stride 2) comes first, and small-regime `conv2` is one ReLU-conv-BN.
REGIMES = {
    "small": [("conv3", 1.0, 1), ("conv4", 1.0, 2), ("conv5", 1.0, 4)],
    "regular": [("conv2", 0.5, 1), ("conv3", 1.0, 2), ("conv4", 1.0, 4), ("conv5", 1.0, 8)],
}
STAGE_STRIDES = {"conv1": 2, "conv2": 4, "conv3": 8, "conv4": 16, "conv5": 32}
logger = logging.getLogger(__name__)


class WiringMismatchError(ValueError):
    """Weights were trained with another wiring than the model's."""


def stage_specs(regime: str, num_nodes: int, channels: int) -> List[Tuple[str, int, int]]:
    """[(stage name, N of the stage, channels of its nodes)] of the random stages (Table 1)."""
    if regime not in REGIMES:
        raise ValueError(f"REGIME={regime!r} is unknown: expected one of {sorted(REGIMES)}")
    check_int("CHANNELS", channels, 2, MAX_CHANNELS, "MAX_CHANNELS")
    low = math.ceil(2 / min(n for _, n, _ in REGIMES[regime]))  # every stage needs >= 2 nodes
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < low:
        raise ValueError(
            f"MODEL.RANDWIRE.NUM_NODES={num_nodes!r} is invalid: expected an integer >= {low} "
            f"(every random stage of the {regime} regime needs at least 2 nodes)"
        )
    return [(name, int(num_nodes * n), c * channels) for name, n, c in REGIMES[regime]]


def network_wiring(
    generator: str, num_nodes: int, seed: int, regime: str, **params
) -> NetworkWiring:
    """g(theta, s): the wiring of every random stage of a network of the given regime."""
    stages = {name: n for name, n, _ in stage_specs(regime, num_nodes, 2)}
    return sample_stages(generator, stages, seed, **params)


class RandWire(Backbone):
    """RandWire trunk (Table 1): conv1, [conv2], then one WiredStage per random stage."""

    def __init__(
        self,
        *,
        wiring: NetworkWiring,
        channels: int,
        regime: str = "small",
        node_op: str = "sep_conv3x3",
        norm: str = "BN",
        out_features: Sequence[str] = ("conv5",),
        drop_edge_prob: float = 0.0,
        freeze_at: int = 0,
        in_channels: int = 3,
        execution: str = "fast",
        memory_efficient: bool = False,
        recompute_convs: bool = False,
        device=None,
    ):
        """The arguments are the MODEL.RANDWIRE keys of the same names (see config.py): `wiring`
        holds every random stage of the regime, built or not; stages after the last of
        `out_features` are not built; `device` is where the execution's path is decided for."""
        super().__init__()
        specs = stage_specs(regime, 4, channels)  # validates regime and channels; N is the wiring's
        if not 0.0 <= drop_edge_prob <= 1.0:
            raise ValueError(f"DROP_EDGE_PROB={drop_edge_prob!r} is invalid: expected [0, 1]")
        needed = [name for name, _, _ in specs]
        missing = [name for name in needed if name not in wiring]
        extra = [name for name in wiring.stages if name not in needed]
        if missing or extra:
            bad = [f"no stage {missing}"] * bool(missing) + [f"extra stages {extra}"] * bool(extra)
            raise ValueError(
                f"wiring has {' and '.join(bad)}: regime {regime!r} has the random stages {needed}"
            )
        all_names = ["conv1", "conv2"] + [n for n in needed if n != "conv2"]
        out_features = list(out_features)
        if not out_features or not set(out_features) <= set(all_names):
            raise ValueError(
                f"OUT_FEATURES={out_features!r} is invalid: expected a non-empty subset of {all_names}"
            )
        # As Detectron2's ResNet, stages after the last requested output are not built.
        built = all_names[: max(all_names.index(f) for f in out_features) + 1]
        self.wiring = wiring
        self.regime = regime
        self.drop_edge_prob = drop_edge_prob
        self._edge_removal_key: Optional[Tuple[int, ...]] = None
        self.stage_names: List[str] = []
        self._out_feature_channels: Dict[str, int] = {}
        self._out_feature_strides: Dict[str, int] = {}

        c1 = channels // 2
        self._add_stage(
            "conv1", Conv2d(in_channels, c1, 3, 2, 1, bias=False, norm=norm_layer(norm, c1)), c1
        )
        prev = c1
        if regime == "small" and "conv2" in built:
            conv2 = nn.Sequential(
                nn.ReLU(), nn.Conv2d(c1, channels, 3, 2, 1, bias=False), norm_layer(norm, channels)
            )
            self._add_stage("conv2", conv2, channels)
            prev = channels
        stage_args = (node_op, norm, execution, memory_efficient, recompute_convs, device)
        for name, _, c in [s for s in specs if s[0] in built]:
            self._add_stage(name, WiredStage(wiring[name], prev, c, *stage_args), c)
            prev = c
        self._out_features = out_features
        fp = wiring.fingerprint().encode()
        self.register_buffer("wiring_fingerprint", torch.tensor(list(fp), dtype=torch.uint8))
        self.freeze(freeze_at)

    def _add_stage(self, name: str, module: nn.Module, channels: int):
        self.add_module(name, module)
        self.stage_names.append(name)
        self._out_feature_channels[name] = channels
        self._out_feature_strides[name] = STAGE_STRIDES[name]

    def wired_stages(self) -> Dict[str, WiredStage]:
        return {
            n: getattr(self, n)
            for n in self.stage_names
            if isinstance(getattr(self, n), WiredStage)
        }

    def set_execution(
        self,
        execution: Optional[str] = None,
        memory_efficient: Optional[bool] = None,
        recompute_convs: Optional[bool] = None,
        fold_norms: Optional[bool] = None,
        device=None,
    ):
        """Switch how every wired stage runs (weights and function unchanged); the execution's
        path is decided again for `device` (default: where the trunk's parameters are)."""
        for stage in self.wired_stages().values():
            if fold_norms is not None:
                stage.fold_norms = bool(fold_norms)
            if recompute_convs is not None:
                stage.recompute_convs = bool(recompute_convs)
            if execution is not None or device is not None:
                stage.set_execution(execution or stage.execution, device)
            if memory_efficient is not None:
                stage.memory_efficient = bool(memory_efficient)
        return self

    @contextlib.contextmanager
    def executions(self, execution: str):
        """`set_execution(execution)` for the duration of a `with` block."""
        before = {name: stage.execution for name, stage in self.wired_stages().items()}
        self.set_execution(execution)
        try:
            yield self
        finally:
            for name, stage in self.wired_stages().items():
                stage.set_execution(before[name])

    def seed_edge_removal(self, key: Sequence[int]) -> None:
        """Draw the next edge removal from `key` (e.g. (SEED, iteration, rank)): exact resumes."""
        self._edge_removal_key = tuple(int(k) for k in key)

    def _sample_removed_edge(self) -> Optional[Tuple[str, Tuple[int, int]]]:
        if not self.training or self.drop_edge_prob <= 0.0:
            return None
        if self._edge_removal_key is not None:
            rng = np.random.default_rng(np.random.SeedSequence(self._edge_removal_key))
            self._edge_removal_key = None  # one key, one draw
            draw, pick = rng.random(), rng.random()
        else:
            draw, pick = torch.rand(2).tolist()
        if draw >= self.drop_edge_prob:
            return None
        candidates = [(n, e) for n, s in self.wired_stages().items() for e in s.removable_edges()]
        if not candidates:
            return None
        return candidates[min(int(pick * len(candidates)), len(candidates) - 1)]

    def compile_regions(self, regions: str, backend: Optional[str] = None) -> "RandWire":
        """Regional `torch.compile` (MODEL.RANDWIRE.COMPILE), in place."""
        return compile_regions(self, regions, backend)

    def use_edge_masks(self) -> "RandWire":
        """Give edge removal to the nodes as slices of one device buffer `edge_keep` (0 on the
        removed edge) instead of a Python index, which compiled nodes and CUDA graphs cannot
        take. Forward draws it unless `edge_masks_drawn_by_caller` (a CUDA-graph trainer calls
        `draw_edge_removal()` before each replay)."""
        slices, n = {}, 0
        for name, stage in self.wired_stages().items():
            for v, node in enumerate(stage.nodes):
                if node.weight is not None:
                    slices[(name, v)] = (n, len(node.weight))
                    n += len(node.weight)
        self._mask_slices = slices
        self._mask_views = (None, None)
        self._keep_clean = True
        self.edge_masks_drawn_by_caller = False
        device = self.wiring_fingerprint.device
        self.register_buffer("edge_keep", torch.ones(n, device=device), persistent=False)
        return self

    @property
    def uses_edge_masks(self) -> bool:
        return getattr(self, "edge_keep", None) is not None

    def draw_edge_removal(self) -> Optional[Tuple[str, Tuple[int, int]]]:
        """Draw this minibatch's removed edge as forward does into `edge_keep`; returns (stage,
        (node, input position)) or None."""
        removed = self._sample_removed_edge()
        if not self._keep_clean:
            self.edge_keep.fill_(1.0)
            self._keep_clean = True
        if removed is not None:
            name, (v, i) = removed
            self.edge_keep[self._mask_slices[(name, v)][0] + i].fill_(0.0)
            self._keep_clean = False
        return removed

    def _stage_masks(self) -> Dict[str, Dict[int, torch.Tensor]]:
        """{stage: {node: its keep mask}}: views of `edge_keep`, made again when it moved."""
        key, views = self._mask_views
        if key != self.edge_keep.data_ptr():
            views = {name: {} for name in self.wired_stages()}
            for (name, v), (start, k) in self._mask_slices.items():
                views[name][v] = self.edge_keep[start : start + k]
            self._mask_views = (self.edge_keep.data_ptr(), views)
        return views

    def forward(self, x):
        if self.uses_edge_masks and self.training:
            if not self.edge_masks_drawn_by_caller:
                self.draw_edge_removal()
            masks, removed = self._stage_masks(), None
        else:
            masks, removed = None, self._sample_removed_edge()
        outputs = {}
        for name in self.stage_names:
            stage = getattr(self, name)
            if isinstance(stage, WiredStage):
                if masks is not None:
                    x = stage(x, masks[name])
                else:
                    x = stage(x, removed[1] if removed and removed[0] == name else None)
            else:
                x = stage(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self):
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    def freeze(self, freeze_at: int = 0):
        """Freeze conv1..conv{freeze_at}: no gradients, BN becomes FrozenBN (0 = nothing)."""
        if not 0 <= freeze_at <= len(STAGE_STRIDES):
            raise ValueError(
                f"FREEZE_AT={freeze_at!r} is invalid: expected an integer in [0, {len(STAGE_STRIDES)}]"
            )
        for name in self.stage_names[:freeze_at]:
            stage = getattr(self, name)
            for p in stage.parameters():
                p.requires_grad_(False)
            setattr(self, name, FrozenBatchNorm2d.convert_frozen_batchnorm(stage))
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "wiring_fingerprint"
        mine = self.wiring.fingerprint()
        if key in state_dict:
            theirs = bytes(state_dict[key].tolist()).decode(errors="replace")
            if theirs != mine:
                raise WiringMismatchError(
                    f"weights were trained with wiring {theirs}, but the model has wiring {mine}: "
                    "nodes of different wirings have the same shapes and would load silently. "
                    "Build the model with the checkpoint's wiring (MODEL.RANDWIRE.WIRING_FILE, or "
                    "the same GENERATOR/SEED/NUM_NODES and generator parameters)."
                )
        elif any(k.startswith(prefix) for k in state_dict):
            raise WiringMismatchError(
                f"weights under {prefix!r} carry no wiring fingerprint ({key} is missing), so "
                f"they cannot be checked against the model's wiring {mine}"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@contextlib.contextmanager
def execution_mode(module: nn.Module, execution: str):
    """Run every RandWire trunk inside `module` with `execution` for the duration of the block."""
    with contextlib.ExitStack() as stack:
        for trunk in [m for m in module.modules() if isinstance(m, RandWire)]:
            stack.enter_context(trunk.executions(execution))
        yield module


def wiring_from_cfg(cfg) -> NetworkWiring:
    """MODEL.RANDWIRE.WIRING_FILE if set, else g(theta, s) from the generator keys."""
    rw = cfg.MODEL.RANDWIRE
    if rw.WIRING_FILE:
        return NetworkWiring.load(rw.WIRING_FILE, "MODEL.RANDWIRE.WIRING_FILE")
    return network_wiring(rw.GENERATOR, rw.NUM_NODES, rw.SEED, rw.REGIME, **generator_params(cfg))


@BACKBONE_REGISTRY.register()
def build_randwire_backbone(cfg, input_shape: ShapeSpec):
    """The RandWire trunk built from MODEL.RANDWIRE and MODEL.BACKBONE.FREEZE_AT."""
    rw = cfg.MODEL.RANDWIRE
    # fmt: off
    trunk = RandWire(
        wiring           = wiring_from_cfg(cfg),
        channels         = rw.CHANNELS,
        regime           = rw.REGIME,
        node_op          = rw.NODE_OP,
        norm             = rw.NORM,
        out_features     = rw.OUT_FEATURES,
        drop_edge_prob   = rw.DROP_EDGE_PROB,
        freeze_at        = cfg.MODEL.BACKBONE.FREEZE_AT,
        in_channels      = input_shape.channels,
        execution        = rw.EXECUTION,
        memory_efficient = rw.MEMORY_EFFICIENT,
        recompute_convs  = rw.RECOMPUTE_CONVS,
        device           = cfg.MODEL.DEVICE,
    )
    # fmt: on
    if rw.COMPILE:
        check_compile(rw.COMPILE, rw.EXECUTION, rw.MEMORY_EFFICIENT)
        trunk.compile_regions(rw.COMPILE)
    return trunk
