"""SQuAD-format JSON (SQuAD, SQuAD-ES, SQAC): contexts become passages, questions are kept for eval.

The structure is checked whole before anything is written (a JSON document cannot be streamed
without a parser that json lacks; SQuAD files are tens of MB). A wrong structure raises
:class:`IngestError` naming the JSON path, e.g. ``data[3].paragraphs[0].context``.

Passages: each distinct (title, context) pair once, in order of first appearance, with the stable
id ``sq-`` + the first 16 hex digits of sha256(title NUL context). Contexts are not chunked:
they are the gold passages of their questions.

Questions file (JSON Lines, one object per answerable question), read by ``dpr-pg eval``::

    {"id": "<qa id>", "question": "...", "gold_ids": ["sq-..."], "answers": ["..."], "title": "..."}

Unanswerable questions (SQuAD 2.0 ``is_impossible`` or no answers) are not written.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpr_pg.errors import IngestError
from dpr_pg.ingest.readers import require_file
from dpr_pg.ingest.records import SourceRecord


@dataclass
class SquadCorpus:
    """The passages (as records with id, title, text) and the questions of one SQuAD file."""

    records: list[SourceRecord] = field(default_factory=list)
    questions: list[dict[str, Any]] = field(default_factory=list)
    skipped_questions: int = 0


def passage_id(title: str, context: str) -> str:
    """Stable id of a SQuAD context.

    Example:
        >>> passage_id("Sevilla", "Sevilla es...")
        'sq-d6a709e5ab4f42b4'
    """
    digest = hashlib.sha256(f"{title}\x00{context}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"sq-{digest[:16]}"


def _expect(value: Any, kind: type | tuple[type, ...], path: str, name: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        found = "missing" if value is None else f"a {type(value).__name__}"
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise IngestError(f"{name}: malformed SQuAD JSON at {path}: expected {_article(expected)}, found {found}; "
                          "expected the SQuAD shape data[].title, data[].paragraphs[].context, paragraphs[].qas[]")
    return value


def _article(noun: str) -> str:
    names = {"str": "a string", "list": "a list", "dict": "an object", "int": "an integer"}
    return " or ".join(names.get(part, part) for part in noun.split(" or "))


def read_squad(path: str | Path) -> SquadCorpus:
    """Parse and check a SQuAD-format file; raise :class:`IngestError` with the JSON path if malformed.

    Example:
        >>> corpus = read_squad("squad_es_dev.json")  # doctest: +SKIP
        >>> len(corpus.records), len(corpus.questions)  # doctest: +SKIP
        (2067, 10570)
    """
    path = require_file(path)
    name = path.name
    try:
        with open(path, "rb") as handle:
            document = json.load(handle)
    except UnicodeDecodeError as e:
        raise IngestError(f"{name} is not valid UTF-8 (at byte {e.start}); re-encode the file as UTF-8") from e
    except ValueError as e:
        raise IngestError(f"{name} is not valid JSON: {e}; expected one SQuAD-format JSON document") from e
    _expect(document, dict, "$", name)
    articles = _expect(document.get("data"), list, "data", name)
    corpus = SquadCorpus()
    seen: dict[str, str] = {}
    for i, article in enumerate(articles):
        _expect(article, dict, f"data[{i}]", name)
        title = article.get("title", "")
        _expect(title if title is not None else "", str, f"data[{i}].title", name)
        paragraphs = _expect(article.get("paragraphs"), list, f"data[{i}].paragraphs", name)
        for j, paragraph in enumerate(paragraphs):
            where = f"data[{i}].paragraphs[{j}]"
            _expect(paragraph, dict, where, name)
            context = _expect(paragraph.get("context"), str, f"{where}.context", name)
            qas = paragraph.get("qas", [])
            _expect(qas, list, f"{where}.qas", name)
            pid = passage_id(title or "", context)
            if pid not in seen:
                seen[pid] = where
                corpus.records.append(
                    SourceRecord(len(corpus.records) + 1, f"{name} {where}",
                                 {"id": pid, "title": title or "", "text": context}))
            for k, qa in enumerate(qas):
                _read_question(qa, f"{where}.qas[{k}]", name, pid, title or "", corpus)
    return corpus


def _read_question(qa: Any, where: str, name: str, pid: str, title: str, corpus: SquadCorpus) -> None:
    _expect(qa, dict, where, name)
    question = _expect(qa.get("question"), str, f"{where}.question", name)
    qid = _expect(qa.get("id", where), (str, int), f"{where}.id", name)
    answers = _expect(qa.get("answers", []), list, f"{where}.answers", name)
    texts = []
    for a, answer in enumerate(answers):
        _expect(answer, dict, f"{where}.answers[{a}]", name)
        texts.append(_expect(answer.get("text"), str, f"{where}.answers[{a}].text", name))
    if qa.get("is_impossible") or not texts:
        corpus.skipped_questions += 1
        return
    corpus.questions.append({"id": str(qid), "question": question, "gold_ids": [pid],
                             "answers": list(dict.fromkeys(texts)), "title": title})


def write_questions(questions: list[dict[str, Any]], target: str | Path) -> Path:
    """Write the questions as JSON Lines to ``target``, atomically (a temp file, then rename).

    Example:
        >>> write_questions([{"id": "q1", "question": "¿?", "gold_ids": ["sq-1"], "answers": ["a"]}], "q.jsonl")  # doctest: +SKIP
    """
    target = Path(target)
    partial = target.with_name(f".{target.name}.partial")
    with open(partial, "w", encoding="utf-8", errors="surrogatepass") as handle:
        for question in questions:
            handle.write(json.dumps(question, ensure_ascii=False) + "\n")
    os.replace(partial, target)
    return target
