"""MkDocs hook (mkdocs.yml ``hooks:``): the benchmarks' figures into the site.

The results pages include the benchmarks' own reports (``--8<-- "reports/bench/<name>.md"``), whose figures are linked
relative to the report (``![...](criteria.png)``, beside it in reports/bench/, as GitHub shows it). Included into
docs/results/<page>.md, that link points at results/<name>.png: this hook adds every reports/bench/*.png there, read
from reports/bench/ at build time, so no figure is copied into docs/ by hand and a missing one fails the strict build.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

BENCH = Path("reports") / "bench"  # relative to the repository root, where mkdocs runs (snippets' base_path too)


def on_files(files: Files, config) -> Files:
    root = Path(config.config_file_path).parent
    for png in sorted((root / BENCH).glob("*.png")):
        files.append(File.generated(config, f"results/{png.name}", abs_src_path=str(png)))
    return files
