"""A SQLAlchemy mixin that gives an app's own model the columns ``op.enable_dpr`` adds.

The database side (columns, HNSW index, queue triggers) comes from the app's migration with
``op.enable_dpr``; the mixin only maps those columns so that the app can select, order and join
on them. Rank with pgvector's comparator: ``Article.embedding.max_inner_product(query)`` is the
negative inner product, so ascending order is best first (see :func:`dpr_order`).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import sqlalchemy as sa
from pgvector.sqlalchemy import HALFVEC, Vector
from sqlalchemy.dialects.postgresql import JSONB, REGCLASS
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from dpr_pg.config import DEFAULT_DIM
from dpr_pg.errors import SearchError
from dpr_pg.filters import compile_filter
from dpr_pg.sync.tables import regclass_name
from dpr_pg.validation import check_k, check_query_vector

DPR_COLUMNS = ("embedding", "dpr_encoder_id", "dpr_content_hash")
# The filter language's column fields, and the column types that stand for them (as in sql/search_table.sql).
_FILTER_COLUMNS = {"collection": sa.String, "external_id": sa.String, "title": sa.String,
                   "created_at": (sa.DateTime, sa.Date), "updated_at": (sa.DateTime, sa.Date)}

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
    return check_query_vector(query, getattr(model, "__dpr_dim__", DEFAULT_DIM)).tolist()


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


def filter_target(model: Any) -> SimpleNamespace:
    """What :func:`dpr_pg.filters.compile_filter` filters on for an app model, as ``search_table`` does.

    Metadata keys are the model's own columns (``{"views": {"$gte": 10}}``); the language's column
    fields (title, collection, external_id, created_at, updated_at) are the model's columns of that
    name when their type fits, else NULL.

    Example:
        >>> select(Article).where(compile_filter({"lang": "es"}, filter_target(Article)))  # doctest: +SKIP
    """
    table = model.__table__
    pairs: list[Any] = []
    for column in table.columns:
        if column.name not in DPR_COLUMNS and column.comment != EMBEDDING_COMMENT:
            pairs += [sa.literal(column.name, sa.Text), column]
    # jsonb_build_object takes at most 100 arguments: build it in chunks, as search_table does.
    chunks = [sa.func.jsonb_build_object(*pairs[i:i + 80], type_=JSONB) for i in range(0, len(pairs), 80)]
    document = chunks[0] if chunks else sa.cast(sa.literal("{}"), JSONB)
    for chunk in chunks[1:]:
        document = document.op("||", return_type=JSONB)(chunk)
    target = SimpleNamespace(metadata_=document)
    for name, kind in _FILTER_COLUMNS.items():
        column = table.c.get(name)
        fits = column is not None and isinstance(column.type, kind)
        null_type = sa.Text if kind is sa.String else sa.DateTime(timezone=True)
        setattr(target, name, column if fits else sa.null().cast(null_type))
    return target


def encoder_guard(model: Any, fingerprint: Any) -> sa.ColumnElement[bool]:
    """A WHERE term that makes the statement fail unless ``model``'s embeddings come from ``fingerprint``'s pair.

    It calls ``dpr_pg.check_table_encoder`` (sql/sync.sql) once per execution (a one-time filter),
    which raises "the embeddings of ... were made by ..." on a mismatch; a table with no embedding
    yet passes.

    Example:
        >>> select(Article).where(encoder_guard(Article, pair.fingerprint))  # doctest: +SKIP
    """
    table = model.__table__
    name = sa.cast(sa.literal(regclass_name(table.name, schema=table.schema), sa.Text), REGCLASS)
    return sa.func.dpr_pg.check_table_encoder(name, sa.literal(fingerprint.id, sa.Text), type_=sa.Boolean)


def model_search_statement(
    model: Any, query: Any, *, k: int = 10, filter: Any = None, exact: bool = False, encoder: Any = None,
    storage: Any = None,
) -> sa.Select[Any]:
    """``SELECT model, score`` of the app's own rows, best first: the app adds joins and ``.where()``.

    ``filter`` is the filter language over the model's columns (see :func:`filter_target`).
    ``exact=True`` orders by the exact inner product instead of the HNSW index. With ``encoder``
    (the :class:`~dpr_pg.encoders.pair.EncoderPair` that encodes the questions), ``query`` may be the
    question itself, and the statement refuses to run if the table's embeddings come from another
    pair (see :func:`encoder_guard`), as :func:`dpr_pg.search` refuses for passages. ``storage``
    (:func:`dpr_pg.current_storage`'s, or its name): with ``halfvec`` the ORDER BY is the halfvec
    inner product, which the table's index answers when ``dpr_pg.enable_table`` built it under that
    storage (scores stay the column's inner product).

    Example:
        >>> stmt = model_search_statement(Article, "¿Quién fue Lorca?", encoder=pair, k=5)  # doctest: +SKIP
        >>> session.execute(stmt.join(Article.author).where(Author.name == "Lorca")).all()  # doctest: +SKIP
    """
    check_k(k)
    if isinstance(query, str):
        if encoder is None:
            raise SearchError("a question needs an encoder: pass encoder=EncoderPair.load(...), or a query vector")
        query = encoder.question.encode(query)
    vector = _query_vector(model, query)
    bound = sa.bindparam("query_vector", vector, type_=Vector(len(vector)))
    if exact:
        score = sa.func.inner_product(model.embedding, bound, type_=sa.Float)
        statement = sa.select(model, score.label("score")).order_by(score.desc())
    else:
        distance = model.embedding.max_inner_product(bound)
        order = distance
        if getattr(storage, "kind", storage) == "halfvec":  # the cast is a no-op on a halfvec column
            half = HALFVEC(len(vector))
            order = sa.cast(model.embedding, half).max_inner_product(sa.cast(bound, half))
        statement = sa.select(model, (-distance).label("score")).order_by(order)
    statement = statement.where(model.embedding.is_not(None))
    if encoder is not None:
        statement = statement.where(encoder_guard(model, encoder.fingerprint))
    if filter:
        statement = statement.where(compile_filter(filter, filter_target(model)))
    return statement.limit(k)
