"""Every ```python snippet of README.md and of docs/'s pages runs as written.

Each snippet runs in a fresh namespace, so it may use only the names it defines itself, and the
snippets of one file run in order against one database, as a reader following the file would:
the embedded PostgreSQL, the tiny models in DPR_PG_QUESTION_MODEL / DPR_PG_PASSAGE_MODEL, the tiny
reader in DPR_PG_READER_MODEL (as the README's Documents section exports it), and the working
directory at the top of the clone. The database starts as the README's reader has it after
`make demo` (the sample in collection 'demo') in an existing app's database: the tables of
examples/articles_app (authors, articles enabled with op.enable_dpr), with dpr_pg's schema.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from _doc_pages import ROOT, reading_order
from dpr_pg import EncoderPair, ingest, sample_corpus

DOCS = reading_order()  # README.md, then the site's pages (tests/test_docs_site.py: every page is in its nav)
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_snippets(text: str) -> list[tuple[int, str]]:
    """(line of the opening fence, code) of each ```python block, in order."""
    return [(text.count("\n", 0, match.start()) + 1, match.group(1)) for match in _FENCE.finditer(text)]


def test_snippets_are_found_with_their_lines() -> None:
    text = "# t\n\n```python\nx = 1\n```\n\n```sh\nls\n```\n```python\ny = 2\nz = 3\n```\n"
    assert python_snippets(text) == [(3, "x = 1\n"), (10, "y = 2\nz = 3\n")]


@pytest.fixture
def app_database(empty_url: str, pair: EncoderPair) -> Iterator[str]:
    """A reader's database: examples/articles_app migrated (dpr_pg's schema first), the demo's collection."""
    spec = importlib.util.spec_from_file_location("articles_app_for_docs", ROOT / "examples" / "articles_app" / "app.py")
    assert spec and spec.loader
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    engine = sa.create_engine(empty_url)
    app.migrate(engine)
    ingest(engine, pair, sample_corpus(), collection="demo", progress=False)  # what `make demo` leaves
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO authors (id, name) VALUES (1, 'Cervantes')"))
        conn.execute(sa.text("INSERT INTO articles (author_id, title, body) VALUES "
                             "(1, 'El Quijote', 'Un hidalgo de La Mancha lee libros de caballerías.')"))
    engine.dispose()
    yield empty_url


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_python_snippets_run_as_written(doc: Path, app_database: str, tiny_models: tuple[Path, Path],
                                        tiny_reader: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snippets = python_snippets(doc.read_text(encoding="utf-8"))
    assert snippets or doc.name != "README.md"
    monkeypatch.setenv("DPR_PG_DATABASE_URL", app_database)
    monkeypatch.setenv("DPR_PG_QUESTION_MODEL", str(tiny_models[0]))
    monkeypatch.setenv("DPR_PG_PASSAGE_MODEL", str(tiny_models[1]))
    monkeypatch.setenv("DPR_PG_READER_MODEL", str(tiny_reader))
    monkeypatch.chdir(ROOT)
    for line, code in snippets:
        where = f"{doc.relative_to(ROOT)}:{line}"
        try:
            exec(compile(code, where, "exec", dont_inherit=True), {"__name__": "__main__"})  # noqa: S102
        except Exception as e:
            pytest.fail(f"the snippet at {where} fails as written: {type(e).__name__}: {e}")
