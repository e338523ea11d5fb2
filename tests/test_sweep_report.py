"""randwire_d2/sweep/report.py: a sweep's tables, charts and correlations over seeds."""

import csv
import math
import os

import pytest

from randwire_d2.sweep.report import (
    aggregate,
    op_correlations,
    pearson,
    plot_fig3,
    plot_fig6,
    report,
    write_tables,
)

GROUPS = [
    ("ws", {"K": 4, "P": 0.75}, "WS(4, 0.75)"),
    ("er", {"P": 0.2}, "ER(0.2)"),
    ("ba", {"M": 5}, "BA(5)"),
]


def record(group, op, seed, top1, flops=580e6, crop="val_224"):
    gen, params, label = next(g for g in GROUPS if g[2] == group)
    results = None if top1 is None else {crop: {"top1": top1, "top5": top1 + 20}}
    return dict(
        name=f"{gen}-{op}-s{seed}",
        group=label,
        generator=gen,
        params=params,
        node_op=op,
        channels=78,
        regime="small",
        seed=seed,
        flops=flops,
        params_count=5.6e6,
        results=results,
    )


def sweep():
    """Two node ops over three generators; conv3x3 = sep_conv3x3 - 2 (same ranking)."""
    means = {"WS(4, 0.75)": 74.0, "ER(0.2)": 72.0, "BA(5)": 71.0}
    recs = []
    for op, shift in [("sep_conv3x3", 0.0), ("conv3x3", -2.0)]:
        for group, m in means.items():
            recs += [record(group, op, s, m + shift + d) for s, d in [(1, -1), (2, 0), (3, 1)]]
    return recs


def test_aggregate_mean_std_over_seeds():
    recs = [record("WS(4, 0.75)", "sep_conv3x3", s, t) for s, t in [(1, 70), (2, 72), (3, 74)]]
    (row,) = aggregate(recs)
    assert row["generator"] == "WS(4, 0.75)" and row["seeds"] == [1, 2, 3] and row["runs"] == 3
    assert row["val_224/top1_mean"] == pytest.approx(72.0)
    assert row["val_224/top1_std"] == pytest.approx(math.sqrt(8 / 3))
    assert row["val_224/top5_mean"] == pytest.approx(92.0)


def test_unfinished_runs_count_in_complexity_not_accuracy():
    recs = [
        record("ER(0.2)", "sep_conv3x3", 1, 70, flops=570e6),
        record("ER(0.2)", "sep_conv3x3", 2, 74, flops=580e6),
        record("ER(0.2)", "sep_conv3x3", 3, None, flops=590e6),
        record("BA(5)", "sep_conv3x3", 1, None),
    ]
    er, ba = aggregate(recs)
    assert er["runs"] == 3 and er["seeds"] == [1, 2]
    assert er["flops_mean"] == pytest.approx(580e6)
    assert er["flops_std"] == pytest.approx(math.sqrt(200 / 3) * 1e6)
    assert er["val_224/top1_mean"] == pytest.approx(72.0)
    assert er["val_224/top1_std"] == pytest.approx(2.0)
    assert ba["runs"] == 1 and ba["seeds"] == [] and math.isnan(ba["val_224/top1_mean"])


def test_aggregate_rejects_incomplete_record():
    rec = record("BA(5)", "sep_conv3x3", 1, 70)
    del rec["flops"]
    with pytest.raises(ValueError, match="flops"):
        aggregate([rec])


def test_pearson_hand_made_series():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(pearson([1, 2, 3], [5, 5, 5]))
    with pytest.raises(ValueError, match="3, 2"):
        pearson([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="1, 1"):
        pearson([1], [1])


def test_op_correlations_pairs():
    recs = sweep() + [record("BA(5)", "pool3x3_conv1x1", s, 60.0 + s) for s in (1, 2)]
    recs += [record("ER(0.2)", "pool3x3_conv1x1", 1, 65.0)]
    corr = op_correlations(aggregate(recs))
    assert set(corr) == {
        ("sep_conv3x3", "conv3x3"),
        ("sep_conv3x3", "pool3x3_conv1x1"),
        ("conv3x3", "pool3x3_conv1x1"),
    }
    assert corr[("sep_conv3x3", "conv3x3")] == pytest.approx(1.0)
    # over ER(0.2), BA(5): sep_conv3x3 72 > 71 while pool 65 > 61.5
    assert corr[("sep_conv3x3", "pool3x3_conv1x1")] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="val_224/top9"):
        op_correlations(aggregate(recs), metric="val_224/top9")


