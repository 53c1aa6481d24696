"""Sync of an application's own table: triggers queue its changed rows, a worker writes their embeddings.

- :mod:`~dpr_pg.sync.tables`: ``enable_table`` / ``disable_table`` (the SQL functions of sql/sync.sql).
- :mod:`~dpr_pg.sync.queue`: the queue seen from outside a worker: ``sync_status``, ``retry_items``,
  ``discard_items``.
- :mod:`~dpr_pg.sync.worker`: ``run_worker``, the loop that drains the queue batch after batch.
- :mod:`~dpr_pg.sync.batch`: one batch of the worker (claim, read, encode, write back, settle), ``WorkerReport``;
  :mod:`~dpr_pg.sync.queries` holds its SQL.
"""
