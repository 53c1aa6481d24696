"""The record source of a documents ingest: a hash check per file, one parse per changed file.

:meth:`DocumentSource.prepare` walks the inputs, reads each file once (bounded by the size limit)
and hashes it. A file whose stored chunks all carry its sha256 and the same chunking options, were
made by the same encoder pair, and are all there (``chunk`` 0..``chunks``-1) is unchanged: it is
neither parsed nor read again. Any other file is parsed, its chunks checked like records
(:func:`dpr_pg.ingest.mapping.to_document`), and written to a spool file that the pipeline reads
twice (duplicates pass, write pass) without parsing again. A file that cannot be parsed, or one of
whose chunks would be rejected, is reported by path and nothing of it is written; its stored chunks,
if any, stay. After the writes, :meth:`stale_ids` names the stored chunks that a changed file no
longer has, so that it ends with exactly its new chunks.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dpr_pg.errors import IngestError
from dpr_pg.ingest.documents import docx, html, markdown, pdf
from dpr_pg.ingest.documents.extra import check_formats
from dpr_pg.ingest.documents.structure import ParsedDocument, UnreadableDocument, chunking_key, document_records
from dpr_pg.ingest.documents.walk import DEFAULT_EXCLUDE, DEFAULT_INCLUDE, FoundFile, find_documents
from dpr_pg.ingest.limits import RecordLimits
from dpr_pg.ingest.mapping import FieldMapping, to_document
from dpr_pg.ingest.records import SourceRecord
from dpr_pg.ingest.report import IngestReport

_STORED = sa.text("""
SELECT p.metadata ->> 'source', p.external_id, p.metadata ->> 'sha256', p.metadata ->> 'chunking',
       p.metadata -> 'chunk', p.metadata -> 'chunks', e.fingerprint
FROM dpr_pg.passages p JOIN dpr_pg.encoders e ON e.id = p.encoder_id
WHERE p.collection = :collection AND p.metadata ? 'source' AND p.metadata ? 'sha256'
""")


def _parser(fmt: str) -> Callable[[bytes, str], ParsedDocument]:
    return {"pdf": pdf.parse, "html": html.parse, "markdown": markdown.parse, "docx": docx.parse}[fmt]


@dataclass
class StoredDocument:
    """The chunks stored for one source file, and whether they are one complete, consistent version."""

    ids: list[str] = field(default_factory=list)
    versions: set[tuple[Any, ...]] = field(default_factory=set)  # (sha256, chunking, chunks, fingerprint)
    chunks: set[Any] = field(default_factory=set)

    def unchanged(self, sha256: str, chunking: str, fingerprint: str) -> bool:
        if len(self.versions) != 1:
            return False
        stored_sha, stored_chunking, count, stored_fingerprint = next(iter(self.versions))
        return ((stored_sha, stored_chunking, stored_fingerprint) == (sha256, chunking, fingerprint)
                and isinstance(count, int) and len(self.ids) == count and self.chunks == set(range(count)))


def stored_documents(engine: Engine, collection: str) -> dict[str, StoredDocument]:
    """The collection's document chunks, by source file (one query, streamed)."""
    stored: dict[str, StoredDocument] = {}
    with engine.connect() as conn:
        for source, external_id, sha256, chunking, chunk, chunks, fingerprint in conn.execution_options(
                stream_results=True, yield_per=10_000).execute(_STORED, {"collection": collection}):
            entry = stored.setdefault(source, StoredDocument())
            entry.ids.append(external_id)
            entry.versions.add((sha256, chunking, chunks, fingerprint))
            entry.chunks.add(chunk)
    return stored


