"""Measurements of the project (not tests): each module runs as `python benchmarks/X.py` or
`python -m benchmarks.X` from the repository root, and imports its siblings either way."""
