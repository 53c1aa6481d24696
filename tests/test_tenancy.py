"""Tenancy: real roles (CREATE ROLE ... LOGIN, connected as themselves) see and write only their collections.

Every face is tried as the tenant: the SQL functions, search_table, the Python API, the ORM
statement and the CLI. The least-privilege search role (``dpr-pg grant ROLE``) searches through
each of them and can write nothing.
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
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from dpr_pg import (ConfigError, PrivilegeError, SchemaError, grant, ingest, make_tiny_models, revoke, search,
                    search_statement, set_tenancy, tenancy_status)
from dpr_pg.encoders.fingerprint import EncoderFingerprint
from dpr_pg.search.orm import DprSearchable, encoder_guard, model_search_statement
from dpr_pg.sync.tables import enable_table

DIM = 8
COLLECTIONS = {"wiki": 30, "news": 30, "secret": 2500}  # secret: more rows than the exact threshold
FINGERPRINT = EncoderFingerprint("tenancy/question", None, "tenancy/passage", None, "tok", DIM, 512)


class Base(DeclarativeBase):
    pass


class Doc(DprSearchable, Base):
    __tablename__ = "docs"
    __dpr_dim__ = DIM

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.Text)
    body: Mapped[str] = mapped_column(sa.Text)


def _vectors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {name: rng.normal(size=(n, DIM)).astype(np.float32) for name, n in COLLECTIONS.items()}


VECTORS = _vectors()
QUERY = np.random.default_rng(12).normal(size=DIM).astype(np.float32)


def truth(collections: list[str], k: int = 5) -> list[str]:
    """external ids of the exact top k over the given collections."""
    scored = [(float(VECTORS[c][i] @ QUERY), f"{c}-{i}") for c in collections for i in range(COLLECTIONS[c])]
    return [e for _, e in sorted(scored, key=lambda s: -s[0])[:k]]


def as_role(url: str, role: str) -> Engine:
    return sa.create_engine(make_url(url).set(username=role), poolclass=sa.NullPool)


def _load(engine: Engine, *, tiny_collections: int = 0) -> None:
    """COLLECTIONS, ``tiny_collections`` more of one row each, and two app tables enabled for search_table."""
    with engine.begin() as conn:
        encoder = stand_in_encoder(conn, DIM, fingerprint=FINGERPRINT.id, question_model=FINGERPRINT.question_model,
                                   passage_model=FINGERPRINT.passage_model, tokenizer_hash=FINGERPRINT.tokenizer_hash)
        for name, vectors in VECTORS.items():
            conn.execute(sa.text(
                "INSERT INTO dpr_pg.passages (collection, external_id, title, text, metadata, content_hash, "
                "embedding, encoder_id) VALUES (:c, :e, :t, :x, CAST(:m AS jsonb), 'h', :v, :enc)"),
                [{"c": name, "e": f"{name}-{i}", "t": f"{name} {i}", "x": f"texto de {name} número {i}",
                  "m": json.dumps({"even": i % 2 == 0}), "v": str(v.tolist()), "enc": encoder}
                 for i, v in enumerate(vectors)])
        conn.execute(sa.text(
            "INSERT INTO dpr_pg.passages (collection, external_id, text, content_hash, embedding, encoder_id) "
            "SELECT 'tiny' || i, 'tiny', 'x', 'h', embedding, encoder_id FROM dpr_pg.passages, "
            "generate_series(1, :n) AS i WHERE external_id = 'wiki-0'"), {"n": tiny_collections})
        # an app table enabled for search_table, and one no tenant may read
        conn.execute(sa.text("CREATE TABLE docs (id integer PRIMARY KEY, title text NOT NULL, body text NOT NULL)"))
        enable_table(conn, "docs", text_columns=["body"], title_column="title", dim=DIM)
        conn.execute(sa.text("CREATE TABLE payroll (id integer PRIMARY KEY, employee text NOT NULL, "
                             "salary_of_the_ceo text NOT NULL)"))
        enable_table(conn, "payroll", text_columns=["employee"], dim=DIM)
        rng = np.random.default_rng(3)
        for table, body in (("docs", "title, body"), ("payroll", "employee, salary_of_the_ceo")):
            conn.execute(sa.text(f"INSERT INTO {table} (id, {body}) VALUES (:i, :a, :b)"),
                         [{"i": i, "a": f"t{i}", "b": f"b{i}"} for i in range(10)])
            for i in range(10):
                conn.execute(sa.text(f"UPDATE {table} SET embedding = CAST(:e AS vector) WHERE id = :i"),
                             {"e": str(rng.normal(size=DIM).round(4).tolist()), "i": i})
        conn.execute(sa.text("DELETE FROM dpr_pg.sync_queue"))
        conn.execute(sa.text("ANALYZE dpr_pg.passages"))


class Roles:
    """LOGIN roles created for one database; dropped with everything granted to them."""

    def __init__(self, server: Any, database_url: str) -> None:
        self.server, self.url, self.names = server, database_url, []
        self.admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)

    def create(self, label: str) -> str:
        name = f"dpr_{label}_{uuid.uuid4().hex[:8]}"
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE ROLE "{name}" LOGIN'))
        self.names.append(name)
        return name

    def drop(self) -> None:
        with self.admin.connect() as conn:
            for name in self.names:
                conn.execute(sa.text(f'DROP OWNED BY "{name}"'))
        self.admin.dispose()

    def drop_roles(self) -> None:
        admin = sa.create_engine(self.server.admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        with admin.connect() as conn:
            for name in self.names:
                conn.execute(sa.text(f'DROP ROLE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture(scope="module")
def tenants(server: Any) -> Iterator[tuple[str, Engine, dict[str, str]]]:
    """(url, owner engine, {label: role}) of a database where tenancy is on.

    wiki_reader reads wiki; two_reader reads wiki and news; news_writer reads and writes news;
    secret_reader reads secret (2,500 rows: the iterative index path).
    """
    name = server.create_database(template=server.initialized_template(DIM))
    url = server.url_for(name)
    owner = sa.create_engine(url)
    _load(owner, tiny_collections=200)  # many collections: PostgreSQL's guess of a tenant's share is small
    roles = Roles(server, url)
    made = {label: roles.create(label) for label in ("wiki_reader", "two_reader", "news_writer", "secret_reader")}
    grant(owner, made["wiki_reader"], collections=["wiki"])
    grant(owner, made["two_reader"], collections=["wiki", "news"])
    grant(owner, made["news_writer"], collections="news", write=True)
    grant(owner, made["secret_reader"], collections=["secret"])
    with owner.begin() as conn:
        conn.execute(sa.text(f'GRANT SELECT ON docs TO "{made["wiki_reader"]}"'))
    yield url, owner, made
    roles.drop()
    owner.dispose()
    server.drop_database(name)
    roles.drop_roles()


def sql_search(engine: Engine, statement: str, **params: Any) -> list[str]:
    with engine.connect() as conn:
        return [r.external_id for r in conn.execute(sa.text(statement), {"q": str(QUERY.tolist()), **params})]


# ---- what a tenant sees, through every face --------------------------------------------------------


def test_sql_functions_return_only_the_tenants_collections(tenants: tuple[str, Engine, dict[str, str]]) -> None:
    url, _, roles = tenants
    reader, two = as_role(url, roles["wiki_reader"]), as_role(url, roles["two_reader"])
    assert sql_search(reader, "SELECT external_id FROM dpr_pg.search(CAST(:q AS vector), 5)") == truth(["wiki"])
    assert sql_search(two, "SELECT external_id FROM dpr_pg.search(CAST(:q AS vector), 5)") == truth(["wiki", "news"])
    # asking for a collection it may not read, by argument or by filter, finds nothing
    assert sql_search(reader, "SELECT external_id FROM dpr_pg.search(CAST(:q AS vector), 5, '{}', 'secret')") == []
    assert sql_search(reader, "SELECT external_id FROM dpr_pg.search(CAST(:q AS vector), 5, "
                              "'{\"collection\": {\"$in\": [\"secret\", \"news\"]}}')") == []
    hybrid = sql_search(two, "SELECT external_id FROM dpr_pg.hybrid_search(CAST(:q AS vector), 'texto de secret', 20)")
    assert hybrid and all(e.split("-")[0] in ("wiki", "news") for e in hybrid)
    with reader.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM dpr_pg.passages")).scalar_one() == COLLECTIONS["wiki"]
        assert conn.execute(sa.text("SELECT dpr_pg.allowed_collections()")).scalar_one() == ["wiki"]


def test_python_api_and_orm_statement_return_only_the_tenants_collections(
        tenants: tuple[str, Engine, dict[str, str]]) -> None:
    url, _, roles = tenants
    two = as_role(url, roles["two_reader"])
    hits = search(two, QUERY, k=5)
    assert [h.external_id for h in hits] == truth(["wiki", "news"])
    assert hits.plan.path == "exact" and "row-level security" in hits.plan.reason  # 60 rows: exact is exact
    filtered = search(two, QUERY, k=5, filter={"even": True})
    assert filtered and all(h.collection in ("wiki", "news") and int(h.external_id.split("-")[1]) % 2 == 0
                            for h in filtered)
    hybrid = search(two, QUERY, k=10, mode="hybrid", query_text="texto de secret")
    assert hybrid and {h.collection for h in hybrid} <= {"wiki", "news"}
    assert search(two, QUERY, k=5, collection="secret") == []
    with Session(two) as session:
        rows = session.execute(search_statement(QUERY, k=5, exact=True)).all()
    assert [r.external_id for r in rows] == truth(["wiki", "news"])


def test_a_tenant_with_many_rows_gets_the_iterative_index_path_and_exact_recall(
        tenants: tuple[str, Engine, dict[str, str]]) -> None:
    url, _, roles = tenants
    secret = as_role(url, roles["secret_reader"])
    hits = search(secret, QUERY, k=5, ef_search=1000, explain=True)
    assert hits.plan.path == "hnsw-iterative" and hits.plan.matching_rows == 2001
    assert [h.external_id for h in hits] == truth(["secret"])
    # read in index order: left to its guess of the policy's share, PostgreSQL would sort the collection
    assert "Index Scan using passages_embedding_hnsw" in hits.plan.explain and "Bitmap" not in hits.plan.explain
    assert sql_search(secret, "SELECT external_id FROM dpr_pg.search(CAST(:q AS vector), 5)") == truth(["secret"])


def test_the_policy_keeps_the_collection_index_in_use(tenants: tuple[str, Engine, dict[str, str]]) -> None:
    url, _, roles = tenants
    with as_role(url, roles["wiki_reader"]).connect() as conn:
        conn.execute(sa.text("SET enable_seqscan = off"))  # the plan shape, not the cost model, is under test
        plan = "\n".join(r[0] for r in conn.execute(sa.text(
            "EXPLAIN SELECT id FROM dpr_pg.passages ORDER BY inner_product(embedding, CAST(:q AS vector)) DESC "
            "LIMIT 5"), {"q": str(QUERY.tolist())}))
    # the allowed list is computed once (an InitPlan) and bounds an index scan on (collection, external_id)
    assert "InitPlan" in plan and "passages_collection_external_id_key" in plan
    assert "Index Cond: (collection = ANY" in plan


def test_cli_search_as_a_tenant_lists_only_its_hits(tenants: tuple[str, Engine, dict[str, str]], cli: Any,
                                                   tmp_path: Path) -> None:
    url, _, roles = tenants
    vector = tmp_path / "q.npy"
    np.save(vector, QUERY)
    tenant_url = make_url(url).set(username=roles["two_reader"]).render_as_string(hide_password=False)
    result = cli("--database-url", tenant_url, "search", "texto", "--vector", str(vector), "-k", "5", "--json")
    assert result.returncode == 0, result.stderr
    assert [h["external_id"] for h in json.loads(result.stdout)] == truth(["wiki", "news"])


def test_grants_and_sync_settings_show_a_role_only_its_own(tenants: tuple[str, Engine, dict[str, str]]) -> None:
    url, owner, roles = tenants
    with as_role(url, roles["wiki_reader"]).connect() as conn:
        assert conn.execute(sa.text("SELECT collection FROM dpr_pg.collection_grants")).scalars().all() == ["wiki"]
        # payroll is enabled for search too, but this role may not read it: its settings stay hidden
        assert conn.execute(sa.text("SELECT tbl::text FROM dpr_pg.synced_tables")).scalars().all() == ["docs"]
    status = tenancy_status(owner)
    assert status.enabled
    assert {(g.role, g.collection, g.write) for g in status.grants} >= {(roles["news_writer"], "news", True),
                                                                        (roles["wiki_reader"], "wiki", False)}


def test_search_table_refuses_an_unreadable_table_without_naming_its_columns(
        tenants: tuple[str, Engine, dict[str, str]]) -> None:
    url, _, roles = tenants
    reader = as_role(url, roles["wiki_reader"])
    with reader.connect() as conn:
        rows = conn.execute(sa.text("SELECT row_key FROM dpr_pg.search_table('docs', CAST(:q AS vector), 3)"),
                            {"q": str(QUERY.tolist())}).all()
        assert len(rows) == 3
        with pytest.raises(sa.exc.ProgrammingError) as refused:
            conn.execute(sa.text("SELECT * FROM dpr_pg.search_table('payroll', CAST(:q AS vector), 3)"),
                         {"q": str(QUERY.tolist())})
    message = str(refused.value.orig)  # the primary message, detail, hint and context
    assert "permission denied for table public.payroll" in message
    assert "salary_of_the_ceo" not in message and "employee" not in message


# ---- writes --------------------------------------------------------------------------------------


def test_a_write_role_writes_only_its_collections(tenants: tuple[str, Engine, dict[str, str]]) -> None:
    url, owner, roles = tenants
    writer = as_role(url, roles["news_writer"])
    with writer.begin() as conn:
        assert conn.execute(sa.text("UPDATE dpr_pg.passages SET title = 'x' WHERE collection = 'wiki'")).rowcount == 0
        assert conn.execute(sa.text("DELETE FROM dpr_pg.passages WHERE collection = 'secret'")).rowcount == 0
        assert conn.execute(sa.text("UPDATE dpr_pg.passages SET title = 'n' WHERE external_id = 'news-0'")).rowcount == 1
    with writer.connect() as conn, pytest.raises(sa.exc.ProgrammingError, match="row-level security policy"):
        conn.execute(sa.text(
            "INSERT INTO dpr_pg.passages (collection, external_id, text, content_hash, embedding, encoder_id) "
            "SELECT 'wiki', 'forged', 'x', 'h', embedding, encoder_id FROM dpr_pg.passages LIMIT 1"))
    with writer.connect() as conn, pytest.raises(sa.exc.ProgrammingError, match="row-level security policy"):
        conn.execute(sa.text("UPDATE dpr_pg.passages SET collection = 'wiki' WHERE external_id = 'news-1'"))
    with owner.connect() as conn:
        counts = dict(conn.execute(sa.text("SELECT collection, count(*) FROM dpr_pg.passages "
                                           "WHERE collection NOT LIKE 'tiny%' GROUP BY 1")).all())
    assert counts == COLLECTIONS


def test_ingest_as_a_write_role_stays_in_its_collection(tenants: tuple[str, Engine, dict[str, str]],
                                                        tmp_path: Path) -> None:
    url, owner, roles = tenants
    rows = tmp_path / "news.jsonl"
    rows.write_text("".join(json.dumps({"id": f"n{i}", "text": f"noticia {i}"}) + "\n" for i in range(3)))
    vectors = tmp_path / "news.npy"
    np.save(vectors, np.random.default_rng(1).normal(size=(3, DIM)).astype(np.float32))
    writer = as_role(url, roles["news_writer"])
    report = ingest(writer, None, rows, collection="news", embeddings=vectors, fingerprint=FINGERPRINT, progress=False)
    assert (report.inserted, report.updated) == (3, 0)  # new ids, which an owner would COPY straight in
    with pytest.raises(PrivilegeError, match=r"may not write collection 'wiki' \(it may write: news\).*--write"):
        ingest(writer, None, rows, collection="wiki", embeddings=vectors, fingerprint=FINGERPRINT, progress=False)
    reader = as_role(url, roles["wiki_reader"])
    with pytest.raises(PrivilegeError, match="may not ingest: it lacks INSERT on dpr_pg.passages"):
        ingest(reader, None, rows, collection="wiki", embeddings=vectors, fingerprint=FINGERPRINT, progress=False)
    with owner.begin() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM dpr_pg.passages WHERE external_id LIKE 'n_'")).scalar() == 3
        conn.execute(sa.text("DELETE FROM dpr_pg.passages WHERE external_id LIKE 'n_'"))


# ---- granting ------------------------------------------------------------------------------------


def test_revoke_takes_collections_then_everything(server: Any) -> None:
    name = server.create_database(template=server.initialized_template(DIM))
    url = server.url_for(name)
    owner = sa.create_engine(url)
    roles = Roles(server, url)
    try:
        _load(owner)
        tenant, group_member, app = roles.create("tenant"), roles.create("member"), roles.create("app")
        with owner.begin() as conn:
            conn.execute(sa.text(f'GRANT "{tenant}" TO "{group_member}"'))  # a member has its group's grants
        grant(owner, app)  # search only, no collections: every collection while tenancy is off
        assert {h.collection for h in search(as_role(url, app), QUERY, k=3000)} == set(COLLECTIONS)
        grant(owner, tenant, collections=["wiki", "news"])
        engine, member = as_role(url, tenant), as_role(url, group_member)
        assert {h.collection for h in search(engine, QUERY, k=60)} == {"wiki", "news"}
        assert {h.collection for h in search(member, QUERY, k=60)} == {"wiki", "news"}
        assert search(as_role(url, app), QUERY, k=5) == []  # tenancy on: no collection granted, no passage
        revoke(owner, tenant, collections=["news"])
        assert {h.collection for h in search(engine, QUERY, k=60)} == {"wiki"}
        set_tenancy(owner, False)  # off: every role with SELECT reads every collection
        assert not tenancy_status(owner).enabled
        assert {h.collection for h in search(as_role(url, tenant), QUERY, k=3000)} == set(COLLECTIONS)
        grant(owner, app, collections=["news"])  # a collection grant turns it on again
        assert tenancy_status(owner).enabled
        assert {h.collection for h in search(as_role(url, app), QUERY, k=60)} == {"news"}
        set_tenancy(owner, True)
        revoke(owner, tenant)
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            search(as_role(url, tenant), QUERY, k=5)
        with pytest.raises(PrivilegeError, match="only the owner of the dpr_pg tables"):
            grant(as_role(url, group_member), group_member, collections=["secret"])
        with pytest.raises(ConfigError, match="does not exist: create it first"):
            grant(owner, "no_such_role_here", collections=["wiki"])
        with pytest.raises(ConfigError, match="superuser or has BYPASSRLS"):
            grant(owner, make_url(url).username, collections=["wiki"])
        # a dropped role's grants are ignored, not an error, for everyone else
        ghost = roles.create("ghost")
        grant(owner, ghost, collections=["wiki"])
        with owner.begin() as conn:
            conn.execute(sa.text(f'DROP OWNED BY "{ghost}"; DROP ROLE "{ghost}"'))
        roles.names.remove(ghost)
        grant(owner, tenant, collections=["secret"])
        assert {h.collection for h in search(as_role(url, tenant), QUERY, k=5)} == {"secret"}
    finally:
        roles.drop()
        owner.dispose()
        server.drop_database(name)
        roles.drop_roles()


def test_cli_grant_revoke_and_tenancy(server: Any, cli: Any) -> None:
    name = server.create_database(template=server.initialized_template(DIM))
    url = server.url_for(name)
    roles = Roles(server, url)
    try:
        tenant = roles.create("cli")
        granted = cli("--database-url", url, "grant", tenant, "--collections", "wiki,news", "--write")
        assert granted.returncode == 0, granted.stderr
        assert f"{tenant} may search and ingest collections wiki, news" in granted.stdout
        shown = cli("--database-url", url, "tenancy", "--json")
        status = json.loads(shown.stdout)
        assert status["enabled"] is True
        assert sorted((g["collection"], g["write"]) for g in status["grants"]) == [("news", True), ("wiki", True)]
        again = cli("--database-url", url, "grant", tenant)  # no collections: says what tenancy leaves it
        assert again.returncode == 0, again.stderr
        assert f"{tenant} may search; tenancy is on, so only the collections granted to it: news, wiki" in again.stdout
        assert cli("--database-url", url, "revoke", tenant, "--collections", "news").returncode == 0
        assert cli("--database-url", url, "tenancy", "off").stdout.startswith("tenancy off")
        bad = cli("--database-url", url, "grant", tenant, "--collections", "wiki,")
        assert bad.returncode == 64 and "expected comma-separated collection names" in bad.stderr
        tenant_url = make_url(url).set(username=tenant).render_as_string(hide_password=False)
        refused = cli("--database-url", tenant_url, "tenancy", "on")
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert "only the owner of the dpr_pg tables" in refused.stderr
    finally:
        roles.drop()
        server.drop_database(name)
        roles.drop_roles()


# ---- the least-privilege search role -------------------------------------------------------------


def test_the_least_privilege_role_searches_through_every_face_and_writes_nothing(
        server: Any, cli: Any, tmp_path: Path) -> None:
    name = server.create_database(template=server.initialized_template(DIM))
    url = server.url_for(name)
    owner = sa.create_engine(url)
    roles = Roles(server, url)
    try:
        _load(owner)
        app = roles.create("app")
        grant(owner, app)  # no collections: tenancy stays off, the role reads every collection
        with owner.begin() as conn:
            conn.execute(sa.text(f'GRANT SELECT ON docs TO "{app}"'))  # the app's own table is the app's to grant
        engine = as_role(url, app)
        everything = list(COLLECTIONS)
        assert sql_search(engine, "SELECT external_id FROM dpr_pg.search(CAST(:q AS vector), 5)") == truth(everything)
        assert sql_search(engine, "SELECT external_id FROM dpr_pg.hybrid_search(CAST(:q AS vector), 'texto', 5)")
        with engine.connect() as conn:
            assert len(conn.execute(sa.text("SELECT * FROM dpr_pg.search_table('docs', CAST(:q AS vector), 3, "
                                            "'{\"title\": {\"$ne\": \"t1\"}}')"), {"q": str(QUERY.tolist())}).all()) == 3
            assert conn.execute(sa.text("SELECT dpr_pg.compile_filter('{\"a\": 1}')")).scalar()
        assert [h.external_id for h in search(engine, QUERY, k=5, filter={"even": True})] == [
            e for e in truth(everything, 3000) if int(e.split("-")[1]) % 2 == 0][:5]
        assert search(engine, QUERY, k=5, mode="hybrid", query_text="texto")
        with Session(engine) as session:
            assert len(session.execute(search_statement(QUERY, k=5)).all()) == 5
            docs = model_search_statement(Doc, QUERY, k=3, filter={"title": {"$ne": "t1"}})
            assert len(session.execute(docs.where(encoder_guard(Doc, FINGERPRINT))).all()) == 3
        vector = tmp_path / "q.npy"
        np.save(vector, QUERY)
        app_url = make_url(url).set(username=app).render_as_string(hide_password=False)
        found = cli("--database-url", app_url, "search", "texto", "--vector", str(vector), "--json")
        assert found.returncode == 0, found.stderr
        # ... and it can write nothing
        writes = ["DELETE FROM dpr_pg.passages", "UPDATE dpr_pg.passages SET title = 'x'",
                  "INSERT INTO dpr_pg.encoders (fingerprint, question_model, passage_model, tokenizer_hash, dim, "
                  "max_length) VALUES ('x', 'q', 'p', 't', 8, 512)",
                  "INSERT INTO dpr_pg.sync_queue (tbl, row_key) VALUES ('docs', '{\"id\": 1}')",
                  "DELETE FROM dpr_pg.collection_grants", "SELECT dpr_pg.set_tenancy(false)",
                  "SELECT dpr_pg.grant_access(current_user::regrole, ARRAY['secret'])",
                  "SELECT dpr_pg.enable_table('docs', ARRAY['body'])", "UPDATE docs SET title = 'x'"]
        for statement in writes:
            with engine.connect() as conn, pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                conn.execute(sa.text(statement))
        rows = tmp_path / "x.jsonl"
        rows.write_text(json.dumps({"id": "x", "text": "texto"}) + "\n")
        np.save(tmp_path / "x.npy", np.ones((1, DIM), dtype=np.float32))
        question_dir, passage_dir = make_tiny_models(tmp_path / "models", dim=DIM)
        refused = cli("--database-url", app_url, "ingest", str(rows), "--collection", "wiki", "--embeddings",
                      str(tmp_path / "x.npy"), "--question-model", str(question_dir), "--passage-model",
                      str(passage_dir))
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert f"role '{app}' may not ingest: it lacks INSERT on dpr_pg.passages" in refused.stderr
        with owner.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM dpr_pg.passages")).scalar() == sum(COLLECTIONS.values())
    finally:
        roles.drop()
        owner.dispose()
        server.drop_database(name)
        roles.drop_roles()


def test_tenancy_status_before_init_says_to_run_init(empty_url: str) -> None:
    engine = sa.create_engine(empty_url)
    try:
        with pytest.raises(SchemaError, match="run dpr-pg init"):
            tenancy_status(engine)
    finally:
        engine.dispose()
