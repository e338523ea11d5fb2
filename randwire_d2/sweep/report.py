"""Sweep results as the paper reports them: mean ± std over seeds per generator setting and node
op, bars per generator grouped by family (Fig. 3), and one series per node op over the generators
with the Pearson correlation between series (Fig. 6)."""

import csv
import itertools
import math
import os
from typing import Dict, List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ..utils.tables import markdown_table  # noqa: E402
from ..visualize import save_figure  # noqa: E402

__all__ = ["aggregate", "pearson", "op_correlations", "write_tables", "report"]
__all__ += ["plot_fig3", "plot_fig6"]

METRICS = ("top1", "top5")
REFERENCE_OP = "sep_conv3x3"  # Fig. 6 sorts the generators by this op's accuracy
REQUIRED = ("group", "node_op", "channels", "regime", "seed", "flops", "params_count")


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return (float(a.mean()), float(a.std())) if a.size else (math.nan, math.nan)


def aggregate(records: Sequence[Dict]) -> List[Dict]:
    """One row per (group, node_op, channels, regime): mean and population std of complexity
    over all runs and of accuracy over finished seeds."""
    runs: Dict[tuple, List[Dict]] = {}
    for i, r in enumerate(records):
        missing = [k for k in REQUIRED if k not in r]
        if missing:
            raise ValueError(f"run record {r.get('name', i)!r} lacks keys {missing}")
        runs.setdefault((r["group"], r["node_op"], r["channels"], r["regime"]), []).append(r)
    crops = list(dict.fromkeys(c for r in records if r.get("results") for c in r["results"]))
    rows = []
    for (group, op, channels, regime), group_runs in runs.items():
        done = [r for r in group_runs if r.get("results")]
        row = dict(generator=group, node_op=op, channels=channels, regime=regime)
        row.update(seeds=[r["seed"] for r in done], runs=len(group_runs))
        row["flops_mean"], row["flops_std"] = _mean_std([r["flops"] for r in group_runs])
        row["params_mean"], row["params_std"] = _mean_std([r["params_count"] for r in group_runs])
        for crop, m in itertools.product(crops, METRICS):
            vals = [r["results"][crop][m] for r in done if m in r["results"].get(crop, {})]
            row[f"{crop}/{m}_mean"], row[f"{crop}/{m}_std"] = _mean_std(vals)
        rows.append(row)
    return rows


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation r of two equally long series; NaN when either is constant."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"pearson needs two series of equal length >= 2, got {len(x)}, {len(y)}")
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


def _crops(rows: Sequence[Dict]) -> List[str]:
    return list(dict.fromkeys(k.split("/")[0] for k in (rows[0] if rows else {}) if "/" in k))


def _series(rows: Sequence[Dict], metric: str) -> Dict[str, Dict[str, Tuple[float, float]]]:
    """{node_op: {generator: (mean, std)}} over the rows where `metric` has finished seeds."""
    known = [f"{c}/{m}" for c in _crops(rows) for m in METRICS]
    if rows and metric not in known:
        raise ValueError(f"metric {metric!r} is unknown: expected one of {known}")
    out: Dict[str, Dict[str, Tuple[float, float]]] = {}
    for r in rows:
        mean, std = r[f"{metric}_mean"], r[f"{metric}_std"]
        if math.isnan(mean):
            continue
        by_gen = out.setdefault(r["node_op"], {})
        if r["generator"] in by_gen:
            raise ValueError(
                f"{r['generator']} with node op {r['node_op']!r} appears in several rows "
                f"(channels or regime differ): pass the rows of one regime"
            )
        by_gen[r["generator"]] = (mean, std)
    return out


def op_correlations(rows: Sequence[Dict], metric: str = "val_224/top1") -> Dict[tuple, float]:
    """Pearson r between every two node ops' series over their common generators (Fig. 6)."""
    series = _series(rows, metric)
    out = {}
    for a, b in itertools.combinations(series, 2):
        common = [g for g in series[a] if g in series[b]]
        xs, ys = [series[a][g][0] for g in common], [series[b][g][0] for g in common]
        out[(a, b)] = pearson(xs, ys) if len(common) >= 2 else math.nan
    return out


def _pm(mean: float, std: float, fmt: str) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:{fmt}} ± {std:{fmt}}"


