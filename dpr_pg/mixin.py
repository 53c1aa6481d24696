"""A SQLAlchemy mixin that gives an app's own model the columns ``op.enable_dpr`` adds.

The database side (columns, HNSW index, queue triggers) comes from the app's migration with
``op.enable_dpr``; the mixin only maps those columns so that the app can select, order and join
on them. Rank with pgvector's comparator: ``Article.embedding.max_inner_product(query)`` is the
negative inner product, so ascending order is best first (see :func:`dpr_order`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import sqlalchemy as sa
from pgvector.sqlalchemy import Vector
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from dpr_pg.config import DEFAULT_DIM
from dpr_pg.errors import DimensionError

# The same comments dpr_pg.enable_table() writes: alembic_ops.include_object recognises them.
EMBEDDING_COMMENT = "dpr_pg: DPR passage embedding, written by dpr-pg worker"
ENCODER_COMMENT = "dpr_pg: dpr_pg.encoders row of the encoder pair that made the embedding"
HASH_COMMENT = "dpr_pg: hash of the embedded text, to skip unchanged rows"


class DprSearchable:
    """Mixin for a declarative model whose table was enabled with ``op.enable_dpr``.

    Set ``__dpr_dim__`` when the table is not 768-d. The columns are written by ``dpr-pg worker``
    only; the embedding is deferred so that loading a row does not fetch 3 KB of floats.

    Example:
        >>> class Article(DprSearchable, Base):  # doctest: +SKIP
        ...     __tablename__ = "articles"
        ...     id: Mapped[int] = mapped_column(primary_key=True)
        ...     title: Mapped[str]
        ...     body: Mapped[str]
        >>> session.scalars(select(Article).order_by(dpr_order(Article, q)).limit(5))  # doctest: +SKIP
    """

    __dpr_dim__: ClassVar[int] = DEFAULT_DIM

    @declared_attr
    def embedding(cls) -> Mapped[np.ndarray | None]:  # noqa: N805 - declared_attr takes the class
        return mapped_column(Vector(cls.__dpr_dim__), nullable=True, deferred=True, comment=EMBEDDING_COMMENT)

    @declared_attr
    def dpr_encoder_id(cls) -> Mapped[int | None]:  # noqa: N805
        return mapped_column(sa.Integer, nullable=True, comment=ENCODER_COMMENT)

    @declared_attr
    def dpr_content_hash(cls) -> Mapped[str | None]:  # noqa: N805
        return mapped_column(sa.Text, nullable=True, comment=HASH_COMMENT)


def _query_vector(model: Any, query: Any) -> list[float]:
    vector = np.asarray(query, dtype=np.float32)
    dim = getattr(model, "__dpr_dim__", DEFAULT_DIM)
    if vector.ndim != 1 or vector.shape[0] != dim:
        raise DimensionError(f"expected a {dim}-dimension query vector for {model.__name__}, not shape {vector.shape}")
    if not np.isfinite(vector).all():
        raise DimensionError("the query vector has NaN or infinite values; encode the question again")
    return vector.tolist()


def dpr_score(model: Any, query: Any) -> sa.ColumnElement[float]:
    """The DPR score (inner product) of ``model``'s rows against the question vector ``query``.

    Example:
        >>> select(Article.id, dpr_score(Article, q).label("score"))  # doctest: +SKIP
    """
    return (-model.embedding.max_inner_product(_query_vector(model, query))).label("score")


def dpr_order(model: Any, query: Any) -> sa.ColumnElement[float]:
    """An ORDER BY term, best first, that PostgreSQL answers with the HNSW index (``<#>`` ascending).

    Example:
        >>> select(Article).where(Article.embedding.is_not(None)).order_by(dpr_order(Article, q)).limit(5)  # doctest: +SKIP
    """
    return model.embedding.max_inner_product(_query_vector(model, query))
