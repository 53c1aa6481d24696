"""One error hierarchy: catch :class:`DprPgError` to catch everything dpr_pg raises.

Every message says what was expected, what came, and what to do next.
"""

from __future__ import annotations


class DprPgError(Exception):
    """Base class of every error raised by dpr_pg."""


class ConfigError(DprPgError, ValueError):
    """A setting (URL, model name, option, dimension) is missing or malformed.

    Also a ValueError, so code written for the ValueErrors some checks raised before still catches it.
    """


class DatabaseError(DprPgError):
    """The database cannot be reached, or lacks something dpr_pg needs."""


class SchemaError(DatabaseError):
    """The dpr_pg schema is missing, outdated, or disagrees with the request."""


class PrivilegeError(DatabaseError):
    """The connected role lacks a privilege the request needs (see ``dpr-pg grant``)."""


class DimensionError(DprPgError):
    """A vector has the wrong number of dimensions."""


class EncoderError(DprPgError):
    """A model cannot be loaded, or vectors come from another encoder pair.

    ``reason`` is the short cause (for example "the Hugging Face Hub ... cannot be reached"),
    without the advice the message adds; it is the whole message when none was given.
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class EncoderMismatchError(EncoderError):
    """Stored vectors were made by a different encoder pair than the one asked to query them.

    ``stored`` and ``requested`` are the two pairs' fingerprints (``EncoderFingerprint``) when known.
    """

    def __init__(self, message: str, *, stored: object = None, requested: object = None) -> None:
        super().__init__(message)
        self.stored = stored
        self.requested = requested


class FilterError(DprPgError):
    """A metadata filter does not follow the filter language."""


class SearchError(DprPgError):
    """A search request is malformed: a missing or non-finite query vector, a bad k or mode."""


class InvalidKError(SearchError):
    """k (hits asked for) is not an integer between 1 and the limit (``dpr_pg.tuning.MAX_K``)."""


class QueryVectorError(SearchError):
    """A query vector is missing, not numbers, or holds NaN, infinity or values beyond float32.

    A vector of the wrong length raises :class:`DimensionError` instead.
    """


class IngestError(DprPgError):
    """An input file or record cannot be ingested."""


class ReaderError(DprPgError):
    """The extractive reader cannot be loaded, or a question cannot be read (empty, or too long for the model)."""


class EvaluationError(DprPgError, ValueError):
    """A question/answer file, an evaluation request or a metric's input is malformed.

    Also a ValueError, so code written for the ValueErrors the metrics raised before still catches it.
    """


class SyncError(DprPgError):
    """An app table cannot be enabled, disabled or synced for DPR search."""


class IndexBuildError(DatabaseError):
    """An HNSW index build failed or could not start (another build held the index lock too long)."""


# SQLSTATEs of a missing object: undefined table, schema, function, column, object.
_MISSING_OBJECT = ("42P01", "3F000", "42883", "42703", "42704")


def explain_database_error(error: BaseException) -> DprPgError | None:
    """A :class:`SchemaError` for a database error that means dpr_pg's schema is missing or outdated.

    Every face calls it at its edge (the CLI, an HTTP service), so that a command run before
    ``dpr-pg init`` says what to do instead of showing the server's message. Other errors give None.

    >>> class Undefined(Exception):
    ...     sqlstate = "3F000"
    >>> str(explain_database_error(Undefined('schema "dpr_pg" does not exist')))[:60]
    'this database has no dpr_pg schema, or an older one (schema "'
    """
    orig = getattr(error, "orig", None) or error
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    if getattr(orig, "sqlstate", None) in _MISSING_OBJECT and "dpr_pg" in text:
        return SchemaError(f"this database has no dpr_pg schema, or an older one ({text}); "
                           "run dpr-pg init to create or upgrade it")
    return None
