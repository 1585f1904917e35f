"""MkDocs hooks (mkdocs.yml): README.md is the site's home page and BENCHMARKS.md (with its plots) a page, so that
each is written once, at the repository's root, where GitHub shows it; links are rewritten to the site's layout."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]


def on_files(files: Files, config: Any) -> Files:
    """Add README.md as ``index.md``, BENCHMARKS.md and the plots it shows (``benchmarks/plots``)."""
    files.append(File.generated(config, "index.md", abs_src_path=str(ROOT / "README.md")))
    files.append(File.generated(config, "BENCHMARKS.md", abs_src_path=str(ROOT / "BENCHMARKS.md")))
    for png in sorted((ROOT / "benchmarks" / "plots").rglob("*.png")):
        files.append(File.generated(config, png.relative_to(ROOT).as_posix(), abs_src_path=str(png)))
    return files


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """README's ``docs/x.md`` links are ``x.md`` on the site; the pages' ``../BENCHMARKS.md`` is ``BENCHMARKS.md``."""
    if page.file.src_uri == "index.md":
        return re.sub(r"\]\(docs/", "](", markdown)
    return markdown.replace("](../BENCHMARKS.md", "](BENCHMARKS.md").replace("](../README.md", "](index.md")
