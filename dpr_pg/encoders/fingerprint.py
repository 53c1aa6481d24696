"""Encoder fingerprints: which exact encoder pair made a set of stored vectors.

Ingest records the fingerprint in ``dpr_pg.encoders``; search refuses to compare a question
vector with passage vectors that another pair made (their inner products would be meaningless).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine

from dpr_pg import config
from dpr_pg.errors import EncoderMismatchError, SyncError
from dpr_pg.sync.tables import regclass_name

POOLING = "pooler_output"


@dataclass(frozen=True)
class EncoderFingerprint:
    """Identity of an encoder pair: model ids, resolved revisions, tokenizer, dim, max length, pooling.

    A revision is the Hub commit hash when a model came from the Hub, and ``sha256:<digest>`` of
    the folder's files when it came from a local folder.

    Example:
        >>> fp = EncoderFingerprint("q", "abc", "p", "def", "0123", 768, 512)
        >>> len(fp.id)
        64
    """

    question_model: str
    question_revision: str | None
    passage_model: str
    passage_revision: str | None
    tokenizer_hash: str
    dim: int
    max_length: int
    pooling: str = POOLING

    @property
    def id(self) -> str:
        """A stable hex digest of every field: two pairs share it only if they make the same vectors."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def as_row(self) -> dict[str, Any]:
        """The columns of ``dpr_pg.encoders`` (without ``id`` and ``created_at``).

        Example:
            >>> EncoderFingerprint("q", None, "p", None, "0123", 8, 512).as_row()["dim"]
            8
        """
        return {"fingerprint": self.id, **asdict(self)}

    def describe(self) -> str:
        """One line naming the pair, for error messages."""
        return (
            f"question={self.question_model}@{_short(self.question_revision)} "
            f"passage={self.passage_model}@{_short(self.passage_revision)} "
            f"(dim {self.dim}, max_length {self.max_length}, fingerprint {self.id[:12]})"
        )


def _short(revision: str | None) -> str:
    return (revision or "unknown")[:19]


def folder_revision(folder: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None) -> str:
    """``sha256:<hex>`` over the relative names and bytes of a model folder's files (dot-files skipped).

    Hashing a BERT-base pair reads 700-900 MB on every command that loads it, so the digest is
    kept in ``cache_dir`` (default: :func:`dpr_pg.config.cache_dir`) with each file's size,
    mtime, ctime and inode, and reused while none of those changed (as git's index and make do).

    Example:
        >>> folder_revision("/tmp/tiny/question")  # doctest: +SKIP
        'sha256:5f0c...'
    """
    root = Path(folder).resolve()
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    stats = [[path.relative_to(root).as_posix(), *_identity(path)] for path in files]
    record = Path(cache_dir or config.cache_dir()) / "folder_digests" / (
        hashlib.sha256(str(root).encode("utf-8")).hexdigest()[:32] + ".json")
    with contextlib.suppress(OSError, ValueError):
        kept = json.loads(record.read_text(encoding="utf-8"))
        if kept.get("folder") == str(root) and kept.get("files") == stats:
            return str(kept["revision"])
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode("utf-8") + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    revision = "sha256:" + digest.hexdigest()
    with contextlib.suppress(OSError):  # a read-only cache only costs the hashing next time
        record.parent.mkdir(parents=True, exist_ok=True)
        staging = record.with_name(f".{record.name}.{os.getpid()}")
        staging.write_text(json.dumps({"folder": str(root), "files": stats, "revision": revision}), encoding="utf-8")
        os.replace(staging, record)
    return revision


