"""``python -m bench``: the benchmarks, one line each (the first line of the module's docstring, read without
importing it)."""

import ast
from pathlib import Path

from bench import BENCHMARKS

for name in BENCHMARKS:
    doc = ast.get_docstring(ast.parse((Path(__file__).parent / f"{name}.py").read_text())) or ""
    print(f"{name:12} {doc.splitlines()[0] if doc else ''}")
