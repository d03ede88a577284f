"""Benchmarks: commands that print and write figures (not tests), outside the package, like torch-pruning's reproduce/.

Run one with ``python -m bench.<name> [--help]`` from the repository root, or ``python -m pruning bench <name> ...``.
"""
