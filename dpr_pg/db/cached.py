"""Catalog facts a process keeps for a few seconds per Engine: the storage, whether the table is
partitioned, the promoted keys, the filtered indexes.

Each is read again once it is ``ttl`` seconds old. One caller reads it again; the callers that come
meanwhile go on with the value it replaces (a moment older), rather than every search in flight
reading it at once when it expires.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.engine import Engine

T = TypeVar("T")


def fresh(cache: weakref.WeakKeyDictionary[Engine, tuple[float, T]], engine: Engine, read: Callable[[], T], *,
          ttl: float) -> T:
    """``engine``'s value in ``cache`` while younger than ``ttl`` seconds, else ``read()`` again.

    >>> fresh(cache, engine, lambda: read_storage(engine), ttl=5.0)  # doctest: +SKIP
    """
    now = time.monotonic()
    cached = cache.get(engine)
    if cached is not None and now - cached[0] < ttl:
        return cached[1]
    if cached is not None:
        cache[engine] = (now, cached[1])
    try:
        value = read()
    except BaseException:
        if cached is not None and cache.get(engine) == (now, cached[1]):
            cache[engine] = cached  # the next caller tries again
        raise
    cache[engine] = (now, value)
    return value


__all__ = ["fresh"]
