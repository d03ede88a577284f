"""Benchmarks: commands that print and write figures (not tests), outside the package, like torch-pruning's reproduce/.

Run one with ``python -m bench.<name> [--help]`` from the repository root, or ``python -m pruning bench <name> ...``;
``python -m pruning bench list`` (``python -m bench``) lists them, each with the first line of its docstring.
"""

# The benchmarks: one module each (a test checks this against the modules of bench/ that run as a command)
BENCHMARKS = ("complexity", "complexity_structure", "criteria", "int8_width", "latency", "ort_profile", "overhead",
              "robust", "search", "sparse", "transformers")
