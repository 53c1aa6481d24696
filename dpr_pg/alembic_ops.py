"""Alembic operations for an application's own migrations: ``op.enable_dpr`` and ``op.disable_dpr``.

Import this module in the migration script (or in the app's ``env.py``) to register them::

    import dpr_pg.alembic_ops  # noqa: F401  (registers op.enable_dpr / op.disable_dpr)

    def upgrade():
        op.enable_dpr("articles", text_columns=["body"], title_column="title", dim=768)

    def downgrade():
        op.disable_dpr("articles")

Each operation emits one ``SELECT dpr_pg.enable_table(...)`` / ``dpr_pg.disable_table(...)``, so it
works the same online and in offline ``--sql`` mode; the server does the DDL with quoted
identifiers. dpr_pg's own schema must be there first (``dpr-pg init``, or :func:`dpr_pg.init`).
For autogenerate, pass :func:`include_object` to ``context.configure(include_object=...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic.operations import MigrateOperation, Operations
from alembic.util import CommandError

from dpr_pg.config import DEFAULT_DIM
from dpr_pg.errors import SchemaError, SyncError
from dpr_pg.db.models import SCHEMA
from dpr_pg.sync.tables import disable_statement, enable_statement

# Names that dpr_pg.enable_table() gives to what it adds to an app table.
DPR_COLUMN_COMMENT_PREFIX = "dpr_pg:"
DPR_COLUMNS = ("dpr_encoder_id", "dpr_content_hash")
DPR_INDEX_SUFFIX = "_dpr_hnsw"
DPR_FOREIGN_KEY_SUFFIX = "_dpr_encoder_fkey"


@Operations.register_operation("enable_dpr")
class EnableDprOp(MigrateOperation):
    """Add DPR search to an app table: embedding columns, HNSW index, queue triggers."""

    def __init__(
        self,
        table_name: str,
        text_columns: Sequence[str],
        *,
        title_column: str | None = None,
        dim: int = DEFAULT_DIM,
        embedding_column: str = "embedding",
        schema: str | None = None,
    ) -> None:
        if isinstance(text_columns, str) or not text_columns:
            raise SyncError(
                f"op.enable_dpr({table_name!r}): expected text_columns as a non-empty list like ['body'], "
                f"not {text_columns!r}"
            )
        self.table_name = table_name
        self.text_columns = list(text_columns)
        self.title_column = title_column
        self.dim = dim
        self.embedding_column = embedding_column
        self.schema = schema

    @classmethod
    def enable_dpr(
        cls,
        operations: Operations,
        table_name: str,
        text_columns: Sequence[str],
        *,
        title_column: str | None = None,
        dim: int = DEFAULT_DIM,
        embedding_column: str = "embedding",
        schema: str | None = None,
    ) -> Any:
        """Add DPR search to ``table_name``; the rows already there are queued for ``dpr-pg worker``.

        Example:
            >>> op.enable_dpr("articles", text_columns=["body"], title_column="title", dim=768)  # doctest: +SKIP
        """
        return operations.invoke(
            cls(table_name, text_columns, title_column=title_column, dim=dim,
                embedding_column=embedding_column, schema=schema)
        )

    def reverse(self) -> DisableDprOp:
        return DisableDprOp(self.table_name, schema=self.schema, _enabled_with=self)


@Operations.register_operation("disable_dpr")
class DisableDprOp(MigrateOperation):
    """Remove what :class:`EnableDprOp` added to an app table (its embeddings are dropped)."""

    def __init__(self, table_name: str, *, schema: str | None = None, _enabled_with: EnableDprOp | None = None) -> None:
        self.table_name = table_name
        self.schema = schema
        self._enabled_with = _enabled_with

    @classmethod
    def disable_dpr(cls, operations: Operations, table_name: str, *, schema: str | None = None) -> Any:
        """Drop the embedding columns, index and triggers from ``table_name`` and forget its queue.

        Example:
            >>> op.disable_dpr("articles")  # doctest: +SKIP
        """
        return operations.invoke(cls(table_name, schema=schema))

    def reverse(self) -> EnableDprOp:
        if self._enabled_with is None:
            raise SyncError(
                f"op.disable_dpr({self.table_name!r}) cannot be reversed without the settings it was enabled "
                "with; write op.enable_dpr(...) with its text_columns in the downgrade by hand"
            )
        return self._enabled_with


class DprSchemaMissingError(SchemaError, CommandError):
    """dpr_pg's schema is not in the database an app migration runs on.

    Also an Alembic ``CommandError``, so ``alembic upgrade`` prints it as one ``FAILED:`` line.
    """


def _require_dpr_schema(operations: Operations, call: str) -> None:
    """Online, refuse to run before ``dpr-pg init``; offline (``--sql``), the script's reader applies it first."""
    if operations.get_context().as_sql:
        return
    present = operations.get_bind().execute(sa.text(
        "SELECT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'dpr_pg' AND p.proname = 'enable_table')")).scalar()
    if not present:
        raise DprSchemaMissingError(
            f"{call} needs dpr_pg's schema in this database, which has none (or an older one without "
            "dpr_pg.enable_table); run `dpr-pg init` against this database (or dpr_pg.init(engine) before the "
            "app's migrations), then run the migration again"
        )


@Operations.implementation_for(EnableDprOp)
def _enable_dpr(operations: Operations, operation: EnableDprOp) -> None:
    _require_dpr_schema(operations, f"op.enable_dpr({operation.table_name!r})")
    operations.execute(
        enable_statement(
            operation.table_name, text_columns=operation.text_columns, title_column=operation.title_column,
            dim=operation.dim, embedding_column=operation.embedding_column, schema=operation.schema,
        )
    )


@Operations.implementation_for(DisableDprOp)
def _disable_dpr(operations: Operations, operation: DisableDprOp) -> None:
    _require_dpr_schema(operations, f"op.disable_dpr({operation.table_name!r})")
    operations.execute(disable_statement(operation.table_name, schema=operation.schema))


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """An ``include_object`` hook that keeps the app's autogenerate away from dpr_pg's objects.

    It skips dpr_pg's own schema, and on enabled app tables the embedding columns (recognised by
    their ``dpr_pg:`` comment), the ``dpr_*`` columns, the HNSW index and the encoder foreign key.
    Chain it with the app's own hook when there is one.

    Example:
        >>> context.configure(connection=conn, target_metadata=Base.metadata,  # doctest: +SKIP
        ...                   include_object=dpr_pg.alembic_ops.include_object)
    """
    if type_ == "table":
        return getattr(obj, "schema", None) != SCHEMA
    if type_ == "column":
        comment = getattr(obj, "comment", None) or ""
        return not (name in DPR_COLUMNS or comment.startswith(DPR_COLUMN_COMMENT_PREFIX))
    if type_ == "index":
        return not (name or "").endswith(DPR_INDEX_SUFFIX)
    if type_ == "foreign_key_constraint":
        targets = [element.target_fullname for element in getattr(obj, "elements", ())]
        if any(target.startswith(f"{SCHEMA}.") for target in targets):
            return False
        return not (name or "").endswith(DPR_FOREIGN_KEY_SUFFIX)
    return True
