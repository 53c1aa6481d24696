"""The SQLAlchemy models work from an application's own Session; doctor flags risky pgvector versions."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from dpr_pg import Encoder, Passage
from hypothesis import given
from hypothesis import strategies as st

from dpr_pg.db.doctor import graph_warning, index_memory_warning, pgvector_warnings
from dpr_pg.tuning import LARGE_GRAPH_EF_CONSTRUCTION, LARGE_GRAPH_M, LARGE_GRAPH_ROWS


def test_models_round_trip_through_an_application_session(engine: sa.Engine) -> None:
    vector = np.linspace(-1, 1, 768, dtype=np.float32)
    with Session(engine) as session:
        encoder = Encoder(fingerprint="fp", question_model="q", passage_model="p", tokenizer_hash="t",
                          dim=768, max_length=512)
        session.add(Passage(collection="wiki", external_id="madrid", title="Madrid",
                            text="Madrid es la capital de España.", metadata_={"topic": "geografía"},
                            content_hash="h", embedding=vector, encoder=encoder))
        session.commit()

    with Session(engine) as session:
        passage = session.scalars(sa.select(Passage).where(Passage.external_id == "madrid")).one()
        nearest = session.scalars(
            sa.select(Passage).order_by(Passage.embedding.max_inner_product(vector)).limit(1)
        ).one()
        assert passage.metadata_ == {"topic": "geografía"}
        assert passage.encoder.passage_model == "p"
        assert np.allclose(passage.embedding, vector)
        assert nearest.id == passage.id
        # The generated tsvector uses the Spanish stemmer.
        assert session.scalar(sa.select(Passage.tsv.cast(sa.Text))) == "'capital':5 'españ':7 'madr':1,2"


@pytest.mark.parametrize(
    "version,expected",
    [
        ("0.8.5", []),
        ("0.8.2", []),
        ("0.8.1", ["CVE-2026-3172"]),
        ("0.7.4", ["no iterative index scans", "CVE-2026-3172"]),
        ("0.5.1", ["no iterative index scans"]),
    ],
)
def test_doctor_warns_about_old_and_vulnerable_pgvector(version: str, expected: list[str]) -> None:
    warnings = pgvector_warnings(version)
    assert len(warnings) == len(expected)
    for warning, fragment in zip(warnings, expected):
        assert fragment in warning


def test_doctor_warns_when_the_hnsw_index_outgrows_shared_buffers() -> None:
    # The 1M-row benchmark: a ~3.9 GB index against the embedded server's default 128 MB.
    warning = index_memory_warning(int(3.9 * 2**30), 128 * 2**20)
    assert warning is not None and "(3993 MB) is larger than shared_buffers (128 MB)" in warning
    assert "shared_buffers to at least 5GB" in warning
    assert index_memory_warning(100 * 2**20, 128 * 2**20) is None


def test_doctor_warns_when_a_large_graph_has_the_default_links() -> None:
    # The 1M-row benchmark's index with pgvector's defaults, and the rebuild the warning asks for.
    warning = graph_warning(1_000_000, 16, 64)
    assert warning is not None and "holds 1,000,000 rows in one graph" in warning
    assert "dpr-pg index --m 24 --ef-construction 128" in warning
    assert graph_warning(1_000_000, 24, 128) is None
    assert graph_warning(100_000, 16, 64) is None


@given(rows=st.integers(0, 10**9), m=st.integers(2, 100), ef_construction=st.integers(4, 1000))
def test_the_graph_warning_asks_exactly_for_large_graphs_with_fewer_links(rows: int, m: int,
                                                                           ef_construction: int) -> None:
    warned = graph_warning(rows, m, ef_construction) is not None
    small_links = m < LARGE_GRAPH_M or ef_construction < LARGE_GRAPH_EF_CONSTRUCTION
    assert warned == (rows > LARGE_GRAPH_ROWS and small_links)
