"""Pictures of wirings: one stage as a layered DAG (Fig. 1) or the undirected graph on a ring
(Fig. 4); blue marks nodes fed by the input node, red the nodes averaged by the output node."""

from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402

from .graphs import NetworkWiring, StageWiring  # noqa: E402

__all__ = ["draw_stage", "draw_network", "draw_generator_grid", "plot_damage", "save_figure"]

INPUT_COLOR, OUTPUT_COLOR, NODE_COLOR, BOTH_COLOR = "#1f77b4", "#d62728", "#bbbbbb", "#9467bd"


def _colors(w: StageWiring) -> List[str]:
    ins, outs = set(w.input_nodes), set(w.output_nodes)
    by_role = {
        (False, False): NODE_COLOR,
        (True, False): INPUT_COLOR,
        (False, True): OUTPUT_COLOR,
        (True, True): BOTH_COLOR,
    }
    return [by_role[v in ins, v in outs] for v in range(w.num_nodes)]


def save_figure(fig, path: str) -> str:
    """Save `fig` as PNG at `path` (tight layout, 110 dpi), close it; returns `path`."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_stage(w: StageWiring, ax, layout: str = "layered", title: str = "") -> None:
    """Draw one stage on a matplotlib axis: "layered" (the DAG with its input and output nodes)
    or "ring" (undirected, nodes on a circle in DAG order, as Fig. 4)."""
    if layout == "layered":
        g = w.to_networkx(with_io=True)
        pos = {}  # x: depth (longest path from the input node), y: spread within a depth
        for depth, layer in enumerate(nx.topological_generations(g)):
            for i, v in enumerate(sorted(layer, key=str)):
                pos[v] = (depth, i - (len(layer) - 1) / 2)
        colors = _colors(w) + ["black", "black"]
        nodelist = list(range(w.num_nodes)) + ["input", "output"]
        nx.draw_networkx_edges(g, pos, ax=ax, arrows=True, arrowsize=6, width=0.5, alpha=0.6)
        nx.draw_networkx_nodes(g, pos, nodelist=nodelist, node_color=colors, node_size=60, ax=ax)
    elif layout == "ring":
        g = w.to_networkx().to_undirected()
        angles = 2 * np.pi * np.arange(w.num_nodes) / w.num_nodes
        pos = {v: (np.sin(a), np.cos(a)) for v, a in enumerate(angles)}
        nx.draw_networkx_edges(g, pos, ax=ax, width=0.5, alpha=0.6)
        nx.draw_networkx_nodes(g, pos, node_color=_colors(w), node_size=40, ax=ax)
        ax.set_aspect("equal")
    else:
        raise ValueError(f"layout={layout!r} is unknown: expected 'layered' or 'ring'")
    ax.set_title(title or f"N={w.num_nodes}, E={len(w.edges)}", fontsize=9)
    ax.set_axis_off()


def draw_network(wiring: NetworkWiring, path: str, layout: str = "layered", title: str = "") -> str:
    """One panel per random stage; saved as PNG at `path`."""
    names = list(wiring.stages)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        w = wiring[name]
        draw_stage(w, ax, layout, f"{name}: N={w.num_nodes}, E={len(w.edges)}")
    fig.suptitle(title or f"wiring {wiring.fingerprint()} (blue: fed by input, red: to output)")
    return save_figure(fig, path)


def draw_generator_grid(rows: Sequence, path: str) -> str:
    """rows: [(label, StageWiring)], drawn on rings side by side (Fig. 4)."""
    cols = min(4, len(rows))
    nrows = (len(rows) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (label, w) in zip(axes.flat, rows):
        draw_stage(w, ax, "ring", f"{label}: E={len(w.edges)}")
    return save_figure(fig, path)


def plot_damage(damage: Dict, path: str) -> str:
    """Fig. 5: accuracy change per removed node's output degree and removed edge's target's
    input degree (boxes, means as red circles, removals as dots)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, xlabel in [
        (axes[0], "nodes", "output degree of the removed node"),
        (axes[1], "edges", "input degree of the removed edge's target"),
    ]:
        by: Dict[int, List[float]] = {}
        for rec in damage[key]:
            by.setdefault(int(rec[2]), []).append(float(rec[-1]))
        degrees = sorted(by)
        if degrees:
            ax.boxplot([by[d] for d in degrees], positions=degrees, widths=0.6, showfliers=False)
            for d in degrees:
                ax.scatter([d] * len(by[d]), by[d], s=6, color=INPUT_COLOR, alpha=0.6)
                ax.scatter([d], [np.mean(by[d])], s=30, facecolors="none", edgecolors=OUTPUT_COLOR)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy change (points)")
    fig.suptitle(f"graph damage (baseline top-1 {damage['baseline']:.2f})")
    return save_figure(fig, path)
