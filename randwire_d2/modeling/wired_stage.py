"""A wired stage (one random graph of nodes, Fig. 2) and its node: the modules the wiring builds."""

from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from ..graphs import StageWiring
from .aggregation import removal_at
from .execution import NodeSpec, StagePlan, fast_stage_forward
from .execution_path import EXECUTIONS, choose_execution
from .ops import build_node_op

__all__ = ["Node", "WiredStage", "check_execution"]


def _default_device() -> torch.device:
    """Where a model built without a device will run: Detectron2's default, CUDA if present."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_execution(execution: str) -> str:
    if execution not in EXECUTIONS:
        raise ValueError(f"EXECUTION={execution!r} is unknown: expected one of {list(EXECUTIONS)}")
    return execution


class Node(nn.Module):
    """Node (Fig. 2): y = conv(sum_i sigmoid(w_i) * x_i), conv = ReLU -> op -> norm."""

    def __init__(self, num_inputs: int, in_channels: int, out_channels: int, stride: int, op, norm):
        super().__init__()
        # A node with a single input passes it on: no aggregation weight.
        self.weight = nn.Parameter(torch.zeros(num_inputs)) if num_inputs > 1 else None
        self.transform = build_node_op(op, in_channels, out_channels, stride, norm)

    def forward(self, inputs: Sequence[torch.Tensor], removed=None):
        """`removed`: None, the input position of the removed edge, or a keep mask (1 per input,
        0 on the removed edge; see RandWire.use_edge_masks)."""
        if self.weight is None:
            x = inputs[0]
        else:
            w = torch.sigmoid(self.weight)
            if isinstance(removed, torch.Tensor):
                w = w * removed.to(w.dtype)
            elif removed is not None:
                keep = torch.ones_like(w)
                keep[removed] = 0.0
                w = w * keep
            x = sum(w[i] * inp for i, inp in enumerate(inputs))
        return self.transform(x)


class WiredStage(nn.Module):
    """One random graph: input node -> N nodes wired by `wiring` -> output node (mean). Nodes fed
    by the stage input take `in_channels` at stride 2, the others `out_channels` at stride 1."""

    def __init__(
        self,
        wiring: StageWiring,
        in_channels: int,
        out_channels: int,
        op,
        norm,
        execution: str = "fast",
        memory_efficient: bool = False,
        recompute_convs: bool = False,
        device=None,
    ):
        super().__init__()
        self.wiring = wiring
        self.set_execution(execution, device)
        self.memory_efficient = bool(memory_efficient)
        self.recompute_convs = bool(recompute_convs)
        self.fold_norms = True  # affine norms (FrozenBN; BN in eval) into each node's last conv
        inputs = set(wiring.input_nodes)
        self.preds = [wiring.predecessors(v) for v in range(wiring.num_nodes)]
        self.outputs = wiring.output_nodes
        nodes = []
        for v, preds in enumerate(self.preds):
            cin, stride = (in_channels, 2) if v in inputs else (out_channels, 1)
            nodes.append(Node(max(1, len(preds)), cin, out_channels, stride, op, norm))
        self.nodes = nn.ModuleList(nodes)
        self.plan = StagePlan(self.preds, self.outputs)
        self._specs = None
        # Set by RandWire.compile_regions: then the (compiled) per-node loop runs instead.
        self.compiled = ""

    def set_execution(self, execution: str, device=None):
        """Run as `execution` on `device` (default: the parameters'); the path is decided here."""
        if device is None:
            params = list(self.parameters())
            device = params[0].device if params else _default_device()
        self.path = choose_execution(check_execution(execution), device)
        self.execution = execution

    @property
    def specs(self) -> List[NodeSpec]:
        """Each node's NodeSpec; rebuilt when a norm was replaced (FrozenBN / SyncBN)."""
        key = tuple(
            id(n.transform[-1] if isinstance(n.transform, nn.Sequential) else n.transform)
            for n in self.nodes
        )
        if self._specs is None or self._specs[0] != key:
            self._specs = (key, [NodeSpec(node) for node in self.nodes])
        return self._specs[1]

    def removable_edges(self) -> List[Tuple[int, int]]:
        """Edges whose target node has input degree > 1, as (target node, input position)."""
        return [(v, i) for v, p in enumerate(self.preds) if len(p) > 1 for i in range(len(p))]

    def forward(self, x, removed_edge=None):
        """`removed_edge`: None, (node, input position) or {node: keep mask} (use_edge_masks)."""
        if self.execution != "reference" and not self.compiled:
            return fast_stage_forward(self, x, removed_edge)
        return self.forward_reference(x, removed_edge)

    def forward_reference(self, x, removed_edge=None):
        """The per-node loop of Fig. 2 as written: the ground truth of the fast execution."""
        out: Dict[int, torch.Tensor] = {}
        # Labels are a topological order: every edge goes from a smaller to a larger label.
        for v, node in enumerate(self.nodes):
            preds = self.preds[v]
            out[v] = node([out[u] for u in preds] if preds else [x], removal_at(removed_edge, v))
        return sum(out[v] for v in self.outputs) / len(self.outputs)
