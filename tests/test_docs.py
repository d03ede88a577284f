"""The docs site builds, strictly, with a page for every nav entry; every benchmark table has exactly one home.

The benchmarks write their tables into reports/bench/<name>.md only; the docs pages include them
(``--8<-- "reports/bench/<name>.md"``, pymdownx.snippets) instead of copying them, so no table is orphaned or stale.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

DOCS = REPO / "docs"
BENCH_REPORTS = REPO / "reports" / "bench"
SNIPPET = re.compile(r'^-{1,}8<-{1,}\s+"([^"]+)"\s*$', re.M)  # a block include: --8<-- "path[:section]"
LEFT_AS_IS = re.compile(r"<p>-+8&lt;-+\s")  # an include snippets did not resolve, rendered as a paragraph


def _config() -> dict:
    return yaml.safe_load((REPO / "mkdocs.yml").read_text())


def _nav_pages(nav) -> list[str]:
    """Every page (docs-relative .md path) of mkdocs.yml's nav, sections walked."""
    pages: list[str] = []
    for entry in nav if isinstance(nav, list) else [nav]:
        if isinstance(entry, str):
            pages.append(entry)
        elif isinstance(entry, dict):
            for value in entry.values():
                pages += [value] if isinstance(value, str) else _nav_pages(value)
    return [p for p in pages if p.endswith(".md")]


def _built(site: Path, page: str, directory_urls: bool) -> Path:
    stem = page[: -len(".md")]
    if not directory_urls or Path(stem).name == "index":
        return site / f"{stem}.html"
    return site / stem / "index.html"


def _includes() -> dict[str, set[str]]:
    """Included file (repository-relative, section dropped) -> the docs pages that include it."""
    found: dict[str, set[str]] = {}
    for page in DOCS.rglob("*.md"):
        for target in SNIPPET.findall(page.read_text()):
            found.setdefault(target.split(":", 1)[0], set()).add(page.relative_to(DOCS).as_posix())
    return found


def test_the_site_builds_strictly_with_a_page_for_every_nav_entry(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    config = _config()
    pages = _nav_pages(config["nav"])
    assert pages and len(pages) == len(set(pages))
    directory_urls = config.get("use_directory_urls", True)
    for page in pages:
        assert (DOCS / page).is_file(), f"nav names {page}, which docs/ does not have"
        html = _built(site, page, directory_urls)
        assert html.is_file(), f"no built page for nav entry {page} ({html.relative_to(site)})"
        assert not LEFT_AS_IS.search(html.read_text()), f"{page}: an include was left as text"
    # the includes landed: README's summary and stage table, the benchmarks' tables and figures
    assert "Pruning summary" in _built(site, "index.md", directory_urls).read_text()
    assert "What each stage does" in _built(site, "pipeline.md", directory_urls).read_text()
    for report, including in _includes().items():
        if report.startswith("reports/bench/") and "|---" in (REPO / report).read_text():
            for page in including:
                assert "<table>" in _built(site, page, directory_urls).read_text(), f"{page}: {report} not included"
    for png in BENCH_REPORTS.glob("*.png"):
        assert (site / "results" / png.name).is_file(), f"figure {png.name} missing from the site"


def test_every_benchmark_report_is_included_by_a_docs_page():
    reports = {p.relative_to(REPO).as_posix() for p in BENCH_REPORTS.glob("*.md")}
    assert reports, "no reports/bench/*.md"
    orphaned = sorted(reports - set(_includes()))
    assert not orphaned, f"benchmark reports no docs page includes (--8<-- \"...\"): {orphaned}"


def test_no_docs_page_copies_a_benchmark_table():
    copied = [p.relative_to(REPO).as_posix() for p in [*DOCS.rglob("*.md"), REPO / "README.md"]
              if "<!-- bench:" in p.read_text()]
    assert not copied, f"benchmark tables are included from reports/bench/*.md, never copied: {copied}"
