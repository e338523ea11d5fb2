"""Markdown tables, as every tool and benchmark prints them: tabulate's "pipe" tables (GitHub's
Markdown), cells as str() gives them and not padded (a row reads `| ER(0.2) | 16 | 3/3 |`)."""

from typing import Sequence

from tabulate import DataRow, TableFormat, tabulate

__all__ = ["markdown_table"]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], align: str = "") -> str:
    """`header` and `rows` as a Markdown table, columns left-aligned but where align[i] is "r"
    (said by the rule under the header: the cells themselves are not padded)."""
    right = [a == "r" for a in align.ljust(len(header))]

    def rule(widths, _):
        return (
            "|" + "|".join("-" * (w - 1) + (":" if r else "-") for w, r in zip(widths, right)) + "|"
        )

    row = DataRow("|", "|", "|")
    pipe = TableFormat(None, rule, None, None, row, row, padding=1, with_header_hide=None)
    # No alignment: tabulate pads no cell; no number parsing: every cell is str() of itself.
    return tabulate(
        rows,
        list(header),
        tablefmt=pipe,
        stralign=None,
        numalign=None,
        disable_numparse=True,
        missingval="None",
    )
