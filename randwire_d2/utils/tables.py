"""Markdown tables, as every tool and benchmark prints them."""

from typing import Sequence

__all__ = ["markdown_row", "markdown_table"]


def markdown_row(cells: Sequence) -> str:
    """One Markdown table row of `cells` (str() of each), for a table printed row by row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], align: str = "") -> str:
    """`header` and `rows` as a Markdown table, columns left-aligned but where align[i] is "r"."""
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align.ljust(len(header)))
    return "\n".join([markdown_row(header), rule, *map(markdown_row, rows)])
