"""The parsers are an optional extra: a missing one is reported with what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from dpr_pg.errors import IngestError

INSTALL = "pip install 'dpr-pg[documents]'"
# Import name -> (distribution on PyPI, what it reads).
PACKAGES = {
    "pypdf": ("pypdf", "PDF"),
    "trafilatura": ("trafilatura", "HTML"),
    "markdown_it": ("markdown-it-py", "Markdown"),
    "mdit_py_plugins": ("mdit-py-plugins", "Markdown front matter"),
    "yaml": ("PyYAML", "Markdown front matter"),
    "docx": ("python-docx", "DOCX"),
}
NEEDED = {"pdf": ("pypdf",), "html": ("trafilatura",), "markdown": ("markdown_it", "mdit_py_plugins", "yaml"),
          "docx": ("docx",)}


def require(module: str) -> ModuleType:
    """Import ``module`` (one of :data:`PACKAGES`), or raise :class:`IngestError` saying what to install.

    Example:
        >>> require("pypdf").__name__  # doctest: +SKIP
        'pypdf'
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        distribution, reads = PACKAGES[module]
        raise IngestError(f"reading {reads} files needs the Python package {distribution!r}, which is not "
                          f"installed; install the document parsers with: {INSTALL}") from e


def check_formats(formats: set[str]) -> None:
    """Fail before anything is read when a parser that ``formats`` need is missing."""
    for fmt in sorted(formats):
        for module in NEEDED[fmt]:
            require(module)
