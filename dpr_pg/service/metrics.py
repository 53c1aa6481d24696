"""Prometheus metrics of one server process, on a registry of its own (``GET /metrics``).

Requests by route and status, request latency, encoder batch sizes and time, database time, the
question cache, and the requests in progress. With ``--workers N`` each worker process keeps its
own figures; a scrape sees the worker that answers it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """The metrics one application instance updates.

    Example:
        >>> metrics = ServiceMetrics()
        >>> metrics.encoder_batch(8, 0.12)
        >>> b"dpr_pg_encoder_batch_size_count 1.0" in metrics.exposition()
        True
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("dpr_pg_http_requests", "HTTP requests answered, by route, method and status.",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("dpr_pg_http_request_duration_seconds", "Time to answer a request, by route.",
                                 ["route", "method"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.in_progress = Gauge("dpr_pg_http_requests_in_progress", "Requests being answered now (not /metrics).",
                                 registry=self.registry)
        self.batch_size = Histogram("dpr_pg_encoder_batch_size", "Distinct questions per question-encoder call.",
                                    buckets=_BATCH_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("dpr_pg_encoder_batch_seconds", "Time of one question-encoder call.",
                                       buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.database_seconds = Histogram("dpr_pg_database_seconds", "Time spent in the database, by operation.",
                                          ["operation"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.cache_hits = Gauge("dpr_pg_question_cache_hits", "Questions answered from the question cache.",
                                registry=self.registry)
        self.cache_misses = Gauge("dpr_pg_question_cache_misses", "Questions that had to be encoded.",
                                  registry=self.registry)
        self.cache_size = Gauge("dpr_pg_question_cache_size", "Questions held in the question cache.",
                                registry=self.registry)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def encoder_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    @contextmanager
    def database(self, operation: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.database_seconds.labels(operation).observe(time.perf_counter() - started)

    def exposition(self, cache_info: Any = None) -> bytes:
        """The text format Prometheus scrapes; ``cache_info`` is the question encoder's."""
        if cache_info is not None:
            self.cache_hits.set(cache_info.hits)
            self.cache_misses.set(cache_info.misses)
            self.cache_size.set(cache_info.currsize)
        return generate_latest(self.registry)
