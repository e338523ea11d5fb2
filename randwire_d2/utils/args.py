"""Bounded command-line numbers: every size a flag sets is checked before it is used."""

import argparse

__all__ = ["bounded_int"]


def bounded_int(low: int, high: int, limit: str = ""):
    """An argparse `type` for an integer in [low, high]; another value is an error naming the
    value, the range and `limit` (the name of the constant that sets `high`), which argparse
    prefixes with the flag."""
    where = f" ({limit})" if limit else ""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is invalid: expected {low}..{high}{where}")
        return value

    return parse
