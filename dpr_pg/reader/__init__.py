"""The extractive reader: the answer span inside retrieved passages, as DPR's reader and Haystack's do.

Modules: ``loading`` (the model and its fast tokenizer, from the Hub or a folder), ``tiny`` (a
tiny random reader for tests), ``windows`` (question + passage token windows with stride),
``spans`` (span and null scores from a window's logits), ``model`` (:class:`Reader`: batched
inference), ``ask`` (:func:`ask`: retrieve, then read).
"""

from dpr_pg.reader.ask import Answer, AskResult, ask
from dpr_pg.reader.model import Reader, Reading, Span
from dpr_pg.reader.tiny import make_tiny_reader

__all__ = ["Answer", "AskResult", "Reader", "Reading", "Span", "ask", "make_tiny_reader"]
