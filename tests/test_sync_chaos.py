"""Chaos: random app writes while sync workers are killed with SIGKILL end with 0 wrong rows."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import pytest
from _sync_chaos import run


def test_random_app_writes_and_killed_workers_leave_no_wrong_row(
    database_url: str, capsys: pytest.CaptureFixture[str], record_property
) -> None:
    # A deliberate duration; DPR_PG_TEST_CHAOS_SECONDS runs it longer (or shorter) without editing the test.
    seconds = float(os.environ.get("DPR_PG_TEST_CHAOS_SECONDS", "30"))
    figures = run(database_url, seconds=seconds, keys=300, workers=2, seed=7, min_kills=8)

    with capsys.disabled():  # the figures are part of the result: print them with the test
        print(f"\nsync chaos: {json.dumps(asdict(figures), ensure_ascii=False)}")
    record_property("sync_chaos", asdict(figures))
    assert figures.wrong_rows == []
    assert (figures.queued_left, figures.dead_left) == (0, 0)
    assert figures.kills >= 8 and figures.kills_mid_batch >= 1 and figures.app_writes >= 500
