"""Question files for evaluation: SQuAD JSON, or JSONL of questions with gold ids and/or answers.

JSONL, one question per line::

    {"question": "¿Cuál es la capital de España?", "gold_ids": ["madrid"], "answers": ["Madrid"]}

``gold_ids`` (a list, or one string) names the passages' external ids; ``answers`` (strings, or
SQuAD-style ``{"text": ...}`` objects) is used when there are no gold ids (DPR's has_answer).
Each line needs a question and at least one of the two. An optional ``id`` names the question.
Blank lines are skipped.

SQuAD JSON (v1.1 or v2.0: ``data[].paragraphs[].qas[]``): each answerable question with its
answers. Unanswerable v2.0 questions (``is_impossible``) are skipped. ``gold_id`` maps an article
title, paragraph index and context to the external id that ingest gave that paragraph; without it
only the answers are kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpr_pg.errors import EvaluationError

GoldIdFunction = Callable[[str, int, str], str]


@dataclass(frozen=True)
class QAItem:
    """One evaluation question: its text, gold passage ids and/or answer strings."""

    question: str
    gold_ids: tuple[str, ...] = ()
    answers: tuple[str, ...] = ()
    id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise EvaluationError(f"expected a non-empty question string, not {self.question!r}")
        if not self.gold_ids and not self.answers:
            raise EvaluationError(
                f"question {self.question[:60]!r} has neither gold ids nor answers; give gold_ids or answers"
            )


def _strings(value: Any, where: str, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise EvaluationError(f"{where}: expected {field} to be a list of strings, not {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            item = item["text"]
        if not isinstance(item, str):
            raise EvaluationError(f"{where}: expected {field}[{i}] to be a string, not {item!r}")
        out.append(item)
    return tuple(dict.fromkeys(out))


def qa_from_record(record: Any, *, where: str = "record") -> QAItem:
    """A :class:`QAItem` from one JSON object with ``question`` and ``gold_ids`` and/or ``answers``.

    >>> qa_from_record({"question": "¿Quién pintó el Guernica?", "answers": ["Picasso"]}).answers
    ('Picasso',)
    """
    if not isinstance(record, dict):
        raise EvaluationError(f"{where}: expected a JSON object, not {type(record).__name__}")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise EvaluationError(f"{where}: expected a non-empty string in 'question', not {question!r}")
    gold_ids = _strings(record.get("gold_ids"), where, "gold_ids")
    answers = _strings(record.get("answers"), where, "answers")
    if not gold_ids and not answers:
        raise EvaluationError(f"{where}: expected 'gold_ids' or 'answers' (or both); the question has neither")
    qid = record.get("id")
    return QAItem(question=question, gold_ids=gold_ids, answers=answers, id=None if qid is None else str(qid))


def read_jsonl(path: str | Path) -> list[QAItem]:
    """Questions from a JSONL file; a malformed line raises an error naming its line number.

    >>> read_jsonl("questions.jsonl")  # doctest: +SKIP
    [QAItem(question='¿Cuál es la capital de España?', gold_ids=('madrid',), answers=('Madrid',), id=None)]
    """
    items = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvaluationError(f"{where}: expected one JSON object per line, not valid JSON ({e.msg})") from e
            items.append(qa_from_record(record, where=where))
    return items


def _get(node: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(node, dict) or not isinstance(node.get(key), kind):
        raise EvaluationError(f"{where}.{key}: expected a {kind.__name__} in this SQuAD file; fix the file")
    return node[key]


def squad_questions(document: Any, *, gold_id: GoldIdFunction | None = None, source: str = "squad") -> list[QAItem]:
    """The answerable questions of a parsed SQuAD document (``{"data": [...]}``).

    >>> doc = {"data": [{"title": "T", "paragraphs": [{"context": "Lima, Perú.",
    ...        "qas": [{"id": "q1", "question": "¿Dónde?", "answers": [{"text": "Perú"}]}]}]}]}
    >>> squad_questions(doc)[0].answers
    ('Perú',)
    """
    items = []
    for a, article in enumerate(_get(document, "data", list, source)):
        article_where = f"{source}: data[{a}]"
        title = article.get("title", "") if isinstance(article, dict) else ""
        for p, paragraph in enumerate(_get(article, "paragraphs", list, article_where)):
            paragraph_where = f"{article_where}.paragraphs[{p}]"
            context = _get(paragraph, "context", str, paragraph_where)
            for q, qa in enumerate(_get(paragraph, "qas", list, paragraph_where)):
                where = f"{paragraph_where}.qas[{q}]"
                question = _get(qa, "question", str, where)
                if qa.get("is_impossible"):
                    continue
                answers = _strings(_get(qa, "answers", list, where), where, "answers")
                gold = (gold_id(str(title), p, context),) if gold_id else ()
                if not answers and not gold:
                    continue  # nothing to judge a hit by
                qid = qa.get("id")
                items.append(QAItem(question, gold, answers, None if qid is None else str(qid)))
    return items


def read_squad(path: str | Path, *, gold_id: GoldIdFunction | None = None) -> list[QAItem]:
    """Questions from a SQuAD JSON file; malformed structure raises an error with its JSON path."""
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except json.JSONDecodeError as e:
        raise EvaluationError(f"{path}: expected SQuAD JSON, not valid JSON (line {e.lineno}: {e.msg})") from e
    return squad_questions(document, gold_id=gold_id, source=str(path))


def read_questions(path: str | Path, *, gold_id: GoldIdFunction | None = None) -> list[QAItem]:
    """Questions from ``path``: SQuAD JSON when it is one JSON document with ``data``, else JSONL.

    >>> read_questions("dev.json")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"expected a question file (SQuAD JSON or JSONL), but {path} does not exist")
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if head.startswith("{") and path.suffix.lower() != ".jsonl":
        try:
            with open(path, encoding="utf-8") as f:
                document = json.load(f)
        except json.JSONDecodeError:
            document = None  # several objects: JSONL with a .json name
        if isinstance(document, dict) and "data" in document:
            return squad_questions(document, gold_id=gold_id, source=str(path))
    items = read_jsonl(path)
    if not items:
        raise EvaluationError(f"{path} holds no questions; expected SQuAD JSON or JSONL with one question per line")
    return items


def as_items(questions: Iterable[QAItem | dict[str, Any]]) -> list[QAItem]:
    """Accept QAItem objects or plain dicts in the JSONL shape."""
    return [q if isinstance(q, QAItem) else qa_from_record(q, where=f"questions[{i}]") for i, q in enumerate(questions)]
