"""The paper's analyses: generator comparison (Fig. 3/4) and graph damage (Fig. 5, Sec. 4.1:
a trained network evaluated with one node or edge removed, i.e. sending zeros).
"""

import contextlib
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import numpy as np
import torch

from .graphs import graph_statistics, sample
from .modeling.randwire import RandWire

__all__ = ["FIG3_GENERATORS", "compare_generators", "remove_edge"]
__all__ += ["remove_node", "graph_damage", "summarize_damage"]

# The generator settings of Fig. 3 (small regime, N = 32).
FIG3_GENERATORS: List[Tuple[str, Dict]] = (
    [("er", {"P": p}) for p in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)]
    + [("ba", {"M": m}) for m in (1, 2, 3, 4, 5, 6, 7, 8)]
    + [("ws", {"K": k, "P": p}) for k in (2, 4, 6, 8) for p in (0.25, 0.5, 0.75, 1.0)]
    + [("ws", {"K": k, "P": 0.0}) for k in (2, 4, 6, 8)]
)


def label(generator: str, params: Dict) -> str:
    return f"{generator.upper()}({', '.join(str(v) for v in params.values())})"


def compare_generators(
    settings: Sequence[Tuple[str, Dict]] = FIG3_GENERATORS,
    num_nodes: int = 32,
    seeds: Iterable[int] = range(1, 6),
) -> List[Dict]:
    """Graph statistics (mean, std over seeds) for each generator setting."""
    rows = []
    seeds = list(seeds)
    for gen, params in settings:
        stats = [graph_statistics(sample(gen, num_nodes, s, **params)) for s in seeds]
        row = {"generator": label(gen, params)}
        for key in stats[0]:
            vals = np.array([st[key] for st in stats], dtype=np.float64)
            vals = vals[~np.isnan(vals)]  # path length is undefined for disconnected graphs
            row[key] = (float(vals.mean()), float(vals.std())) if vals.size else (np.nan, np.nan)
        rows.append(row)
    return rows


def _stage(trunk: RandWire, stage: str):
    stages = trunk.wired_stages()
    if stage not in stages:
        raise ValueError(f"stage={stage!r} is not a random stage: expected one of {sorted(stages)}")
    return stages[stage]


@contextlib.contextmanager
def remove_edge(trunk: RandWire, stage: str, edge: Tuple[int, int]):
    """Within the block, edge u -> v of `stage` carries zeros."""
    st = _stage(trunk, stage)
    u, v = edge
    if (u, v) not in st.wiring.edges:
        raise ValueError(
            f"edge={edge!r} is not in stage {stage}: expected one of {list(st.wiring.edges)}"
        )
    pos = st.preds[v].index(u)

    def zero_input(module, args):
        inputs = list(args[0])
        inputs[pos] = torch.zeros_like(inputs[pos])
        return (inputs,) + tuple(args[1:])

    with st.nodes[v].register_forward_pre_hook(zero_input):
        yield


@contextlib.contextmanager
def remove_node(trunk: RandWire, stage: str, node: int):
    """Within the block, node `node` of `stage` outputs zeros."""
    st = _stage(trunk, stage)
    if not 0 <= node < len(st.nodes):
        raise ValueError(f"node={node!r} is invalid: expected an integer in [0, {len(st.nodes)})")
    with st.nodes[node].register_forward_hook(lambda m, a, out: torch.zeros_like(out)):
        yield


def graph_damage(
    trunk: RandWire, evaluate: Callable[[], float], stages: Sequence[str] = ()
) -> Dict:
    """Accuracy change of every single-node and single-edge removal (Fig. 5), by `evaluate()`:
    {"baseline": acc, "nodes": [(stage, node, out_degree, delta)],
     "edges": [(stage, (u, v), in_degree_of_v, delta)]}, delta = damaged - baseline."""
    base = evaluate()
    out = {"baseline": base, "nodes": [], "edges": []}
    for name in stages or list(trunk.wired_stages()):
        st = _stage(trunk, name)
        w = st.wiring
        for v in range(w.num_nodes):
            out_degree = sum(1 for a, _ in w.edges if a == v) or 1  # output node counts as one
            with remove_node(trunk, name, v):
                out["nodes"].append((name, v, out_degree, evaluate() - base))
        for u, v in w.edges:
            with remove_edge(trunk, name, (u, v)):
                out["edges"].append((name, (u, v), len(st.preds[v]), evaluate() - base))
    return out


def summarize_damage(
    records: Sequence[Tuple], degree_index: int = 2
) -> Dict[int, Dict[str, float]]:
    """Group damage records by degree: {degree: {"count", "mean", "median"}} of delta."""
    by: Dict[int, List[float]] = {}
    for r in records:
        by.setdefault(int(r[degree_index]), []).append(float(r[-1]))
    return {
        d: {"count": len(v), "mean": float(np.mean(v)), "median": float(np.median(v))}
        for d, v in sorted(by.items())
    }
