"""What one server runs with: database, encoders, binding, limits and batching.

``dpr-pg serve`` builds it from its options and hands it to each uvicorn worker as JSON (workers
are separate processes that import the application afresh).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

DEFAULT_MAX_BODY_BYTES = 1_000_000


@dataclass(frozen=True)
class ServiceSettings:
    """Settings of the HTTP service.

    ``open_without_keys``: whether requests without a key are served while no key is live (true
    on a loopback address, or with ``--insecure-no-auth``); once a key exists, every ``/v1``
    request needs one. ``batch_max`` and ``batch_wait_ms`` bound the question micro-batches.
    ``reader_model``: the extractive reader of ``POST /v1/ask``, loaded at start; None: no reader.

    Example:
        >>> ServiceSettings(host="127.0.0.1").open_without_keys
        True
    """

    database_url: str | None = None
    read_urls: list[str] | None = None  # streaming replicas for searches; None: $DPR_PG_READ_URLS
    question_model: str | None = None
    passage_model: str | None = None
    reader_model: str | None = None
    precision: str | None = None
    runtime: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    insecure_no_auth: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    batch_max: int = 32
    batch_wait_ms: float = 2.0
    max_questions: int = 256  # questions (or vectors, passages) in one call
    max_records: int = 10_000  # records in one upsert

    @property
    def open_without_keys(self) -> bool:
        return self.insecure_no_auth or is_loopback(self.host)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServiceSettings:
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {k: v for k, v in json.loads(text).items() if k in known}
        return cls(**values)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
