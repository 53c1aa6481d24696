"""Evaluation: how well retrieval (and reading) answers a set of questions, and how exact the index is.

- :mod:`~dpr_pg.evaluation.evaluate`: ``evaluate``, retrieval over questions with gold passages or answers.
- :mod:`~dpr_pg.evaluation.qa`: the question files it reads (``QAItem``).
- :mod:`~dpr_pg.evaluation.metrics`: top-k accuracy, MRR, ranks; :mod:`~dpr_pg.evaluation.classification`
  the precision/recall view; :mod:`~dpr_pg.evaluation.answers` DPR's ``has_answer`` matching.
- :mod:`~dpr_pg.evaluation.audit`: ``audit_ann``, the HNSW index's recall against exact search.
"""
