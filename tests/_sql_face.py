"""A SQL search function's rows and the plan it reported, for tests that compare it with the Python face."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


def sql_face(conn: Connection, statement: str, params: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The rows of a SQL search function, and the plan dpr_pg.search reported as a DEBUG message."""
    messages: list[str] = []

    def keep(diagnostic: Any) -> None:
        messages.append(diagnostic.message_primary or "")

    raw = conn.connection.driver_connection
    raw.add_notice_handler(keep)
    try:
        conn.execute(sa.text("SET LOCAL client_min_messages = debug1"))
        found = list(conn.execute(sa.text(statement), params))
    finally:
        raw.remove_notice_handler(keep)
    (plan,) = [json.loads(m.split(" plan: ", 1)[1]) for m in messages if m.startswith("dpr_pg.search")]
    return found, plan
