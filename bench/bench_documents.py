"""Documents benchmark: parse time per format, and re-ingesting an unchanged folder vs parsing it again.

A folder of ``--per-format`` documents of each type (PDF, HTML, Markdown, DOCX; ``--sections``
sections of four paragraphs each, Spanish sentences shipped with dpr_pg) is written, then:

1. parse: each file parsed once, median milliseconds per document and format;
2. first ingest (parse + chunk + encode with the tiny random pair + write, HNSW kept up to date);
3. baseline re-ingest of the unchanged folder: every file parsed and chunked again, every chunk
   hashed and looked up, nothing written (what the record pipeline's idempotency alone gives);
4. dpr_pg re-ingest: the per-file hash check, no file parsed.

3 and 4 run ``--repeats`` times, alternating; medians and the ratio are printed. Needs the
``documents`` and ``test`` extras (fpdf2 writes the PDFs).

Run under the shared lock:  flock /tmp/dpr_pg_bench.lock .venv/bin/python bench/bench_documents.py
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def write_corpus(folder: Path, per_format: int, sections: int) -> dict[str, list[Path]]:
    from _documents import html_page, make_docx, make_pdf, markdown_text

    from dpr_pg.encoders.tiny import spanish_sentences

    sentences = spanish_sentences()
    rng = random.Random(0)
    files: dict[str, list[Path]] = {"pdf": [], "html": [], "markdown": [], "docx": []}
    for i in range(per_format):
        content = [(f"Sección {s + 1}", [" ".join(rng.sample(sentences, 4)) for _ in range(4)])
                   for s in range(sections)]
        title = f"Documento {i}"
        files["pdf"].append(make_pdf(folder / f"doc{i:03d}.pdf", title, content))
        path = folder / f"doc{i:03d}.html"
        path.write_text(html_page(title, content), encoding="utf-8")
        files["html"].append(path)
        path = folder / f"doc{i:03d}.md"
        path.write_text(markdown_text(title, content), encoding="utf-8")
        files["markdown"].append(path)
        files["docx"].append(make_docx(folder / f"doc{i:03d}.docx", title, content))
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-format", type=int, default=25)
    parser.add_argument("--sections", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import sqlalchemy as sa

    from dpr_pg.db.engine import embedded_server
    from dpr_pg.db.embedded import stop_server
    from dpr_pg.encoders.pair import EncoderPair, make_tiny_models
    from dpr_pg.ingest import ingest
    from dpr_pg.ingest.documents import source as document_source
    from dpr_pg.ingest.documents.source import _parser
    from dpr_pg.db.schema import init

    work = Path(tempfile.mkdtemp(prefix="dpr_pg_bench_documents_"))
    folder = work / "docs"
    folder.mkdir()
    files = write_corpus(folder, args.per_format, args.sections)
    total_bytes = sum(p.stat().st_size for paths in files.values() for p in paths)
    print(f"{sum(map(len, files.values()))} documents ({args.per_format} per format, {args.sections} sections "
          f"of 4 paragraphs), {total_bytes / 2**20:.1f} MiB")

    print("\nparse, median ms per document:")
    for fmt, paths in files.items():
        times = []
        for path in paths:
            data = path.read_bytes()
            started = time.perf_counter()
            _parser(fmt)(data, path.name)
            times.append((time.perf_counter() - started) * 1000)
        print(f"  {fmt:9s} {statistics.median(times):8.2f} ms   ({statistics.mean(p.stat().st_size for p in paths) / 1024:.1f} kB)")

    server = embedded_server(home=work / "pg")
    engine = sa.create_engine(server.url(driver="psycopg"))
    init(engine, dim=768)
    question, passage = make_tiny_models(work / "tiny", dim=768)
    pair = EncoderPair.load(str(question), str(passage), precision="fp32")

    started = time.perf_counter()
    first = ingest(engine, pair, folder, collection="bench", progress=False)
    first_seconds = time.perf_counter() - started
    print(f"\nfirst ingest: {first_seconds:.2f} s, {first.inserted} chunks from {first.documents_parsed} documents")

    original = document_source.StoredDocument.unchanged
    baseline, contender = [], []
    for _ in range(args.repeats):
        document_source.StoredDocument.unchanged = lambda self, *a: False  # type: ignore[method-assign]
        started = time.perf_counter()
        again = ingest(engine, pair, folder, collection="bench", progress=False)
        baseline.append(time.perf_counter() - started)
        assert again.inserted == again.updated == again.encoded == 0 and again.documents_parsed == first.documents
        document_source.StoredDocument.unchanged = original  # type: ignore[method-assign]
        started = time.perf_counter()
        again = ingest(engine, pair, folder, collection="bench", progress=False)
        contender.append(time.perf_counter() - started)
        assert again.documents_unchanged == first.documents and again.read == 0
    b, c = statistics.median(baseline), statistics.median(contender)
    print(f"re-ingest, unchanged (medians of {args.repeats}):")
    print(f"  baseline: parse + chunk + hash every chunk  {b:7.3f} s")
    print(f"  dpr_pg:   per-file hash check              {c:7.3f} s")
    print(f"  ratio {b / c:.1f}x; first ingest / dpr_pg re-ingest {first_seconds / c:.1f}x")
    engine.dispose()
    stop_server(home=work / "pg")


if __name__ == "__main__":
    main()
