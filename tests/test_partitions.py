"""Collections as partitions: dpr_pg.passages list-partitioned by collection, against the real server.

A database made with ``init(partition_by_collection=True)`` gets a partition per collection on its
first write, whichever face writes (Python ingest, the CLI, the HTTP service); a collection filter
prunes the others; dropping a collection drops its partition; a populated unpartitioned database
converts with every row, id and hit kept; row-level security still limits tenants; the HNSW index
is rebuilt (and its storage switched) partition by partition.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from _encoders import stand_in_encoder
from click.testing import CliRunner
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session

from dpr_pg import PrivilegeError, SchemaError, grant, ingest, search, search_statement, set_storage
from dpr_pg.cli import main
from dpr_pg.db.doctor import doctor
from dpr_pg.db.partition_ops import drop_collection, partition_passages
from dpr_pg.db.partitions import is_partitioned, list_partitions, partition_name
from dpr_pg.db.schema import init
from dpr_pg.encoders.fingerprint import EncoderFingerprint
from dpr_pg.encoders.pair import EncoderPair
from dpr_pg.db.index import build_index, hnsw_exists, hnsw_parameters

DIM = 8
FINGERPRINT = EncoderFingerprint("partitions/question", None, "partitions/passage", None, "tok", DIM, 512)
SIZES = {"wiki": 400, "news": 120, "it's \"odd\" -- name": 30}
RNG = np.random.default_rng(17)
VECTORS = {name: RNG.normal(size=(n, DIM)).astype(np.float32) for name, n in SIZES.items()}
QUERY = np.random.default_rng(18).normal(size=DIM).astype(np.float32)


def truth(collections: list[str], k: int = 5, even: bool | None = None) -> list[str]:
    scored = [(float(VECTORS[c][i] @ QUERY), f"{c}:{i}") for c in collections for i in range(SIZES[c])
              if even is None or (i % 2 == 0) == even]
    return [e for _, e in sorted(scored, key=lambda s: -s[0])[:k]]


def _files(tmp_path: Path, name: str, *, start: int = 0, count: int | None = None) -> tuple[Path, Path]:
    count = SIZES[name] - start if count is None else count
    rows = tmp_path / f"{uuid.uuid4().hex}.jsonl"
    rows.write_text("".join(json.dumps({"id": f"{name}:{i}", "title": f"{name} {i}", "text": f"texto {name} {i}",
                                        "even": i % 2 == 0, "n": i}) + "\n"
                            for i in range(start, start + count)))
    vectors = rows.with_suffix(".npy")
    np.save(vectors, VECTORS[name][start:start + count])
    return rows, vectors


def _ingest(engine: Engine, tmp_path: Path, name: str, **options: Any) -> Any:
    rows, vectors = _files(tmp_path, name, **options)
    return ingest(engine, None, rows, collection=name, embeddings=vectors, fingerprint=FINGERPRINT, progress=False)


def _counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT collection, count(*) FROM dpr_pg.passages GROUP BY 1")).all())


def _where_rows_live(engine: Engine) -> dict[str, set[str]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT tableoid::regclass::text, collection FROM dpr_pg.passages")).all()
    found: dict[str, set[str]] = {}
    for table, collection in rows:
        found.setdefault(collection, set()).add(table.split(".")[-1])
    return found


@pytest.fixture
def partitioned(server: Any) -> Iterator[tuple[str, Engine]]:
    name = server.create_database()
    url = server.url_for(name)
    engine = sa.create_engine(url)
    result = init(engine, dim=DIM, partition_by_collection=True)
    assert result.partitioned
    yield url, engine
    engine.dispose()
    server.drop_database(name)


@pytest.fixture
def plain(server: Any) -> Iterator[tuple[str, Engine]]:
    """An unpartitioned database of DIM-d vectors."""
    name = server.create_database(template=server.initialized_template(DIM))
    url = server.url_for(name)
    engine = sa.create_engine(url)
    yield url, engine
    engine.dispose()
    server.drop_database(name)


def test_init_partitions_an_empty_database_and_refuses_a_populated_one(
        partitioned: tuple[str, Engine], plain: tuple[str, Engine], tmp_path: Path) -> None:
    _, made = partitioned
    engine = plain[1]
    assert is_partitioned(made)
    assert [p.table for p in list_partitions(made)] == ["passages_default"]
    assert init(made).partitioned  # running init again keeps it so
    _ingest(engine, tmp_path, "news")  # the plain fixture database: unpartitioned, populated
    with pytest.raises(SchemaError, match="dpr-pg storage partition"):
        init(engine, partition_by_collection=True)
    assert not is_partitioned(engine)


def test_the_cli_partitions_a_new_database_and_points_a_populated_one_to_the_conversion(
        server: Any, plain: tuple[str, Engine], tmp_path: Path, cli: Any) -> None:
    name = server.create_database()
    try:
        made = cli("--database-url", server.url_for(name), "init", "--dim", str(DIM), "--partition-by-collection",
                       check=True)
        engine = sa.create_engine(server.url_for(name))
        assert is_partitioned(engine), made.stdout
        engine.dispose()
    finally:
        server.drop_database(name)
    url, populated = plain
    _ingest(populated, tmp_path, "news")
    refused = cli("--database-url", url, "init", "--partition-by-collection")
    assert refused.returncode != 0
    assert "dpr-pg storage partition" in refused.stderr
    assert not is_partitioned(populated)


def test_the_first_ingest_into_a_collection_makes_its_partition(partitioned: tuple[str, Engine],
                                                                 tmp_path: Path) -> None:
    _, engine = partitioned
    report = _ingest(engine, tmp_path, "wiki")
    assert (report.inserted, report.updated) == (SIZES["wiki"], 0)
    _ingest(engine, tmp_path, "it's \"odd\" -- name")
    assert _where_rows_live(engine) == {"wiki": {partition_name("wiki")},
                                        "it's \"odd\" -- name": {partition_name("it's \"odd\" -- name")}}
    assert {p.collection for p in list_partitions(engine)} == {None, "wiki", "it's \"odd\" -- name"}
    # a re-run writes nothing; a changed text is one update (ON CONFLICT on the partitioned key)
    assert (_ingest(engine, tmp_path, "wiki").inserted, _ingest(engine, tmp_path, "wiki").updated) == (0, 0)
    rows, vectors = _files(tmp_path, "wiki", count=1)
    rows.write_text(rows.read_text().replace("texto wiki 0", "texto cambiado"))
    again = ingest(engine, None, rows, collection="wiki", embeddings=vectors, fingerprint=FINGERPRINT, progress=False)
    assert (again.inserted, again.updated) == (0, 1)
    # each partition has its own HNSW index, and the parent's is valid
    assert hnsw_exists(engine)
    with engine.connect() as conn:
        leaves = conn.execute(sa.text(
            "SELECT count(*) FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid "
            "WHERE i.inhparent = 'dpr_pg.passages_embedding_hnsw'::regclass")).scalar_one()
    assert leaves == 3


def test_the_cli_and_the_http_service_make_partitions_too(server: Any, tmp_path: Path, cli: Any,
                                                          tiny_models: tuple[Path, Path], pair: EncoderPair) -> None:
    from fastapi.testclient import TestClient

    from dpr_pg.service.app import create_app
    from dpr_pg.service.settings import ServiceSettings

    name = server.create_database()
    url = server.url_for(name)
    engine = sa.create_engine(url)
    try:
        init(engine, dim=768, partition_by_collection=True)
        rows = tmp_path / "cli.jsonl"
        rows.write_text("".join(json.dumps({"id": f"c{i}", "text": f"texto {i}"}) + "\n" for i in range(3)))
        models = ["--question-model", str(tiny_models[0]), "--passage-model", str(tiny_models[1])]
        result = cli("--database-url", url, "ingest", str(rows), "--collection", "from cli", *models)
        assert result.returncode == 0, result.stderr
        with TestClient(create_app(ServiceSettings(database_url=url), pair=pair)) as client:
            response = client.put("/v1/collections/from%20http/passages",
                                  json={"records": [{"id": "h1", "text": "texto por http"}]})
        assert response.status_code == 200, response.text
        assert _where_rows_live(engine) == {"from cli": {partition_name("from cli")},
                                            "from http": {partition_name("from http")}}
    finally:
        engine.dispose()
        server.drop_database(name)


def test_a_collection_filter_prunes_the_other_partitions(partitioned: tuple[str, Engine], tmp_path: Path) -> None:
    _, engine = partitioned
    for name in SIZES:
        _ingest(engine, tmp_path, name)
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE dpr_pg.passages"))
    hits = search(engine, QUERY, k=5, collection="wiki", explain=True)
    assert [h.external_id for h in hits] == truth(["wiki"])
    assert partition_name("wiki") in hits.plan.explain
    assert partition_name("news") not in hits.plan.explain and "passages_default" not in hits.plan.explain
    # a collection larger than the exact threshold: its partition's own index, unfiltered
    walked = search(engine, QUERY, k=5, collection="wiki", exact_threshold=100, explain=True)
    assert walked.plan.path == "hnsw-iterative" and "partition of about 400 rows" in walked.plan.reason
    assert f"{partition_name('wiki')}_hnsw" in walked.plan.explain or partition_name("wiki") in walked.plan.explain
    assert [h.external_id for h in walked] == truth(["wiki"])
    inside = search(engine, QUERY, k=5, collection="wiki", filter={"even": True}, explain=True)
    assert [h.external_id for h in inside] == truth(["wiki"], even=True)
    assert partition_name("news") not in inside.plan.explain
    # across every collection: Python, SQL, hybrid, the ORM statement
    everywhere = truth(list(SIZES))
    assert [h.external_id for h in search(engine, QUERY, k=5, mode="exact")] == everywhere
    assert [h.external_id for h in search(engine, QUERY, k=5, ef_search=400)] == everywhere
    with engine.connect() as conn:
        sql_hits = conn.execute(sa.text("SELECT external_id FROM dpr_pg.search(CAST(:q AS vector), 5)"),
                                {"q": str(QUERY.tolist())}).scalars().all()
        hybrid = conn.execute(sa.text(
            "SELECT external_id FROM dpr_pg.hybrid_search(CAST(:q AS vector), 'texto news', 10)"),
            {"q": str(QUERY.tolist())}).scalars().all()
    assert sql_hits == everywhere
    assert hybrid and any(e.startswith("news:") for e in hybrid)
    with Session(engine) as session:
        rows = session.execute(search_statement(QUERY, k=5, exact=True)).all()
    assert [r.external_id for r in rows] == everywhere


def test_dropping_a_collection_drops_its_partition(partitioned: tuple[str, Engine], tmp_path: Path) -> None:
    url, engine = partitioned
    _ingest(engine, tmp_path, "wiki")
    _ingest(engine, tmp_path, "news")
    dropped = drop_collection(engine, "news")
    assert (dropped.passages, dropped.partition_dropped) == (SIZES["news"], True)
    assert _counts(engine) == {"wiki": SIZES["wiki"]}
    assert partition_name("news") not in {p.table for p in list_partitions(engine)}
    result = CliRunner().invoke(main, ["--database-url", url, "collections", "drop", "wiki", "--yes"])
    assert result.exit_code == 0, result.output
    assert f"removed {SIZES['wiki']} passage(s) with its partition" in result.output
    assert _counts(engine) == {}
    assert hnsw_exists(engine)


def test_rows_in_the_default_partition_move_when_the_partition_is_made(partitioned: tuple[str, Engine],
                                                                       tmp_path: Path) -> None:
    _, engine = partitioned
    _ingest(engine, tmp_path, "wiki", count=1)
    with engine.begin() as conn:  # a write straight into the table, bypassing ingest
        conn.execute(sa.text(
            "INSERT INTO dpr_pg.passages (collection, external_id, text, content_hash, embedding, encoder_id) "
            "SELECT 'news', 'news:0', 'x', 'h', embedding, encoder_id FROM dpr_pg.passages"))
    assert _where_rows_live(engine)["news"] == {"passages_default"}
    assert any("default partition holds passages" in w for w in doctor(engine).warnings)
    _ingest(engine, tmp_path, "news", start=1, count=3)
    assert _where_rows_live(engine)["news"] == {partition_name("news")}
    assert _counts(engine)["news"] == 4


def test_converting_a_populated_database_keeps_every_row_id_and_hit(plain: tuple[str, Engine], tmp_path: Path,
                                                                     cli: Any) -> None:
    database_url, engine = plain
    for name in SIZES:
        _ingest(engine, tmp_path, name)
    set_storage(engine, "halfvec")
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE dpr_pg.passages"))
        before_ids = conn.execute(sa.text("SELECT id, collection, external_id FROM dpr_pg.passages ORDER BY id")).all()
    before = {c: [h.external_id for h in search(engine, QUERY, k=5, collection=c, mode="exact")] for c in SIZES}
    result = cli("--database-url", database_url, "storage", "partition")
    assert result.returncode == 0, result.stderr
    assert f"{sum(SIZES.values())} passages in {len(SIZES)} collection partitions" in result.stdout
    assert "copied collection 'news'" in result.stderr
    assert is_partitioned(engine)
    with engine.connect() as conn:
        after_ids = conn.execute(sa.text("SELECT id, collection, external_id FROM dpr_pg.passages ORDER BY id")).all()
        names = set(conn.execute(sa.text(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'dpr_pg.passages'::regclass")).scalars())
        indexes = set(conn.execute(sa.text(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'dpr_pg' AND tablename = 'passages'")).scalars())
        definition = conn.execute(sa.text("SELECT pg_get_indexdef('dpr_pg.passages_embedding_hnsw'::regclass)")).scalar()
    assert after_ids == before_ids
    assert {"passages_pkey", "passages_collection_external_id_key", "passages_metadata_is_object"} <= names
    assert {"passages_embedding_hnsw", "passages_metadata_gin", "passages_tsv_gin"} <= indexes
    assert "halfvec" in definition  # the storage the database had
    for name in SIZES:
        assert [h.external_id for h in search(engine, QUERY, k=5, collection=name, mode="exact")] == before[name]
        assert [h.external_id for h in search(engine, QUERY, k=5, collection=name, ef_search=400)] == before[name]
    # new ids go on after the old ones; a second conversion has nothing to do
    report = _ingest(engine, tmp_path, "news", start=0, count=1)
    assert report.inserted == 0
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO dpr_pg.passages (collection, external_id, text, content_hash, embedding, encoder_id) "
            "SELECT 'news', 'extra', 'x', 'h', embedding, encoder_id FROM dpr_pg.passages LIMIT 1"))
        newest = conn.execute(sa.text("SELECT id FROM dpr_pg.passages WHERE external_id = 'extra'")).scalar_one()
    assert newest > max(r.id for r in before_ids)
    assert not partition_passages(engine).converted


def test_rebuilding_and_switching_the_index_goes_partition_by_partition(partitioned: tuple[str, Engine],
                                                                        tmp_path: Path) -> None:
    _, engine = partitioned
    _ingest(engine, tmp_path, "wiki")
    _ingest(engine, tmp_path, "news")
    build = build_index(engine, m=8, ef_construction=32)
    assert build.rows >= 0 and hnsw_parameters(engine).m == 8
    change = set_storage(engine, "halfvec")
    assert change.rebuilt
    with engine.connect() as conn:
        leaves = conn.execute(sa.text(
            "SELECT c.relname, pg_get_indexdef(c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'dpr_pg.passages_embedding_hnsw'::regclass ORDER BY 1")).all()
        invalid = conn.execute(sa.text(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relnamespace = 'dpr_pg'::regnamespace AND NOT i.indisvalid")).scalar_one()
    assert [name for name, _ in leaves] == sorted(f"{t}_hnsw" for t in
                                                  ("passages_default", partition_name("wiki"), partition_name("news")))
    assert all("halfvec" in d and "m='8'" in d for _, d in leaves)
    assert invalid == 0
    assert [h.external_id for h in search(engine, QUERY, k=5, collection="wiki", ef_search=400)] == truth(["wiki"])
    assert not [w for w in doctor(engine).warnings if "partition" in w or "INVALID" in w]


def test_doctor_names_a_partition_without_an_hnsw_index(partitioned: tuple[str, Engine], tmp_path: Path) -> None:
    _, engine = partitioned
    _ingest(engine, tmp_path, "wiki", count=5)
    table = partition_name("wiki")
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP INDEX dpr_pg.passages_embedding_hnsw"))
        conn.execute(sa.text("CREATE INDEX passages_embedding_hnsw ON ONLY dpr_pg.passages "
                             "USING hnsw (embedding vector_ip_ops)"))
    warnings = doctor(engine).warnings
    assert any(f"partition dpr_pg.{table} has no HNSW index" in w for w in warnings)
    assert any("missing or INVALID" in w for w in warnings)


def test_row_level_security_still_limits_tenants_on_partitions(partitioned: tuple[str, Engine], tmp_path: Path,
                                                               server: Any) -> None:
    url, engine = partitioned
    for name in ("wiki", "news"):
        _ingest(engine, tmp_path, name)
    roles = [f"dpr_part_{label}_{uuid.uuid4().hex[:8]}" for label in ("reader", "writer")]
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with admin.connect() as conn:
            for role in roles:
                conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
        grant(engine, roles[0], collections=["wiki"])
        grant(engine, roles[1], collections=["news", "fresh"], write=True)
        reader = sa.create_engine(make_url(url).set(username=roles[0]), poolclass=sa.NullPool)
        writer = sa.create_engine(make_url(url).set(username=roles[1]), poolclass=sa.NullPool)
        assert [h.external_id for h in search(reader, QUERY, k=5)] == truth(["wiki"])
        assert search(reader, QUERY, k=5, collection="news") == []
        with reader.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM dpr_pg.passages")).scalar_one() == SIZES["wiki"]
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):  # a partition, read directly
                conn.execute(sa.text(f"SELECT count(*) FROM dpr_pg.{partition_name('news')}"))
        # a write role makes the partition of a collection it may write, and no other
        rows, vectors = _files(tmp_path, "news", count=3)
        report = ingest(writer, None, rows, collection="fresh", embeddings=vectors, fingerprint=FINGERPRINT,
                        progress=False)
        assert report.inserted == 3
        assert _where_rows_live(engine)["fresh"] == {partition_name("fresh")}
        with pytest.raises(PrivilegeError, match="may not write collection 'wiki'"):
            ingest(writer, None, rows, collection="wiki", embeddings=vectors, fingerprint=FINGERPRINT, progress=False)
        reader.dispose()
        writer.dispose()
    finally:
        with admin.connect() as conn:
            for role in roles:
                conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
                conn.execute(sa.text(f'DROP ROLE "{role}"'))
        admin.dispose()


def test_a_promoted_key_reaches_every_partition(partitioned: tuple[str, Engine], tmp_path: Path) -> None:
    from dpr_pg.db.promoted import promote_key

    _, engine = partitioned
    _ingest(engine, tmp_path, "wiki")
    promote_key(engine, "even", kind="boolean")
    _ingest(engine, tmp_path, "news")  # a partition made after the column: it has it too
    with engine.connect() as conn:
        stored = dict(conn.execute(sa.text("SELECT collection, count(*) FROM dpr_pg.passages WHERE meta_even "
                                           "GROUP BY 1")).all())
    assert stored == {"wiki": SIZES["wiki"] // 2, "news": SIZES["news"] // 2}
    hits = search(engine, QUERY, k=5, collection="news", filter={"even": False}, explain=True)
    assert [h.external_id for h in hits] == truth(["news"], even=False)
    assert "meta_even" in hits.plan.explain


def test_the_conversion_sizes_its_memory_for_the_largest_partitions_graph(plain: tuple[str, Engine]) -> None:
    # Each partition's HNSW graph is built on its own: 6,000 rows of DIM-d vectors need about 2MB
    # (graph_bytes), the whole table's 12,100 about 5MB; the database's own setting is 1MB.
    _, engine = plain
    with engine.begin() as conn:
        encoder = stand_in_encoder(conn, DIM, fingerprint="memory")
        for collection, rows in {"big": 6000, "also big": 6000, "small": 100}.items():
            conn.execute(sa.text(
                "INSERT INTO dpr_pg.passages (collection, external_id, text, content_hash, embedding, encoder_id) "
                "SELECT :c, 'p' || i, 'texto ' || i, 'h' || i, "
                "(SELECT array_agg(random() - 0.5) FROM generate_series(1, :d) WHERE i > 0)::vector, :e "
                "FROM generate_series(1, :n) AS i"), {"c": collection, "d": DIM, "e": encoder, "n": rows})
        conn.execute(sa.text(f'ALTER DATABASE "{engine.url.database}" SET maintenance_work_mem = \'1MB\''))
    engine.dispose()  # new connections take the database's setting
    lines: list[str] = []
    conversion = partition_passages(engine, progress=lines.append)
    assert conversion.rows == 12_100 and conversion.partitions == 3
    assert "building with maintenance_work_mem 2MB" in lines
    with engine.connect() as conn:  # the setting was the conversion's own
        assert conn.execute(sa.text("SHOW maintenance_work_mem")).scalar() == "1MB"
