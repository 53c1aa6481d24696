"""Documents in: PDF, HTML, Markdown and DOCX folders ingested along their structure, re-ingested by hash."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from _documents import MADRID, SEVILLA, html_page, make_docx, make_pdf, make_scanned_pdf, markdown_text
from dpr_pg.cli import main
from dpr_pg.encoders.pair import EncoderPair
from dpr_pg.errors import IngestError
from dpr_pg.ingest import RecordLimits, RecordRejectedError, ingest


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """One document of each format, two of them in a subfolder."""
    root = tmp_path / "docs"
    (root / "guias").mkdir(parents=True)
    make_pdf(root / "sevilla.pdf", "Guía de Sevilla", SEVILLA)
    make_docx(root / "guias" / "madrid.docx", "Guía de Madrid", MADRID)
    (root / "portal.html").write_text(html_page("Sevilla monumental", SEVILLA), encoding="utf-8")
    (root / "guias" / "madrid.md").write_text(markdown_text("Madrid en breve", MADRID,
                                                            front_matter={"autor": "Pepe Ruiz"}), encoding="utf-8")
    return root


def rows(engine: Engine, collection: str) -> dict[str, dict]:
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT external_id, title, text, metadata, updated_at FROM dpr_pg.passages "
                                     "WHERE collection = :c"), {"c": collection}).mappings()
        return {row["external_id"]: dict(row) for row in found}


def words_of(sections) -> list[str]:
    return [word for _, paragraphs in sections for paragraph in paragraphs for word in paragraph.split()]


def test_a_folder_of_every_format_becomes_structured_passages(engine: Engine, fp32_pair: EncoderPair,
                                                               folder: Path) -> None:
    report = ingest(engine, fp32_pair, folder, collection="docs")

    assert (report.documents, report.documents_parsed, report.documents_unchanged, report.rejected) == (4, 4, 0, 0)
    stored = rows(engine, "docs")
    assert report.inserted == len(stored) == report.passages
    by_source = {}
    for key, row in stored.items():
        by_source.setdefault(row["metadata"]["source"], []).append(key)
    assert sorted(by_source) == ["guias/madrid.docx", "guias/madrid.md", "portal.html", "sevilla.pdf"]
    assert all(key.startswith(f"{row['metadata']['source']}#") for key, row in stored.items())

    pdf = {key: row for key, row in stored.items() if row["metadata"]["format"] == "pdf"}
    history, monuments = (next(r for r in pdf.values() if r["metadata"]["section"] == s) for s in ("Historia", "Monumentos"))
    assert history["title"] == "Guía de Sevilla — Historia" and history["metadata"]["page"] == 1
    assert monuments["title"] == "Guía de Sevilla — Monumentos" and monuments["metadata"]["page"] == 2
    assert monuments["metadata"]["document"]["author"] == "Ana Pérez"
    assert "Monumentos" not in monuments["text"]  # the printed heading is the title, not text
    assert " ".join(r["text"] for r in sorted(pdf.values(), key=lambda r: r["metadata"]["chunk"])).split() == \
        words_of(SEVILLA)  # every word, in order, none cut: chunks fall between words

    docx = [r for r in stored.values() if r["metadata"]["format"] == "docx"]
    assert {r["title"] for r in docx} == {"Guía de Madrid — Geografía", "Guía de Madrid — Museos"}
    assert all(r["metadata"]["document"]["author"] == "Luis Gómez" for r in docx)
    markdown = [r for r in stored.values() if r["metadata"]["format"] == "markdown"]
    assert {r["title"] for r in markdown} == {"Madrid en breve — Geografía", "Madrid en breve — Museos"}
    assert markdown[0]["metadata"]["document"]["autor"] == "Pepe Ruiz"
    html = [r for r in stored.values() if r["metadata"]["format"] == "html"]
    assert {r["title"] for r in html} == {"Sevilla monumental — Historia", "Sevilla monumental — Monumentos"}
    assert not any("Contacto" in r["text"] or "cookies" in r["text"] for r in html)  # boilerplate stays out
    assert html[0]["metadata"]["document"]["author"] == "Marta Ruiz"


def test_chunks_follow_paragraphs_and_stay_under_the_word_limit(engine: Engine, fp32_pair: EncoderPair,
                                                                tmp_path: Path) -> None:
    long = " ".join(f"Frase número {i} del párrafo largo." for i in range(40))  # 200 words, 40 sentences
    (tmp_path / "largo.md").write_text(f"# Largo\n\nPárrafo corto uno.\n\nPárrafo corto dos.\n\n{long}\n",
                                       encoding="utf-8")
    ingest(engine, fp32_pair, tmp_path / "largo.md", collection="c", chunk_words=30)
    chunks = sorted(rows(engine, "c").values(), key=lambda r: r["metadata"]["chunk"])
    assert chunks[0]["text"].startswith("Párrafo corto uno.\n\nPárrafo corto dos.")  # short paragraphs packed
    assert all(len(r["text"].split()) <= 30 for r in chunks)
    assert all(r["text"].endswith(".") for r in chunks)  # a long paragraph is cut between sentences
    assert " ".join(r["text"] for r in chunks).split() == ["Párrafo", "corto", "uno.", "Párrafo", "corto", "dos."] \
        + long.split()


def test_reingesting_unchanged_files_is_a_hash_check(engine: Engine, fp32_pair: EncoderPair, folder: Path) -> None:
    first = ingest(engine, fp32_pair, folder, collection="docs")
    before = rows(engine, "docs")
    again = ingest(engine, fp32_pair, folder, collection="docs")
    assert (again.documents_unchanged, again.documents_parsed, again.read, again.encoded) == (4, 0, 0, 0)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, first.inserted)
    assert rows(engine, "docs") == before


def test_a_changed_file_replaces_exactly_its_chunks(engine: Engine, fp32_pair: EncoderPair, folder: Path) -> None:
    ingest(engine, fp32_pair, folder, collection="docs", chunk_words=30)
    before = rows(engine, "docs")
    shorter = [("Geografía", ["Madrid está en el centro de la península, a 650 metros de altitud."])]
    (folder / "guias" / "madrid.md").write_text(markdown_text("Madrid en breve", shorter), encoding="utf-8")

    report = ingest(engine, fp32_pair, folder, collection="docs", chunk_words=30)

    after = rows(engine, "docs")
    assert (report.documents_unchanged, report.documents_parsed) == (3, 1)
    markdown = {k: r for k, r in after.items() if r["metadata"]["source"] == "guias/madrid.md"}
    assert list(markdown) == ["guias/madrid.md#0"] and "650 metros" in markdown["guias/madrid.md#0"]["text"]
    assert report.removed == sum(1 for r in before.values() if r["metadata"]["source"] == "guias/madrid.md") - 1
    others = {k: r for k, r in after.items() if r["metadata"]["source"] != "guias/madrid.md"}
    assert others == {k: r for k, r in before.items() if r["metadata"]["source"] != "guias/madrid.md"}


def test_a_deleted_file_goes_with_prune_only(engine: Engine, fp32_pair: EncoderPair, folder: Path) -> None:
    ingest(engine, fp32_pair, folder, collection="docs")
    (folder / "portal.html").unlink()
    kept = ingest(engine, fp32_pair, folder, collection="docs")
    assert kept.pruned == 0 and any(r["metadata"]["source"] == "portal.html" for r in rows(engine, "docs").values())
    pruned = ingest(engine, fp32_pair, folder, collection="docs", prune=True)
    sources = {r["metadata"]["source"] for r in rows(engine, "docs").values()}
    assert pruned.pruned > 0 and sources == {"sevilla.pdf", "guias/madrid.docx", "guias/madrid.md"}


def test_bad_files_are_reported_by_path_and_the_run_goes_on(engine: Engine, fp32_pair: EncoderPair,
                                                            tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    (root / "sub").mkdir(parents=True)
    make_pdf(root / "buena.pdf", "Buena", SEVILLA)
    make_pdf(root / "cifrada.pdf", "Cifrada", MADRID, user_password="secreto")
    good_pdf = (root / "buena.pdf").read_bytes()
    (root / "rota.pdf").write_bytes(good_pdf[: len(good_pdf) // 3])
    make_scanned_pdf(root / "escaneada.pdf")
    (root / "menu.html").write_text("<html><head><title>Inicio</title></head><body><nav><a href='/'>Inicio</a> "
                                    "<a href='/c'>Contacto</a></nav><footer>© 2024</footer></body></html>",
                                    encoding="utf-8")
    make_docx(root / "vacio.docx", None, [])
    (root / "binario.md").write_bytes(bytes(range(256)) * 4)
    (root / "binario.docx").write_bytes(b"\x00\x01" * 500)
    (root / "grande.md").write_text("# Grande\n\n" + "palabra " * 12000, encoding="utf-8")
    (root / "sub" / "bucle").symlink_to(root, target_is_directory=True)
    (root / "sub" / "circular.md").symlink_to(root / "sub" / "circular.md")

    report = ingest(engine, fp32_pair, root, collection="c", limits=RecordLimits(max_document_bytes=64_000))

    reasons = {Path(r.record).relative_to(root).as_posix(): r.reason for r in report.rejections}
    assert set(reasons) == {"cifrada.pdf", "rota.pdf", "escaneada.pdf", "menu.html", "vacio.docx", "binario.md",
                            "binario.docx", "grande.md", "sub/bucle", "sub/circular.md"}
    assert "encrypted" in reasons["cifrada.pdf"] and "password" in reasons["cifrada.pdf"]
    assert "not a readable PDF" in reasons["rota.pdf"]
    assert "no text layer" in reasons["escaneada.pdf"] and "OCR" in reasons["escaneada.pdf"]
    assert "no main text" in reasons["menu.html"]
    assert "no text" in reasons["vacio.docx"]
    assert "binary" in reasons["binario.md"] and "not a DOCX" in reasons["binario.docx"]
    assert "over the limit of 64000 bytes" in reasons["grande.md"]
    assert "loop" in reasons["sub/bucle"] and "loop" in reasons["sub/circular.md"]
    assert report.exit_code == 2 and report.documents_parsed == 1
    assert {r["metadata"]["source"] for r in rows(engine, "c").values()} == {"buena.pdf"}


def test_a_file_that_turns_unreadable_keeps_its_chunks_and_prune_goes_on(engine: Engine, fp32_pair: EncoderPair,
                                                                        folder: Path) -> None:
    ingest(engine, fp32_pair, folder, collection="docs")
    before = rows(engine, "docs")
    (folder / "sevilla.pdf").write_bytes(b"%PDF-1.4\nrota")
    (folder / "portal.html").unlink()
    report = ingest(engine, fp32_pair, folder, collection="docs", prune=True)
    after = rows(engine, "docs")
    assert [Path(r.record).name for r in report.rejections] == ["sevilla.pdf"] and report.prune_skipped is None
    assert {k: r for k, r in after.items() if r["metadata"]["source"] == "sevilla.pdf"} == \
        {k: r for k, r in before.items() if r["metadata"]["source"] == "sevilla.pdf"}
    assert not any(r["metadata"]["source"] == "portal.html" for r in after.values())


def test_include_and_exclude_globs(engine: Engine, fp32_pair: EncoderPair, folder: Path) -> None:
    (folder / "borradores").mkdir()
    (folder / "borradores" / "nota.md").write_text("# Nota\n\nUn borrador.\n", encoding="utf-8")
    (folder / ".oculto.md").write_text("# Oculto\n\nNo se lee.\n", encoding="utf-8")
    report = ingest(engine, fp32_pair, folder, collection="md", include=["*.md"], exclude=["borradores", ".*"])
    assert report.documents == 1
    assert {r["metadata"]["source"] for r in rows(engine, "md").values()} == {"guias/madrid.md"}
    report = ingest(engine, fp32_pair, folder, collection="sub", include=["guias/*"])
    assert {r["metadata"]["source"] for r in rows(engine, "sub").values()} == {"guias/madrid.md", "guias/madrid.docx"}


def test_strict_stops_before_writing_anything(engine: Engine, fp32_pair: EncoderPair, folder: Path) -> None:
    (folder / "rota.pdf").write_bytes(b"%PDF-1.4\nrota")
    with pytest.raises(RecordRejectedError, match="rota.pdf.*--strict"):
        ingest(engine, fp32_pair, folder, collection="docs", strict=True)
    assert rows(engine, "docs") == {}


def test_an_empty_folder_is_an_error(engine: Engine, fp32_pair: EncoderPair, tmp_path: Path) -> None:
    (tmp_path / "vacia").mkdir()
    with pytest.raises(IngestError, match="no documents found"):
        ingest(engine, fp32_pair, tmp_path / "vacia", collection="c", prune=True)


def test_without_the_parsers_the_message_says_what_to_install(engine: Engine, fp32_pair: EncoderPair, folder: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pypdf", None)  # what `import pypdf` meets when it is not installed
    with pytest.raises(IngestError, match=r"PDF files needs the Python package 'pypdf'.*pip install 'dpr-pg\[documents\]'"):
        ingest(engine, fp32_pair, folder, collection="docs")
    assert rows(engine, "docs") == {}


def test_cli_ingests_a_folder_and_reports_rejections(cli, database_url: str, tiny_models, folder: Path) -> None:
    (folder / "rota.docx").write_bytes(b"no es un zip")
    args = ["--database-url", database_url, "ingest", str(folder), "--collection", "docs", "--json",
            "--question-model", str(tiny_models[0]), "--passage-model", str(tiny_models[1])]
    result = cli(*args)
    assert result.returncode == 2, result.stderr
    report = json.loads(result.stdout)
    assert (report["documents"], report["documents_parsed"], report["rejected"]) == (5, 4, 1)
    assert report["rejections"][0]["record"] == os.fspath(folder / "rota.docx")
    (folder / "rota.docx").unlink()
    again = CliRunner().invoke(main, args[:-4] + ["--exclude", "*.html"] + args[-4:])  # in this process: faster
    assert again.exit_code == 0, again.output
    assert (json.loads(again.output)["documents_unchanged"], json.loads(again.output)["documents"]) == (3, 3)


def test_the_readme_example_folder(engine: Engine, fp32_pair: EncoderPair) -> None:
    examples = Path(__file__).resolve().parent.parent / "examples" / "documents"
    report = ingest(engine, fp32_pair, examples, collection="guias")
    assert (report.documents, report.rejected) == (2, 0)  # make_pdfs.py is not a document: not included
    stored = rows(engine, "guias").values()
    sierra = next(r for r in stored if r["metadata"]["section"] == "Sierra Nevada")
    assert sierra["title"] == "Guía de Granada — Sierra Nevada" and "Mulhacén" in sierra["text"]
    assert (sierra["metadata"]["source"], sierra["metadata"]["page"]) == ("guia-granada.pdf", 2)
