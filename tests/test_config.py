"""Settings precedence: argument > DPR_PG_* > DATABASE_URL > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import URL

from dpr_pg import config
from dpr_pg.db.engine import hide_password, normalize_url, psql_url
from dpr_pg.errors import ConfigError


def test_database_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://generic/db")
    assert config.database_url() == "postgresql://generic/db"
    monkeypatch.setenv("DPR_PG_DATABASE_URL", "postgresql://specific/db")
    assert config.database_url() == "postgresql://specific/db"
    assert config.database_url("postgresql://explicit/db") == "postgresql://explicit/db"


def test_database_url_origin_names_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DPR_PG_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://generic/db")
    assert config.database_url_origin() == ("postgresql://generic/db", "DATABASE_URL")
    assert config.database_url_origin("postgresql://x/db", explicit_name="--database-url") == (
        "postgresql://x/db", "--database-url")
    assert config.database_url_fallback("--database-url") == "DATABASE_URL"
    assert config.database_url_fallback("DATABASE_URL") == "the embedded server"
    monkeypatch.delenv("DATABASE_URL")
    assert config.database_url_origin() == (None, "the embedded server")


def test_no_url_means_the_embedded_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("DPR_PG_DATABASE_URL", raising=False)
    assert config.database_url() is None


def test_home_is_overridden_by_dpr_pg_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DPR_PG_HOME", str(tmp_path / "h"))
    assert config.home() == (tmp_path / "h").resolve()
    monkeypatch.delenv("DPR_PG_HOME")
    assert config.home().name == "dpr_pg"


def test_model_names_default_to_the_iic_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DPR_PG_QUESTION_MODEL", raising=False)
    monkeypatch.delenv("DPR_PG_PASSAGE_MODEL", raising=False)
    assert config.question_model() == "IIC/dpr-spanish-question_encoder-allqa-base"
    assert config.passage_model() == "IIC/dpr-spanish-passage_encoder-allqa-base"
    monkeypatch.setenv("DPR_PG_QUESTION_MODEL", "/models/q")
    assert config.question_model() == "/models/q"
    assert config.question_model("explicit/q") == "explicit/q"


@pytest.mark.parametrize(
    "given,expected",
    [
        ("postgres://u:p@db/app", "postgresql+psycopg://u:p@db/app"),
        ("postgresql://u@db:5433/app", "postgresql+psycopg://u@db:5433/app"),
        ("postgresql+psycopg2://u@db/app", "postgresql+psycopg://u@db/app"),
    ],
)
def test_urls_are_normalised_to_psycopg3(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


@pytest.mark.parametrize("bad", ["", "db.example.com", "sqlite:///x.db", "http://db/app"])
def test_non_postgres_urls_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="expected a PostgreSQL URL"):
        normalize_url(bad)


def test_passwords_are_hidden() -> None:
    assert hide_password("postgresql://user:p%40ss:w@host/db") == "postgresql://user:***@host/db"
    assert hide_password("postgresql://user@host/db") == "postgresql://user@host/db"


_PARTS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=12)


@given(user=_PARTS, password=_PARTS, database=_PARTS, socket_dir=_PARTS)
def test_psql_url_reads_back_through_libpq_as_it_was(user: str, password: str, database: str,
                                                     socket_dir: str) -> None:
    url = URL.create("postgresql+psycopg", username=user, password=password, database=database,
                     query={"host": f"/tmp/{socket_dir}"})
    parsed = conninfo_to_dict(psql_url(url, show_password=True))  # libpq's own parser, as psql's
    assert parsed == {"user": user, "password": password, "dbname": database, "host": f"/tmp/{socket_dir}"}
    assert conninfo_to_dict(psql_url(url)) == {**parsed, "password": "***"}


def test_psql_url_of_a_tcp_server_with_options() -> None:
    url = "postgresql+psycopg://app:s3cret@db.example.com:6543/app?sslmode=require"
    assert psql_url(url) == "postgresql://app:***@db.example.com:6543/app?sslmode=require"
    assert psql_url(url, show_password=True) == "postgresql://app:s3cret@db.example.com:6543/app?sslmode=require"


@pytest.mark.parametrize("raw", ["17", "abc", "15"])
def test_an_unsupported_postgres_version_is_refused(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("DPR_PG_POSTGRES_VERSION", raw)
    with pytest.raises(ConfigError, match=f"expected PostgreSQL 16 or 18 for the embedded server, not '{raw}'"):
        config.postgres_version()
    assert config.postgres_version(16) == 16
