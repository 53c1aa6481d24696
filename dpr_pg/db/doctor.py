"""``dpr-pg doctor``: what server this is, what pgvector it has, and what dpr_pg has stored in it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dpr_pg.db.engine import psql_url
from dpr_pg.db.filtered import PREFIX as FILTERED_PREFIX, filtered_indexes
from dpr_pg.db.partitions import is_partitioned, partition_warnings
from dpr_pg.db.replicas import ReplicaStatus, probe_replica, reason_of, route_of
from dpr_pg.db.revision import current_revision, embedding_dim, head_revision
from dpr_pg.db.storage import read_storage
from dpr_pg.db.index import HNSW_INDEX, hnsw_exists, hnsw_parameters, index_lock_holder
from dpr_pg.tuning import LARGE_GRAPH_EF_CONSTRUCTION, LARGE_GRAPH_M, LARGE_GRAPH_ROWS


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


def pgvector_warnings(version: str | None) -> list[str]:
    """Known problems of a pgvector version.

    >>> pgvector_warnings("0.7.4")[0][:40]
    'pgvector 0.7.4 has no iterative index sc'
    """
    if version is None:
        return ["pgvector is not installed in this database; run dpr-pg init"]
    found = _version_tuple(version)
    warnings = []
    if found < (0, 8, 0):
        warnings.append(
            f"pgvector {version} has no iterative index scans: filtered searches fall back to exact scans; "
            "upgrade to pgvector >= 0.8.0"
        )
    if (0, 6, 0) <= found <= (0, 8, 1):
        warnings.append(
            f"pgvector {version} is affected by CVE-2026-3172 (parallel HNSW index build); "
            "upgrade to pgvector >= 0.8.2, or SET max_parallel_maintenance_workers = 0 before building indexes"
        )
    return warnings


def index_memory_warning(index_bytes: int, shared_buffers_bytes: int) -> str | None:
    """A warning when the HNSW index cannot stay in shared_buffers (every search then copies pages in).

    >>> index_memory_warning(4 * 2**30, 128 * 2**20)[:53]
    'the HNSW index (4096 MB) is larger than shared_buffer'
    """
    if index_bytes <= shared_buffers_bytes:
        return None
    wanted = -(-index_bytes * 5 // 4 // 2**30)  # GB, with a quarter to spare for the rows searches read
    return (f"the HNSW index ({index_bytes // 2**20} MB) is larger than shared_buffers "
            f"({shared_buffers_bytes // 2**20} MB): searches copy index pages in from the OS on every query; "
            f"set shared_buffers to at least {wanted}GB (ALTER SYSTEM SET shared_buffers = '{wanted}GB', then "
            "restart PostgreSQL) if the server has the memory")


def graph_warning(rows: int, m: int, ef_construction: int) -> str | None:
    """A warning when an HNSW graph over ``rows`` (one partition's, when partitioned) has too few links to find
    its neighbours: recall then stays low however high ef_search goes.

    >>> graph_warning(1_000_000, 16, 64)[:62]
    'the HNSW index (m 16, ef_construction 64) holds 1,000,000 rows'
    >>> graph_warning(1_000_000, 24, 128) is None
    True
    """
    if rows <= LARGE_GRAPH_ROWS or (m >= LARGE_GRAPH_M and ef_construction >= LARGE_GRAPH_EF_CONSTRUCTION):
        return None
    return (f"the HNSW index (m {m}, ef_construction {ef_construction}) holds {rows:,} rows in one graph: above "
            f"{LARGE_GRAPH_ROWS:,} rows such a graph misses neighbours however high ef_search goes (recall@10 "
            f"0.90-0.92 at 1M rows on the benchmark); rebuild it with dpr-pg index --m {LARGE_GRAPH_M} "
            f"--ef-construction {LARGE_GRAPH_EF_CONSTRUCTION}")


_INVALID_INDEXES = """
SELECT c.relname, i.indisready FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'dpr_pg' AND NOT i.indisvalid ORDER BY c.relname
"""


def invalid_index_warnings(conn: Connection) -> list[str]:
    """One warning per INVALID index in the dpr_pg schema: searches ignore it, and a ready one slows every write.

    An INVALID index is what a failed or killed CREATE INDEX CONCURRENTLY leaves. The HNSW index
    being built right now (under the index lock) is INVALID too, and is said to be in progress.
    """
    rows = conn.execute(sa.text(_INVALID_INDEXES)).all()
    holder = index_lock_holder(conn) if rows else None
    warnings = []
    for name, ready in rows:
        hnsw = name in (HNSW_INDEX, f"{HNSW_INDEX}_new")
        if hnsw and holder is not None:
            warnings.append(f"index dpr_pg.{name} is INVALID while an HNSW index build runs ({holder}); "
                            "run dpr-pg doctor again when it has finished")
            continue
        cost = ("; it is still updated on every write, which slows ingest and sync for nothing" if ready
                else "")
        if name.startswith(FILTERED_PREFIX):
            fix = ("drop it with dpr-pg index --drop-where FILTER (dpr-pg index --list-where shows its filter) and "
                   "build it again with dpr-pg index --where FILTER")
        elif hnsw:
            fix = (f"run dpr-pg index, which drops it and builds the HNSW index anew (or DROP INDEX CONCURRENTLY "
                   f"dpr_pg.{name})")
        else:
            fix = (f"rebuild it with REINDEX INDEX CONCURRENTLY dpr_pg.{name}, or drop it with DROP INDEX "
                   f"CONCURRENTLY dpr_pg.{name}")
        warnings.append(f"index dpr_pg.{name} is INVALID (left by a failed or interrupted CREATE INDEX "
                        f"CONCURRENTLY): searches do not use it{cost}; {fix}")
    return warnings


def replica_statuses(engine: Engine) -> tuple[list[ReplicaStatus], list[str]]:
    """Each read replica of ``engine`` checked now (state and lag), and a warning for each one searches skip."""
    route = route_of(engine)
    if route is None:
        return [], []
    with engine.connect() as conn:
        primary_lsn = conn.execute(sa.text("SELECT pg_current_wal_lsn()::text")).scalar_one()
    found, warnings = [], []
    for replica in route.replicas:
        status = ReplicaStatus(replica.status.url)
        try:
            with replica.engine.connect() as conn:  # type: ignore[union-attr]
                probe_replica(conn, primary_lsn, status, route.max_lag)
        except sa.exc.DBAPIError as e:
            status.state, status.error = "unreachable", reason_of(e, replica.password)
        found.append(status)
        if status.state == "unreachable":
            warnings.append(f"read replica {status.url} is unreachable ({status.error}): searches skip it; "
                            "start it, or fix DPR_PG_READ_URLS / --read-urls")
        elif status.state == "primary":
            warnings.append(f"read URL {status.url} is a primary, not a streaming replica (pg_is_in_recovery() is "
                            "false): searches never use it and nothing is written to it; give a replica's URL "
                            "in DPR_PG_READ_URLS / --read-urls")
        elif status.state == "lagging":
            warnings.append(f"read replica {status.url} lags {status.lag_seconds:.1f} s, more than the "
                            f"{route.max_lag:g} s allowed (DPR_PG_MAX_REPLICA_LAG): searches skip it until it "
                            "catches up")
    return found, warnings


@dataclass
class DoctorReport:
    """The state of one database as dpr_pg sees it."""

    database_url: str  # a libpq URL, as psql accepts it; the password masked unless asked for
    postgres_version: str
    pgvector_version: str | None
    schema_revision: str | None
    head_revision: str
    dim: int | None
    passages: dict[str, int] = field(default_factory=dict)
    encoders: list[dict[str, Any]] = field(default_factory=list)
    hnsw: dict[str, Any] | None = None  # the HNSW index's m, ef_construction and storage; None when missing/INVALID
    warnings: list[str] = field(default_factory=list)
    replicas: list[dict[str, Any]] = field(default_factory=list)  # ReplicaStatus of each read URL, as dicts
    filtered_indexes: list[dict[str, Any]] = field(default_factory=list)  # dpr_pg.db.filtered's, as dicts

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def doctor(engine: Engine, *, show_password: bool = False) -> DoctorReport:
    """Inspect the database behind ``engine``; never writes.

    The report's ``database_url`` is one psql accepts; its password is ``***`` unless ``show_password``.

    >>> doctor(engine).pgvector_version  # doctest: +SKIP
    '0.8.5'
    """
    with engine.connect() as conn:
        server_version = conn.execute(sa.text("SHOW server_version")).scalar_one()
        pgvector = conn.execute(sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()
        revision = current_revision(conn)
        dim = embedding_dim(conn)
        passages: dict[str, int] = {}
        encoders: list[dict[str, Any]] = []
        if dim is not None:
            passages = dict(
                conn.execute(
                    sa.text("SELECT collection, count(*) FROM dpr_pg.passages GROUP BY collection ORDER BY collection")
                ).all()
            )
            encoders = [
                dict(row._mapping)
                for row in conn.execute(
                    sa.text(
                        "SELECT id, fingerprint, question_model, passage_model, dim, max_length "
                        "FROM dpr_pg.encoders ORDER BY id"
                    )
                )
            ]
    head = head_revision()
    warnings = pgvector_warnings(pgvector)
    hnsw = None
    filtered: list[dict[str, Any]] = []
    if dim is not None:
        parameters = hnsw_parameters(engine) if hnsw_exists(engine) else None
        if parameters is None:
            warnings.append("the HNSW index on dpr_pg.passages is missing or INVALID (an interrupted build): "
                            "searches run as exact scans; run dpr-pg index to build it")
        else:
            with engine.connect() as conn:
                stored = read_storage(conn)
                partitioned = is_partitioned(conn)
                hnsw = {"m": parameters.m, "ef_construction": parameters.ef_construction,
                        "storage": stored.kind, "column": stored.column}
                sizes = conn.execute(sa.text(  # a partitioned index: the sum of its partitions'
                    "SELECT (SELECT coalesce(sum(pg_relation_size(c.oid)), 0) FROM pg_class c WHERE c.oid = "
                    "to_regclass(:index) OR c.oid IN (SELECT t.relid FROM pg_partition_tree(to_regclass(:index)) t)), "
                    "pg_size_bytes(current_setting('shared_buffers'))"),
                    {"index": f"dpr_pg.{HNSW_INDEX}"}).one()
            memory = index_memory_warning(int(sizes[0]), int(sizes[1]))
            if memory:
                warnings.append(memory)
            graph_rows = max(passages.values(), default=0) if partitioned else sum(passages.values())
            graph = graph_warning(graph_rows, parameters.m, parameters.ef_construction)
            if graph:
                warnings.append(graph)
        with engine.connect() as conn:
            filtered = [f.as_dict() for f in filtered_indexes(conn)]
            warnings.extend(invalid_index_warnings(conn))
            warnings.extend(partition_warnings(conn))
    replicas, replica_warnings = replica_statuses(engine)
    warnings.extend(replica_warnings)
    if revision is None:
        warnings.append("no dpr_pg schema in this database; run dpr-pg init")
    elif revision != head:
        warnings.append(f"schema revision {revision} is behind {head}; run dpr-pg init to upgrade")
    return DoctorReport(
        database_url=psql_url(engine.url, show_password=show_password),
        postgres_version=server_version,
        pgvector_version=pgvector,
        schema_revision=revision,
        head_revision=head,
        dim=dim,
        passages=passages,
        encoders=encoders,
        hnsw=hnsw,
        warnings=warnings,
        replicas=[status.as_dict() for status in replicas],
        filtered_indexes=filtered,
    )
