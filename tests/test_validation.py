"""dpr_pg.validation: one class and one message for each kind of mistake, wherever it is made.

The same bad k, vector and filter through every face (Python, ORM, HTTP, CLI) are in
tests/test_service.py, which has a running service.
"""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dpr_pg.db import schema
from dpr_pg.encoders.tiny import make_tiny_models
from dpr_pg.evaluation.classification import best_threshold
from dpr_pg.errors import ConfigError, DimensionError, DprPgError, EvaluationError, QueryVectorError
from dpr_pg.evaluation.metrics import aggregate
from dpr_pg.search.orm import DprSearchable, dpr_order
from dpr_pg.validation import check_dim, check_k, check_query_vector


def test_a_nan_query_vector_is_the_same_error_in_search_and_in_the_orm_helpers() -> None:
    class Base(DeclarativeBase):
        pass

    class Model(DprSearchable, Base):
        __tablename__ = "notes"
        __dpr_dim__ = 3
        id: Mapped[int] = mapped_column(primary_key=True)

    vector = [0.5, float("nan"), 1.0]
    with pytest.raises(QueryVectorError) as from_search:
        check_query_vector(vector, 3)
    with pytest.raises(QueryVectorError) as from_orm:
        dpr_order(Model, vector)
    assert str(from_orm.value) == str(from_search.value)
    with pytest.raises(DimensionError, match="expected a query vector of 3 dimensions, not 2"):
        dpr_order(Model, [0.5, 1.0])


@pytest.mark.parametrize("dim", [0, 16_001, True, "8"])
def test_a_bad_dim_is_a_config_error_in_init_and_init_sql(dim: object, engine: Engine) -> None:
    message = f"expected --dim between 1 and 16000 (pgvector's limit), not {dim!r}"
    with pytest.raises(ConfigError) as from_sql:
        schema.init_sql(dim=dim)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as from_init:
        schema.init(engine, dim=dim)  # type: ignore[arg-type]
    assert str(from_sql.value) == str(from_init.value) == message
    with pytest.raises(ConfigError):
        check_dim(dim)


def test_k_and_dimension_checks_accept_what_they_should() -> None:
    assert check_k(np.int64(7)) == 7 and check_dim(np.int32(384)) == 384
    assert check_query_vector(np.ones(4), 4).dtype == np.float32


def test_the_errors_that_were_bare_value_errors_are_dpr_pg_errors_and_still_value_errors(tmp_path) -> None:
    with pytest.raises(EvaluationError) as metrics:
        aggregate([], depth=10)
    with pytest.raises(EvaluationError) as classification:
        best_threshold([], [])
    with pytest.raises(ConfigError) as tiny:
        make_tiny_models(tmp_path, dim=0)
    for error in (metrics.value, classification.value, tiny.value):
        assert isinstance(error, DprPgError) and isinstance(error, ValueError)