def _identity(path: Path) -> list[int]:
    """What changes when a file's bytes may have: size, mtime, ctime (set by any write) and inode."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def vocab_hash(*vocabularies: dict[str, int]) -> str:
    """sha256 of the tokenizers' vocabularies (token and id, in id order).

    Example:
        >>> vocab_hash({"[PAD]": 0, "hola": 1})[:8]
        '6f6b1ec5'
    """
    digest = hashlib.sha256()
    for vocabulary in vocabularies:
        for token, index in sorted(vocabulary.items(), key=lambda item: item[1]):
            digest.update(f"{index}\t{token}\n".encode())
        digest.update(b"\0")
    return digest.hexdigest()


_INSERT = sa.text(
    """
    INSERT INTO dpr_pg.encoders (fingerprint, question_model, question_revision, passage_model,
                                 passage_revision, tokenizer_hash, dim, max_length, pooling)
    VALUES (:fingerprint, :question_model, :question_revision, :passage_model,
            :passage_revision, :tokenizer_hash, :dim, :max_length, :pooling)
    ON CONFLICT (fingerprint) DO NOTHING
    RETURNING id
    """
)
_SELECT_ID = sa.text("SELECT id FROM dpr_pg.encoders WHERE fingerprint = :fingerprint")
# Probes the small encoders table and, per encoder, one index lookup on passages.
# The search reads it in the same round trip as its planner settings (dpr_pg.search.api), by these columns.
STORED_COLUMNS = ("fingerprint", "question_model", "question_revision", "passage_model", "passage_revision",
                  "tokenizer_hash", "dim", "max_length", "pooling")
STORED_SQL = f"""
    SELECT {", ".join("e." + column for column in STORED_COLUMNS)}
    FROM dpr_pg.encoders e
    WHERE e.fingerprint <> :fingerprint
      AND EXISTS (SELECT 1 FROM dpr_pg.passages p
                  WHERE p.encoder_id = e.id
                    AND (CAST(:collection AS text) IS NULL OR p.collection = :collection))
    ORDER BY e.id
    LIMIT 1
    """
_STORED = sa.text(STORED_SQL)


def register_encoder(conn: Connection, fingerprint: EncoderFingerprint) -> int:
    """Record ``fingerprint`` in ``dpr_pg.encoders`` (once) and return its id.

    Runs in the caller's transaction, so an ingest that rolls back leaves no orphan row.

    Example:
        >>> with engine.begin() as conn:                         # doctest: +SKIP
        ...     encoder_id = register_encoder(conn, pair.fingerprint)
    """
    row = fingerprint.as_row()
    inserted = conn.execute(_INSERT, row).scalar()
    if inserted is not None:
        return int(inserted)
    return int(conn.execute(_SELECT_ID, {"fingerprint": row["fingerprint"]}).scalar_one())


def check_encoder(
    conn: Connection | Engine, fingerprint: EncoderFingerprint, *, collection: str | None = None
) -> None:
    """Raise :class:`EncoderMismatchError` if stored vectors come from another encoder pair.

    Looks at ``collection`` only, or at every passage when it is None. An empty collection passes.

    Example:
        >>> check_encoder(engine, pair.fingerprint, collection="wiki")  # doctest: +SKIP
    """
    params = {"fingerprint": fingerprint.id, "collection": collection}
    if isinstance(conn, Engine):
        with conn.connect() as connection:
            stored = connection.execute(_STORED, params).mappings().first()
    else:
        stored = conn.execute(_STORED, params).mappings().first()
    if stored is not None:
        raise mismatch_error(stored, fingerprint, collection)


def mismatch_error(stored: Mapping[str, Any], fingerprint: EncoderFingerprint,
                   collection: str | None) -> EncoderMismatchError:
    """The error for a question of ``fingerprint`` against vectors of ``stored`` (a row of STORED_SQL)."""
    other = EncoderFingerprint(**{k: v for k, v in stored.items() if k != "fingerprint"})
    where = f"collection {collection!r}" if collection is not None else "this database"
    return EncoderMismatchError(
        f"the vectors in {where} were made by {other.describe()}, "
        f"but the question would be encoded by {fingerprint.describe()}. "
        "Expected the same encoder pair for both. Load the pair that made the collection "
        "(set DPR_PG_QUESTION_MODEL / DPR_PG_PASSAGE_MODEL, or pass question_model=/passage_model=), "
        "or re-ingest the collection with the current pair.",
        stored=other, requested=fingerprint,
    )


def check_table_encoder(
    conn: Connection | Engine, table: str, fingerprint: EncoderFingerprint, *, schema: str | None = None
) -> None:
    """Raise :class:`EncoderMismatchError` unless ``table``'s embeddings come from the pair ``fingerprint``.

    ``fingerprint`` is an :class:`~dpr_pg.encoders.pair.EncoderFingerprint` (``pair.fingerprint``). A table
    with no embedding yet passes. Runs ``dpr_pg.check_table_encoder`` (sql/sync.sql), which
    :func:`dpr_pg.search.orm.model_search_statement` also puts in its statement (``encoder=``).

    Example:
        >>> check_table_encoder(engine, "articles", pair.fingerprint)  # doctest: +SKIP
    """
    if isinstance(conn, Engine):
        with conn.connect() as connection:
            check_table_encoder(connection, table, fingerprint, schema=schema)
        return
    statement = sa.select(sa.func.dpr_pg.check_table_encoder(
        sa.cast(sa.literal(regclass_name(table, schema=schema), sa.Text), postgresql.REGCLASS),
        sa.literal(fingerprint.id, sa.Text)))
    try:
        with conn.begin_nested():
            conn.execute(statement)
    except sa.exc.DBAPIError as e:
        diag = getattr(e.orig, "diag", None)
        reason = (diag.message_primary if diag else None) or str(e.orig or e).strip()
        if diag is not None and diag.sqlstate == "22000":
            raise EncoderMismatchError(f"{reason}; {diag.message_hint}") from e
        raise SyncError(f"could not check the encoder of {regclass_name(table, schema=schema)}: {reason}") from e
