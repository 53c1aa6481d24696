"""dpr_pg: Dense Passage Retrieval inside PostgreSQL.

>>> import dpr_pg
>>> engine = dpr_pg.create_engine()          # doctest: +SKIP
>>> dpr_pg.init(engine, dim=768)            # doctest: +SKIP

The public names load on first use (PEP 562), so ``import dpr_pg`` and every ``dpr-pg`` command
import only what they touch: SQLAlchemy, Alembic, torch and transformers stay out of a command
that does not need them.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

# Public name -> the module that defines it.
_EXPORTS = {
    "create_engine": "dpr_pg.db.engine",
    "DoctorReport": "dpr_pg.db.doctor",
    "doctor": "dpr_pg.db.doctor",
    "ServerStatus": "dpr_pg.db.embedded",
    "server_status": "dpr_pg.db.embedded",
    "start_server": "dpr_pg.db.embedded",
    "stop_server": "dpr_pg.db.embedded",
    "EncodeResult": "dpr_pg.encoders.batching",
    "EncoderFingerprint": "dpr_pg.encoders.fingerprint",
    "EncoderPair": "dpr_pg.encoders.pair",
    "PassageEncoder": "dpr_pg.encoders.pair",
    "QuestionEncoder": "dpr_pg.encoders.pair",
    "check_encoder": "dpr_pg.encoders.fingerprint",
    "check_table_encoder": "dpr_pg.encoders.fingerprint",
    "fingerprint_of": "dpr_pg.encoders.pair",
    "load_question_side": "dpr_pg.encoders.question_side",
    "QuestionSide": "dpr_pg.encoders.question_side",
    "make_tiny_models": "dpr_pg.encoders.tiny",
    "make_trained_models": "dpr_pg.encoders.trained",
    "sample_corpus": "dpr_pg.demo",
    "sample_questions": "dpr_pg.demo",
    "register_encoder": "dpr_pg.encoders.fingerprint",
    "ConfigError": "dpr_pg.errors",
    "DatabaseError": "dpr_pg.errors",
    "DimensionError": "dpr_pg.errors",
    "DprPgError": "dpr_pg.errors",
    "EncoderError": "dpr_pg.errors",
    "EncoderMismatchError": "dpr_pg.errors",
    "EvaluationError": "dpr_pg.errors",
    "IndexBuildError": "dpr_pg.errors",
    "FilterError": "dpr_pg.errors",
    "ReaderError": "dpr_pg.errors",
    "IngestError": "dpr_pg.errors",
    "PrivilegeError": "dpr_pg.errors",
    "SchemaError": "dpr_pg.errors",
    "SearchError": "dpr_pg.errors",
    "SyncError": "dpr_pg.errors",
    "compile_filter": "dpr_pg.filters",
    "FieldMapping": "dpr_pg.ingest",
    "IngestReport": "dpr_pg.ingest",
    "RayEncoding": "dpr_pg.ingest",
    "RecordRejectedError": "dpr_pg.ingest",
    "ingest": "dpr_pg.ingest",
    "ingest_records": "dpr_pg.ingest",
    "delete_passages": "dpr_pg.ingest.delete",
    "list_collections": "dpr_pg.db.collections",
    "HnswParameters": "dpr_pg.db.index",
    "IndexBuild": "dpr_pg.db.index",
    "build_index": "dpr_pg.db.index",
    "Encoder": "dpr_pg.db.models",
    "Passage": "dpr_pg.db.models",
    "InitResult": "dpr_pg.db.schema",
    "downgrade": "dpr_pg.db.schema",
    "init": "dpr_pg.db.schema",
    "init_sql": "dpr_pg.db.schema",
    "upgrade": "dpr_pg.db.schema",
    "AuditReport": "dpr_pg.evaluation.audit",
    "audit_ann": "dpr_pg.evaluation.audit",
    "has_answer": "dpr_pg.evaluation.answers",
    "EvaluationReport": "dpr_pg.evaluation.evaluate",
    "evaluate": "dpr_pg.evaluation.evaluate",
    "QAItem": "dpr_pg.evaluation.qa",
    "Answer": "dpr_pg.reader",
    "AskResult": "dpr_pg.reader",
    "Reader": "dpr_pg.reader",
    "ask": "dpr_pg.reader",
    "make_tiny_reader": "dpr_pg.reader",
    "Hit": "dpr_pg.search.api",
    "Hits": "dpr_pg.search.api",
    "SearchPlan": "dpr_pg.search.planner",
    "ann_settings": "dpr_pg.search.api",
    "search": "dpr_pg.search.api",
    "search_many": "dpr_pg.search.api",
    "search_statement": "dpr_pg.search.api",
    "STORAGES": "dpr_pg.db.storage",
    "Storage": "dpr_pg.db.storage",
    "StorageChange": "dpr_pg.db.column",
    "current_storage": "dpr_pg.db.storage",
    "set_storage": "dpr_pg.db.column",
    "drop_collection": "dpr_pg.db.partition_ops",
    "partition_passages": "dpr_pg.db.partition_ops",
    "PromotedColumn": "dpr_pg.db.promoted",
    "drop_promoted": "dpr_pg.db.promoted",
    "promote_key": "dpr_pg.db.promoted",
    "promoted_columns": "dpr_pg.db.promoted",
    "FilteredIndex": "dpr_pg.db.filtered",
    "FilteredIndexBuild": "dpr_pg.db.filtered",
    "build_filtered_index": "dpr_pg.db.filtered",
    "drop_filtered_index": "dpr_pg.db.filtered",
    "filtered_indexes": "dpr_pg.db.filtered",
    "NoHits": "dpr_pg.search.no_hits",
    "explain_no_hits": "dpr_pg.search.no_hits",
    "DprSearchable": "dpr_pg.search.orm",
    "encoder_guard": "dpr_pg.search.orm",
    "model_search_statement": "dpr_pg.search.orm",
    "TableStatus": "dpr_pg.sync.queue",
    "WorkerReport": "dpr_pg.sync.batch",
    "disable_table": "dpr_pg.sync.tables",
    "discard_items": "dpr_pg.sync.queue",
    "retry_items": "dpr_pg.sync.queue",
    "enable_table": "dpr_pg.sync.tables",
    "run_worker": "dpr_pg.sync.worker",
    "sync_status": "dpr_pg.sync.queue",
    "CollectionGrant": "dpr_pg.db.tenancy",
    "Tenancy": "dpr_pg.db.tenancy",
    "grant": "dpr_pg.db.tenancy",
    "revoke": "dpr_pg.db.tenancy",
    "set_tenancy": "dpr_pg.db.tenancy",
    "tenancy_status": "dpr_pg.db.tenancy",
}

if TYPE_CHECKING:  # the same names, for type checkers and IDEs
    from dpr_pg.db.engine import create_engine
    from dpr_pg.db.doctor import DoctorReport, doctor
    from dpr_pg.db.embedded import ServerStatus, server_status, start_server, stop_server
    from dpr_pg.encoders.batching import EncodeResult
    from dpr_pg.encoders.fingerprint import EncoderFingerprint, check_encoder, check_table_encoder, register_encoder
    from dpr_pg.encoders.pair import EncoderPair, PassageEncoder, QuestionEncoder, fingerprint_of
    from dpr_pg.encoders.question_side import QuestionSide, load_question_side
    from dpr_pg.encoders.tiny import make_tiny_models
    from dpr_pg.encoders.trained import make_trained_models
    from dpr_pg.demo import sample_corpus, sample_questions
    from dpr_pg.errors import (
        ConfigError,
        DatabaseError,
        DimensionError,
        DprPgError,
        EncoderError,
        EncoderMismatchError,
        EvaluationError,
        FilterError,
        IndexBuildError,
        ReaderError,
        IngestError,
        PrivilegeError,
        SchemaError,
        SearchError,
        SyncError,
    )
    from dpr_pg.filters import compile_filter
    from dpr_pg.db.collections import list_collections
    from dpr_pg.ingest import FieldMapping, IngestReport, RayEncoding, RecordRejectedError, ingest, ingest_records
    from dpr_pg.ingest.delete import delete_passages
    from dpr_pg.db.index import HnswParameters, IndexBuild, build_index
    from dpr_pg.db.column import StorageChange, set_storage
    from dpr_pg.db.models import Encoder, Passage
    from dpr_pg.db.schema import InitResult, downgrade, init, init_sql, upgrade
    from dpr_pg.evaluation.audit import AuditReport, audit_ann
    from dpr_pg.evaluation.answers import has_answer
    from dpr_pg.evaluation.evaluate import EvaluationReport, evaluate
    from dpr_pg.evaluation.qa import QAItem
    from dpr_pg.reader import Answer, AskResult, Reader, ask, make_tiny_reader
    from dpr_pg.search.api import Hit, Hits, ann_settings, search, search_many, search_statement
    from dpr_pg.search.planner import SearchPlan
    from dpr_pg.db.storage import STORAGES, Storage, current_storage
    from dpr_pg.db.partition_ops import drop_collection, partition_passages
    from dpr_pg.db.promoted import PromotedColumn, drop_promoted, promote_key, promoted_columns
    from dpr_pg.db.filtered import (FilteredIndex, FilteredIndexBuild, build_filtered_index, drop_filtered_index,
                                    filtered_indexes)
    from dpr_pg.search.no_hits import NoHits, explain_no_hits
    from dpr_pg.search.orm import DprSearchable, encoder_guard, model_search_statement
    from dpr_pg.sync.batch import WorkerReport
    from dpr_pg.sync.queue import TableStatus, discard_items, retry_items, sync_status
    from dpr_pg.sync.tables import disable_table, enable_table
    from dpr_pg.sync.worker import run_worker
    from dpr_pg.db.tenancy import CollectionGrant, Tenancy, grant, revoke, set_tenancy, tenancy_status

__all__ = [
    "EncodeResult",
    "EncoderFingerprint",
    "EncoderPair",
    "PassageEncoder",
    "QuestionEncoder",
    "check_encoder",
    "check_table_encoder",
    "fingerprint_of",
    "load_question_side",
    "QuestionSide",
    "make_tiny_models",
    "make_trained_models",
    "sample_corpus",
    "sample_questions",
    "register_encoder",
    "ConfigError",
    "DatabaseError",
    "DimensionError",
    "DoctorReport",
    "DprPgError",
    "Encoder",
    "EncoderError",
    "EncoderMismatchError",
    "FilterError",
    "FieldMapping",
    "IngestError",
    "IngestReport",
    "RayEncoding",
    "RecordRejectedError",
    "ingest",
    "HnswParameters",
    "IndexBuild",
    "build_index",
    "current_storage",
    "set_storage",
    "STORAGES",
    "Storage",
    "StorageChange",
    "drop_collection",
    "partition_passages",
    "PromotedColumn",
    "drop_promoted",
    "promote_key",
    "promoted_columns",
    "FilteredIndex",
    "FilteredIndexBuild",
    "build_filtered_index",
    "drop_filtered_index",
    "filtered_indexes",
    "InitResult",
    "Passage",
    "SchemaError",
    "create_engine",
    "doctor",
    "ServerStatus",
    "server_status",
    "start_server",
    "stop_server",
    "downgrade",
    "init",
    "init_sql",
    "upgrade",
    "Hit",
    "Hits",
    "SearchError",
    "SearchPlan",
    "ann_settings",
    "compile_filter",
    "search",
    "search_many",
    "search_statement",
    "AuditReport",
    "EvaluationError",
    "IndexBuildError",
    "EvaluationReport",
    "QAItem",
    "Answer",
    "AskResult",
    "Reader",
    "ReaderError",
    "ask",
    "make_tiny_reader",
    "audit_ann",
    "evaluate",
    "has_answer",
    "NoHits",
    "explain_no_hits",
    "DprSearchable",
    "SyncError",
    "TableStatus",
    "WorkerReport",
    "disable_table",
    "discard_items",
    "encoder_guard",
    "retry_items",
    "enable_table",
    "model_search_statement",
    "run_worker",
    "sync_status",
    "CollectionGrant",
    "PrivilegeError",
    "Tenancy",
    "grant",
    "revoke",
    "set_tenancy",
    "tenancy_status",
    "ingest_records",
    "delete_passages",
    "list_collections",
]


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use; else a submodule (``dpr_pg.config``, ``dpr_pg.aio``)."""
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps a public function from being shadowed by its own submodule.

    ``dpr_pg.search`` and ``dpr_pg.ingest`` are functions and packages of the same name. Importing
    the package makes Python set the attribute to the package; here it becomes the function (which
    each package imports), as when every name was imported eagerly.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if (isinstance(value, types.ModuleType) and _EXPORTS.get(name, "").startswith(value.__name__)
                and value.__name__ == f"{__name__}.{name}"):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