def write_tables(rows: Sequence[Dict], folder: str, stem: str = "results") -> Tuple[str, str]:
    """Write `stem`.md (mean ± std per row) and `stem`.csv (every column) into `folder`."""
    os.makedirs(folder, exist_ok=True)
    crops = _crops(rows)
    head = ["generator", "node op", "C", "seeds", "FLOPs (M)", "params (M)"]
    head += [f"{c} top-{m[3:]}" for c in crops for m in METRICS]
    cells = []
    for r in rows:
        row = [r["generator"], r["node_op"], r["channels"], f"{len(r['seeds'])}/{r['runs']}"]
        row += [_pm(r["flops_mean"] / 1e6, r["flops_std"] / 1e6, ".1f")]
        row += [_pm(r["params_mean"] / 1e6, r["params_std"] / 1e6, ".2f")]
        row += [_pm(r[f"{c}/{m}_mean"], r[f"{c}/{m}_std"], ".2f") for c in crops for m in METRICS]
        cells.append(row)
    md, csv_path = os.path.join(folder, f"{stem}.md"), os.path.join(folder, f"{stem}.csv")
    with open(md, "w") as f:
        f.write(markdown_table(head, cells) + "\n")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["generator"])
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "seeds": " ".join(str(s) for s in r["seeds"])})
    return md, csv_path


def _reference(series: Dict) -> str:
    if not series:
        raise ValueError("no finished runs to plot")
    return REFERENCE_OP if REFERENCE_OP in series else next(iter(series))


def plot_fig3(rows: Sequence[Dict], path: str, metric: str = "val_224/top1") -> str:
    """Fig. 3: one bar (mean ± std over seeds) per generator setting, grouped by family."""
    series = _series(rows, metric)
    op = _reference(series)
    gens = list(series[op])
    families = list(dict.fromkeys(g.split("(")[0] for g in gens))
    gens.sort(key=lambda g: families.index(g.split("(")[0]))  # stable: row order within a family
    fam = [families.index(g.split("(")[0]) for g in gens]
    x = np.arange(len(gens)) + 0.6 * np.array(fam)  # a gap between families
    mean, std = np.array([series[op][g] for g in gens]).T
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(gens) + 1.5), 3.8))
    bars = ax.bar(x, mean, yerr=std, capsize=3, color=[plt.cm.tab10(i) for i in fam])
    ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    lo, hi = float((mean - std).min()), float((mean + std).max())
    pad = max(hi - lo, 1.0) * 0.3
    ax.set_ylim(lo - pad, hi + pad)
    ax.legend(handles=[Patch(color=plt.cm.tab10(i), label=n) for i, n in enumerate(families)])
    return _save(fig, ax, x, gens, metric, f"{op}: mean ± std over seeds", path)


def plot_fig6(rows: Sequence[Dict], path: str, metric: str = "val_224/top1") -> str:
    """Fig. 6: one series (mean ± std) per node op over the generators, sorted by sep_conv3x3."""
    series = _series(rows, metric)
    ref = series[_reference(series)]
    others = [g for by_gen in series.values() for g in by_gen]
    gens = list(dict.fromkeys(sorted(ref, key=lambda g: ref[g][0]) + others))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(gens) + 1.5), 4.0))
    for op, by_gen in series.items():
        xs = [i for i, g in enumerate(gens) if g in by_gen]
        mean, std = np.array([by_gen[gens[i]] for i in xs]).T
        ax.errorbar(xs, mean, yerr=std, marker="o", markersize=4, capsize=2, label=op)
    ax.legend(fontsize=8)
    title = f"node operations, sorted by {_reference(series)}"
    return _save(fig, ax, range(len(gens)), gens, metric, title, path)


def _save(fig, ax, x, gens, metric: str, title: str, path: str) -> str:
    """Generator labels under the x ticks, the metric and title; write `path` and return it."""
    ax.set_xticks(x, gens, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def report(records: Sequence[Dict], folder: str, metric: str = "val_224/top1") -> str:
    """Aggregate `records`, write tables and charts into `folder`; returns the text to print."""
    rows = aggregate(records)
    md, _ = write_tables(rows, folder)
    with open(md) as f:
        lines = [f.read().rstrip()]
    series = _series(rows, metric) if _crops(rows) else {}
    if not series:
        return "\n".join(lines + [f"no finished runs for {metric}: charts skipped"])
    lines.append(f"fig3: {plot_fig3(rows, os.path.join(folder, 'fig3.png'), metric)}")
    if len(series) >= 2:
        lines.append(f"fig6: {plot_fig6(rows, os.path.join(folder, 'fig6.png'), metric)}")
        for (a, b), r in op_correlations(rows, metric).items():
            n = sum(g in series[b] for g in series[a])
            lines.append(f"pearson({a}, {b}) = {r:.2f} over {n} generators")
    return "\n".join(lines)
