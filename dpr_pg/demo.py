"""``dpr-pg demo``: the whole job on the bundled Spanish sample, end to end.

Schema → encoders → ingest of 47 Spanish passages → a few questions, with and without a filter.
The IIC models come from the Hugging Face Hub (or DPR_PG_QUESTION_MODEL/DPR_PG_PASSAGE_MODEL);
when neither is at hand, tiny random-weight models stand in so the pipeline still runs.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from dpr_pg.errors import EncoderError

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


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers on port 443 within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class DemoAnswer:
    question: str
    filter: dict[str, Any] | None
    hits: list[Any]
    path: str


@dataclass
class DemoResult:
    models: str
    tiny_models: bool
    ingest: Any
    answers: list[DemoAnswer] = field(default_factory=list)


def load_demo_encoders(
    home: Path, *, models_configured: bool, hub_offline: bool, say: Callable[[str], None]
) -> tuple[Any, bool]:
    """The configured/IIC pair, or tiny offline models when the Hub is out of reach."""
    from dpr_pg.encoders import EncoderPair, make_tiny_models

    if models_configured or (not hub_offline and hub_reachable()):
        return EncoderPair.load(), False
    say(
        "The Hugging Face Hub is unreachable and DPR_PG_QUESTION_MODEL/DPR_PG_PASSAGE_MODEL are not set, "
        "so the demo runs on tiny random-weight models: the pipeline is real, the rankings are not. "
        "Point those variables at local copies of the IIC models for real answers."
    )
    tiny = home / "tiny-models"
    question_dir, passage_dir = tiny / "question", tiny / "passage"
    if not (question_dir / "config.json").exists() or not (passage_dir / "config.json").exists():
        make_tiny_models(tiny, dim=768)  # once: a new pair would re-encode the demo collection
    return EncoderPair.load(str(question_dir), str(passage_dir)), True


def run_demo(
    engine: Engine,
    *,
    home: Path,
    models_configured: bool,
    hub_offline: bool = False,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Init the schema, ingest the sample corpus into collection ``demo``, answer sample questions.

    >>> run_demo(engine, home=Path("~/.local/share/dpr_pg"), models_configured=False)  # doctest: +SKIP
    """
    from dpr_pg.ingest import ingest
    from dpr_pg.schema import init
    from dpr_pg.search import search

    init(engine, dim=768)
    say("Schema ready (dpr_pg at head, vector(768)).")
    try:
        pair, tiny = load_demo_encoders(
            home, models_configured=models_configured, hub_offline=hub_offline, say=say
        )
    except EncoderError as e:
        raise EncoderError(f"{e}\nThe schema step is done; the demo stops here.") from e
    say(f"Encoders: {pair.question.name} / {pair.passage.name}")
    say(f"Ingesting {sample_corpus().name} into collection {COLLECTION!r}...")
    # prune: the demo collection mirrors the sample, even after the demo's encoder pair changed.
    report = ingest(engine, pair, sample_corpus(), collection=COLLECTION, prune=True, progress=False)
    say(f"Ingested: {report.inserted} inserted, {report.updated} updated, "
        f"{report.unchanged} unchanged.")
    result = DemoResult(models=f"{pair.question.name} / {pair.passage.name}", tiny_models=tiny, ingest=report)
    for question, filter_ in SAMPLE_QUESTIONS:
        hits = search(engine, question, encoder=pair, k=3, filter=filter_, collection=COLLECTION)
        result.answers.append(DemoAnswer(question, filter_, list(hits), hits.plan.path))
    return result