def test_write_tables(tmp_path):
    recs = [record("WS(4, 0.75)", "sep_conv3x3", s, t) for s, t in [(1, 70), (2, 72), (3, 74)]]
    recs.append(record("WS(4, 0.75)", "sep_conv3x3", 4, None))
    md, csv_path = write_tables(aggregate(recs), str(tmp_path), stem="t")
    text = open(md).read()
    assert "| WS(4, 0.75) | sep_conv3x3 | 78 | 3/4 | 580.0 ± 0.0 | 5.60 ± 0.00 |" in text
    assert "72.00 ± 1.63 | 92.00 ± 1.63 |" in text
    with open(csv_path) as f:
        (row,) = list(csv.DictReader(f))
    assert row["generator"] == "WS(4, 0.75)" and row["seeds"] == "1 2 3" and row["runs"] == "4"
    assert float(row["val_224/top1_mean"]) == pytest.approx(72.0)
    assert float(row["val_224/top1_std"]) == pytest.approx(math.sqrt(8 / 3))
    assert float(row["flops_mean"]) == pytest.approx(580e6)


def test_plots_write_pngs(tmp_path):
    rows = aggregate(sweep())
    for plot, name in [(plot_fig3, "fig3.png"), (plot_fig6, "fig6.png")]:
        path = plot(rows, str(tmp_path / name))
        assert os.path.getsize(path) > 0
    unfinished = aggregate(
        [record("BA(5)", "conv3x3", 1, 70), record("ER(0.2)", "conv3x3", 1, None)]
    )
    with pytest.raises(ValueError, match="no finished runs"):
        plot_fig3(unfinished[1:], str(tmp_path / "none.png"))


def test_report_text_has_table_and_pearson_lines(tmp_path):
    text = report(sweep(), str(tmp_path))
    assert "| WS(4, 0.75) | sep_conv3x3 | 78 | 3/3 |" in text
    assert "pearson(sep_conv3x3, conv3x3) = 1.00 over 3 generators" in text
    for name in ["results.md", "results.csv", "fig3.png", "fig6.png"]:
        assert os.path.getsize(tmp_path / name) > 0


def test_report_skips_charts_without_finished_runs(tmp_path):
    text = report([record("BA(5)", "conv3x3", 1, None)], str(tmp_path))
    assert "no finished runs for val_224/top1: charts skipped" in text
    assert not os.path.exists(tmp_path / "fig3.png")


def cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_tables_are_tabulate_s_pipe_tables_with_unpadded_cells(tmp_path):
    from tabulate import tabulate

    from randwire_d2.utils.tables import markdown_table

    head, rows = ["generator", "C", "top-1"], [["WS(4, 0.75)", 78, 72.5], ["ER(0.2)", 109, None]]
    plain = dict(stralign=None, numalign=None, disable_numparse=True, missingval="None")
    assert markdown_table(head, rows) == tabulate(rows, head, "pipe", **plain)
    table = markdown_table(head, rows, align="lr").splitlines()
    pipe = tabulate(rows, head, "pipe", colalign=[None, "right", None], **plain).splitlines()
    assert table[1] == pipe[1] == "|-------------|----:|---------|"  # its rule, colon and all
    assert table[0] == "| generator | C | top-1 |"  # the right-aligned column is not padded
    assert table[2:] == ["| WS(4, 0.75) | 78 | 72.5 |", "| ER(0.2) | 109 | None |"]
    assert [cells(x) for x in table] == [cells(x) for x in pipe]
    # The report's table: one row per line, as many cells as the header.
    recs = [record("WS(4, 0.75)", "sep_conv3x3", s, t) for s, t in [(1, 70), (2, 72)]]
    md, _ = write_tables(aggregate(recs), str(tmp_path))
    lines = open(md).read().splitlines()
    assert len(lines) == 3 and {len(cells(x)) for x in lines} == {len(cells(lines[0]))}
