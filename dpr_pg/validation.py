"""The checks every face shares: k, ef_search, top_answers, query vectors, filters and the embedding dimension.

The Python API (:mod:`dpr_pg.search.api`), the ORM helpers (:mod:`dpr_pg.search.orm`), the CLI and the
HTTP service call these functions, so one mistake raises one error class with one message
wherever it is made:

=====================================  ===========================  ===============================
mistake                                error                        function
=====================================  ===========================  ===============================
k not an integer in 1..limit           :class:`InvalidKError`       :func:`check_k`
ef_search not an integer in 1..1000    :class:`SearchError`         :func:`check_ef_search`
top_answers not an integer in 1..100   :class:`ReaderError`         :func:`check_top_answers`
vector missing, not numbers, NaN/inf   :class:`QueryVectorError`    :func:`check_query_vector`
vector of the wrong length             :class:`DimensionError`      :func:`check_query_vector`
filter outside the filter language     :class:`FilterError`         :func:`check_filter`
embedding dimension out of range       :class:`ConfigError`         :func:`check_dim`
=====================================  ===========================  ===============================

An ask reads its k passages: its limit is ``MAX_ASK_K`` (100), a search's ``MAX_K`` (10000).
:class:`InvalidKError` and :class:`QueryVectorError` are :class:`SearchError` subclasses, and all
are :class:`DprPgError` subclasses.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dpr_pg.errors import ConfigError, DimensionError, InvalidKError, QueryVectorError, ReaderError, SearchError
from dpr_pg.filters import Filter, Node, parse
from dpr_pg.tuning import MAX_ANSWERS, MAX_DIM, MAX_EF_SEARCH, MAX_K

_FLOAT32_MAX = float(np.finfo(np.float32).max)


HALF_MAX = 65504.0  # the largest finite half-precision value: a halfvec column holds nothing beyond it


def check_half_range(vector: np.ndarray) -> np.ndarray:
    """A query vector for a halfvec column: refuse values beyond ±65,504, which the server's cast would.

    >>> check_half_range(np.array([1.0, 70000.0]))
    Traceback (most recent call last):
    dpr_pg.errors.QueryVectorError: the query vector holds a value beyond halfvec's range (±65504), the type this database stores; check the encoder output
    """
    if vector.size and float(np.abs(vector).max()) > HALF_MAX:
        raise QueryVectorError(f"the query vector holds a value beyond halfvec's range (±{HALF_MAX:g}), the type this "
                               "database stores; check the encoder output")
    return vector


def check_k(k: Any, *, limit: int = MAX_K, name: str = "k") -> int:
    """``k`` when it is an integer between 1 and ``limit``; else :class:`InvalidKError`.

    >>> check_k(5)
    5
    >>> check_k(0)
    Traceback (most recent call last):
    dpr_pg.errors.InvalidKError: expected k between 1 and 10000, not 0
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= limit:
        raise InvalidKError(f"expected {name} between 1 and {limit}, not {k!r}")
    return int(k)


def check_ef_search(ef_search: Any) -> int | None:
    """``ef_search`` when None (the planner's) or an integer from 1 to pgvector's limit; else :class:`SearchError`.

    >>> check_ef_search(200)
    200
    >>> check_ef_search(5000)
    Traceback (most recent call last):
    dpr_pg.errors.SearchError: expected ef_search between 1 and 1000, not 5000
    """
    if ef_search is None:
        return None
    if (not isinstance(ef_search, (int, np.integer)) or isinstance(ef_search, bool)
            or not 1 <= ef_search <= MAX_EF_SEARCH):
        raise SearchError(f"expected ef_search between 1 and {MAX_EF_SEARCH}, not {ef_search!r}")
    return int(ef_search)


def check_top_answers(top_answers: Any) -> int:
    """``top_answers`` (answer spans to return) when an integer from 1 to ``MAX_ANSWERS``; else :class:`ReaderError`.

    >>> check_top_answers(3)
    3
    >>> check_top_answers(101)
    Traceback (most recent call last):
    dpr_pg.errors.ReaderError: expected top_answers between 1 and 100, not 101
    """
    if (not isinstance(top_answers, (int, np.integer)) or isinstance(top_answers, bool)
            or not 1 <= top_answers <= MAX_ANSWERS):
        raise ReaderError(f"expected top_answers between 1 and {MAX_ANSWERS}, not {top_answers!r}")
    return int(top_answers)


def check_query_vector(value: Any, dim: int) -> np.ndarray:
    """A query vector checked at the boundary: present, numbers, 1-d, ``dim`` long, finite; as float32.

    >>> check_query_vector([0.5, 1.0], 2)
    array([0.5, 1. ], dtype=float32)
    >>> check_query_vector([0.5, float("nan")], 2)
    Traceback (most recent call last):
    dpr_pg.errors.QueryVectorError: the query vector holds NaN, infinity or values beyond float32; check the encoder output
    """
    if value is None:
        raise QueryVectorError("expected a question or a query vector, not None")
    try:
        vector = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise QueryVectorError(f"expected a query vector of {dim} numbers, not {type(value).__name__}") from e
    if vector.ndim != 1 or vector.size == 0:
        raise DimensionError(f"expected a query vector of {dim} dimensions, not shape {vector.shape}")
    if vector.size != dim:
        raise DimensionError(f"expected a query vector of {dim} dimensions, not {vector.size}; "
                             "encode the question with the encoder pair that made the passages")
    if not np.isfinite(vector).all() or np.abs(vector).max() > _FLOAT32_MAX:
        raise QueryVectorError("the query vector holds NaN, infinity or values beyond float32; "
                               "check the encoder output")
    return vector.astype(np.float32)


def check_filter(document: Filter) -> Node | None:
    """The filter document's tree (None for no filter); :class:`FilterError` when it breaks the language.

    >>> check_filter({"lang": "es"})
    Leaf(column=None, path=('lang',), op='$eq', value='es')
    """
    return parse(document)


def check_dim(dim: Any) -> int:
    """An embedding dimension between 1 and pgvector's limit; else :class:`ConfigError`.

    >>> check_dim(768)
    768
    """
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= dim <= MAX_DIM:
        raise ConfigError(f"expected --dim between 1 and {MAX_DIM} (pgvector's limit), not {dim!r}")
    return int(dim)


__all__ = ["check_dim", "check_ef_search", "check_filter", "check_k", "check_query_vector", "check_top_answers"]
