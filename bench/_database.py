"""A benchmark's own database on its server: made afresh for a run (an earlier run's copy dropped), dropped after it;
and the stand-in encoder row of the vectors a benchmark writes into it.

The imports are inside the functions: bench_ingest and bench_load measure the memory of processes
that import their script, and this module must not load SQLAlchemy or dpr_pg into them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


def fresh_database(admin_url: str, name: str, *, dim: int | None = None) -> str:
    """The URL of an empty database ``name``; with ``dim``, dpr_pg's schema is in it at vector(dim)."""
    import sqlalchemy as sa

    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # the names are the benchmarks' own, made of numbers and labels
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    if dim is not None:
        from dpr_pg.db.schema import init

        engine = sa.create_engine(url)
        init(engine, dim=dim)
        engine.dispose()
    return url


def drop_database(admin_url: str, name: str) -> None:
    """Drop database ``name``, whoever is still connected to it."""
    import sqlalchemy as sa

    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def stand_in_encoder(conn: Connection, dim: int) -> int:
    """The id of a new dpr_pg.encoders row, fingerprint "bench", for the ``dim``-d vectors a benchmark makes
    itself (no model encodes them)."""
    import sqlalchemy as sa

    return int(conn.execute(sa.text(
        "INSERT INTO dpr_pg.encoders (fingerprint, question_model, passage_model, tokenizer_hash, dim, max_length) "
        "VALUES ('bench', 'bench/question', 'bench/passage', 'bench', :d, 512) RETURNING id"), {"d": dim}).scalar_one())