class DocumentSource:
    """Documents under ``roots`` as pipeline records; see the module docstring.

    Example:
        >>> source = DocumentSource(["docs"], limits=RecordLimits(), words=100, overlap=0)  # doctest: +SKIP
        >>> source.prepare(engine, "docs", pair.fingerprint.id, report)                     # doctest: +SKIP
        >>> sum(1 for _ in source.records())                                                # doctest: +SKIP
        42
    """

    def __init__(self, roots: Sequence[str | Path], *, limits: RecordLimits, words: int, overlap: int,
                 include: Sequence[str] | None = None, exclude: Sequence[str] | None = None) -> None:
        self.roots = [Path(root) for root in roots]
        self.limits = limits
        self.words, self.overlap = words, overlap
        self.include = tuple(include) if include else DEFAULT_INCLUDE
        self.exclude = tuple(exclude) if exclude is not None else DEFAULT_EXCLUDE
        self.kept: list[str] = []  # stored ids that stay as they are (unchanged or unreadable files)
        self.rejected_files = 0
        self.found = 0
        self._replaced: list[tuple[list[str], set[str]]] = []  # (stored ids, new ids) of changed files
        self._spool = tempfile.TemporaryDirectory(prefix="dpr_pg_documents_")
        self._path = Path(self._spool.name) / "records.jsonl"
        self._count = 0

    def close(self) -> None:
        self._spool.cleanup()

    def __enter__(self) -> DocumentSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prepare(self, engine: Engine, collection: str, fingerprint: str, report: IngestReport) -> None:
        """Walk, hash, skip unchanged files, parse the others into the spool; rejections go to ``report``."""
        for root in self.roots:
            if not root.exists() and not root.is_symlink():
                raise IngestError(f"input {str(root)!r} does not exist; check the path")
        walk = find_documents(self.roots, include=self.include, exclude=self.exclude,
                              max_bytes=self.limits.max_document_bytes)
        check_formats({found.format for found in walk.files})
        self.found = len(walk.files)
        stored = stored_documents(engine, collection)
        for path, reason, name in walk.problems:
            # What is stored under a path that could not be read (a file, or a whole folder) stays.
            under = [entry for source, entry in stored.items()
                     if not name or source == name or source.startswith(f"{name}/")]
            self._reject(report, path, reason, None)
            self.kept += [key for entry in under for key in entry.ids]
        chunking = chunking_key(self.words, self.overlap)
        report.documents, report.documents_unchanged, report.documents_parsed = len(walk.files), 0, 0
        with open(self._path, "w", encoding="utf-8", errors="surrogatepass") as spool:
            for found in walk.files:
                self._prepare_file(found, stored.get(found.name), chunking, fingerprint, report, spool)

    def _prepare_file(self, found: FoundFile, prior: StoredDocument | None, chunking: str, fingerprint: str,
                      report: IngestReport, spool: Any) -> None:
        try:
            with open(found.path, "rb") as handle:
                data = handle.read(self.limits.max_document_bytes + 1)  # bounded, even if it grew since the walk
        except OSError as e:
            self._reject(report, str(found.path), f"cannot read: {e.strerror or e}", prior)
            return
        if len(data) > self.limits.max_document_bytes:
            self._reject(report, str(found.path), f"file is over the limit of {self.limits.max_document_bytes} bytes "
                                                  "(--max-document-bytes); split it, or raise the limit", prior)
            return
        sha256 = hashlib.sha256(data).hexdigest()
        if prior is not None and prior.unchanged(sha256, chunking, fingerprint):
            report.documents_unchanged += 1  # type: ignore[operator]
            report.unchanged += len(prior.ids)
            report.passages += len(prior.ids)
            self.kept += prior.ids
            return
        try:
            parsed = _parser(found.format)(data, found.name)
        except UnreadableDocument as e:
            self._reject(report, str(found.path), str(e), prior)
            return
        fallback = Path(found.name).stem
        records = document_records(parsed, source=found.name, fmt=found.format, sha256=sha256,
                                   fallback_title=fallback, words=self.words, overlap=self.overlap)
        if not records:
            self._reject(report, str(found.path), "the document holds no text", prior)
            return
        mapping = FieldMapping()
        for fields in records:
            problem = to_document(SourceRecord(0, found.name, fields), mapping, self.limits)
            if isinstance(problem, str):
                self._reject(report, str(found.path), f"chunk {fields['chunk']}: {problem}; nothing of the file "
                                                      "was written", prior)
                return
        report.documents_parsed += 1  # type: ignore[operator]
        for fields in records:
            self._count += 1
            where = f"{found.name} chunk {fields['chunk']}" + (f" (page {fields['page']})" if "page" in fields else "")
            spool.write(json.dumps({"n": self._count, "where": where, "fields": fields}, ensure_ascii=False) + "\n")
        if prior is not None:
            self._replaced.append((prior.ids, {fields["id"] for fields in records}))

    def _reject(self, report: IngestReport, path: str, reason: str, prior: StoredDocument | None) -> None:
        report.reject(path, reason)
        self.rejected_files += 1
        if prior is not None:
            self.kept += prior.ids  # what was stored for it stays: the file is there, just unreadable now

    def records(self) -> Iterator[SourceRecord]:
        """The chunk records, in file order, read from the spool (the pipeline calls it twice)."""
        if not self._path.exists():
            return
        with open(self._path, encoding="utf-8", errors="surrogatepass") as spool:
            for line in spool:
                item = json.loads(line)
                yield SourceRecord(item["n"], item["where"], item["fields"])

    def stale_ids(self) -> list[str]:
        """The stored chunks of changed files that their new version no longer has."""
        return [key for stored, new in self._replaced for key in stored if key not in new]

