"""The one place that decides what a file given to the process may make it do, for every kind the
tools read (weights, yacs yaml, LazyConfig yaml, wiring, dataset and results json, images):
regular files only, read with a byte bound per kind (`files`); yaml without tags or aliases
(`yaml_safe`); a LazyConfig target allowed by what it resolves to (`targets`); weights that are
plain tensors and numeric arrays whose declared sizes are checked before anything is allocated
(`weights`)."""

from .files import LIMITS, FileTrustError, open_regular, read_bounded

__all__ = ["LIMITS", "FileTrustError", "open_regular", "read_bounded"]
