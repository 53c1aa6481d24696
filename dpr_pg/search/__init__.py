"""Search: a question (or a precomputed query vector) → the top-k passages by inner product.

- :mod:`~dpr_pg.search.api`: ``search``, ``search_many``, ``search_statement``, ``Hit``, ``Hits``.
- :mod:`~dpr_pg.search.planner`: the path a search takes (exact, HNSW, iterative scan), ``SearchPlan``.
- :mod:`~dpr_pg.search.statistics`: whether a table has planner statistics; ANALYZE after large writes.
- :mod:`~dpr_pg.search.query_vector`: the question vector as a binary bound parameter.
- :mod:`~dpr_pg.search.orm`: ``DprSearchable`` and ``model_search_statement`` for an app's own table.
- :mod:`~dpr_pg.search.no_hits`: why a search found nothing.
"""

# dpr_pg.search is both this package and the public function: the package's search attribute is what
# dpr_pg._Package puts in its place once the package is imported.
from dpr_pg.search.api import Hit, Hits, ann_settings, search, search_many, search_statement

__all__ = ["Hit", "Hits", "ann_settings", "search", "search_many", "search_statement"]
