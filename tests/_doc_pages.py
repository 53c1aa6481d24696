"""The documentation in reading order: README.md, then docs/'s pages in the order of mkdocs.yml's nav."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def nav_pages() -> list[Path]:
    """docs/'s pages as the site's navigation lists them (each `Title: page.md` entry, top to bottom)."""
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8").split("\nnav:\n", 1)[1]
    entries = re.findall(r"^\s+- (?:[^:\n]+: )?([\w/.-]+\.md)\s*$", nav.split("\n\n", 1)[0], flags=re.M)
    return [DOCS / entry for entry in entries]


def reading_order() -> list[Path]:
    """README.md first, then the pages of the site."""
    return [ROOT / "README.md", *nav_pages()]
