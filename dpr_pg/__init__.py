"""dpr_pg: Dense Passage Retrieval inside PostgreSQL.

>>> import dpr_pg
>>> engine = dpr_pg.create_engine()          # doctest: +SKIP
>>> dpr_pg.init(engine, dim=768)            # doctest: +SKIP
"""

from dpr_pg.database import create_engine
from dpr_pg.doctor import DoctorReport, doctor
from dpr_pg.embedded import ServerStatus, server_status, start_server, stop_server
from dpr_pg.encoders import (
    EncodeResult,
    EncoderFingerprint,
    EncoderPair,
    PassageEncoder,
    QuestionEncoder,
    check_encoder,
    check_table_encoder,
    fingerprint_of,
    make_tiny_models,
    make_trained_models,
    register_encoder,
)
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
    ReaderError,
    IndexBuildError,
    IngestError,
    PrivilegeError,
    SchemaError,
    SearchError,
    SyncError,
)
from dpr_pg.filters import compile_filter
from dpr_pg.ingest import FieldMapping, IngestReport, RayEncoding, RecordRejectedError, ingest
from dpr_pg.ingest.index import HnswParameters, IndexBuild, build_index
from dpr_pg.models import Encoder, Passage
from dpr_pg.schema import InitResult, downgrade, init, init_sql, upgrade
from dpr_pg.audit import AuditReport, audit_ann
from dpr_pg.answers import has_answer
from dpr_pg.evaluate import EvaluationReport, evaluate
from dpr_pg.qa import QAItem
from dpr_pg.reader import Answer, AskResult, Reader, ask, make_tiny_reader
from dpr_pg.search import Hit, Hits, SearchPlan, ann_settings, search, search_many, search_statement
from dpr_pg.storage import STORAGES, Storage, StorageChange, current_storage, set_storage
from dpr_pg.mixin import DprSearchable, encoder_guard, model_search_statement
from dpr_pg.sync import (
    TableStatus,
    WorkerReport,
    disable_table,
    discard_items,
    enable_table,
    retry_items,
    run_worker,
    sync_status,
)
from dpr_pg.tenancy import CollectionGrant, Tenancy, grant, revoke, set_tenancy, tenancy_status

__all__ = [
    "EncodeResult",
    "EncoderFingerprint",
    "EncoderPair",
    "PassageEncoder",
    "QuestionEncoder",
    "check_encoder",
    "check_table_encoder",
    "fingerprint_of",
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
    "IndexBuildError",
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
    "DprSearchable",
    "SyncError",
    "TableStatus",
    "WorkerReport",
    "disable_table",
    "discard_items",
    "enable_table",
    "encoder_guard",
    "model_search_statement",
    "retry_items",
    "run_worker",
    "sync_status",
    "CollectionGrant",
    "PrivilegeError",
    "Tenancy",
    "grant",
    "revoke",
    "set_tenancy",
    "tenancy_status",
]
