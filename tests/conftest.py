"""Fixtures: a real PostgreSQL with pgvector (embedded by default), a fresh database per test.

Set DPR_PG_TEST_DATABASE_URL to run the same suite against another server (for example the one in
docker-compose.yml); its user needs CREATEDB. Tests that pin a PostgreSQL major version (16 and 18)
always use the embedded package, which ships both.

Under pytest-xdist (``make test``) every session fixture here is per worker: each worker has its own
embedded servers, DPR_PG_HOME, DPR_PG_CACHE_DIR and tiny models, under its own basetemp. Names that
are global to a cluster (roles) carry a unique suffix, since workers may share one external server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from dpr_pg.db.engine import embedded_server, normalize_url
from dpr_pg.db.embedded import stop_server
from dpr_pg.db.schema import init
from dpr_pg.encoders.pair import EncoderPair

ROOT = Path(__file__).resolve().parent.parent

@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: unknown when it is not loaded (-p no:xdist)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per usable core, at most 4 (each holds its own servers and models in memory)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 4))


# The files that take longest (a minute or more each, serially), handed to the workers first, so that no worker
# starts one of them while the others have finished. Serial runs keep pytest's own order.
LONGEST_FILES = ("test_first_steps.py", "test_demo.py", "test_cli.py", "test_ingest_cli.py", "test_example_app.py",
                 "test_sync_workers.py", "test_embedded_server.py", "test_offline_models.py", "test_storage.py",
                 "test_service.py", "test_search_cli.py", "test_schema.py", "test_ingest_ray.py", "test_encoders.py",
                 "test_replicas.py", "test_sync_chaos.py", "test_halfvec_column.py", "test_graphs.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


# No per-example deadline: on a loaded 2-core machine a slow example is not a failure.
settings.register_profile("dpr_pg", deadline=None, print_blob=True)
settings.load_profile("dpr_pg")


class Server:
    """An admin URL on one PostgreSQL server, able to hand out throw-away databases."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self._admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        self._templates: dict[int, str] = {}
        self.stop: Callable[[], object] | None = None

    def url_for(self, database: str) -> str:
        return make_url(self.admin_url).set(database=database).render_as_string(hide_password=False)

    def create_database(self, *, template: str | None = None) -> str:
        name = f"dpr_test_{uuid.uuid4().hex[:12]}"
        clause = f' TEMPLATE "{template}"' if template else ""
        with self._admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"{clause}'))
        return name

    def drop_database(self, name: str) -> None:
        with self._admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def initialized_template(self, dim: int) -> str:
        """A database with ``dpr-pg init --dim dim`` applied, created once, copied per test."""
        if dim not in self._templates:
            name = self.create_database()
            engine = sa.create_engine(self.url_for(name), poolclass=sa.NullPool)
            init(engine, dim=dim)
            engine.dispose()
            self._templates[dim] = name
        return self._templates[dim]

    def close(self) -> None:
        for name in self._templates.values():
            self.drop_database(name)
        self._admin.dispose()
        if self.stop is not None:
            self.stop()


def _embedded(version: int) -> Server:
    # Not under pytest's basetemp: a concurrent pytest session may prune old basetemps, and the
    # server's data folder must outlive this one.
    home = Path(tempfile.mkdtemp(prefix=f"dpr_pg_test_pg{version}_"))
    handle = embedded_server(home=home, postgres_version=version)
    srv = Server(handle.url(driver="psycopg"))
    srv.stop = lambda: (stop_server(home=home, postgres_version=version, force=True),
                        shutil.rmtree(home, ignore_errors=True))
    return srv


@pytest.fixture
def lifecycle_home() -> Iterator[Path]:
    """A DPR_PG_HOME of one's own, for a test that starts and stops embedded servers itself.

    Not under pytest's basetemp: a concurrent pytest session resets that folder to 0700, which locks
    the server's own user out of its data when the tests run as root. Whatever server a failing test
    leaves running is stopped.
    """
    path = Path(tempfile.mkdtemp(prefix="dpr_pg_lifecycle_"))
    yield path
    for version in (16, 18):
        stop_server(home=path, postgres_version=version, force=True)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep tests away from the user's own settings, data folder and the network."""
    saved = dict(os.environ)
    for name in ("DPR_PG_DATABASE_URL", "DATABASE_URL", "DPR_PG_QUESTION_MODEL", "DPR_PG_PASSAGE_MODEL",
                 "DPR_PG_READER_MODEL", "DPR_PG_READ_URLS", "DPR_PG_MAX_REPLICA_LAG", "DPR_PG_READ_YOUR_WRITES",
                 "DPR_PG_REPLICA_WAIT"):
        os.environ.pop(name, None)
    os.environ["DPR_PG_HOME"] = str(tmp_path_factory.mktemp("dpr_pg_home"))
    os.environ["DPR_PG_CACHE_DIR"] = str(tmp_path_factory.mktemp("dpr_pg_cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def server(_isolated_environment: None) -> Iterator[Server]:
    """The server the suite runs against: DPR_PG_TEST_DATABASE_URL, else embedded PostgreSQL 18."""
    external = os.environ.get("DPR_PG_TEST_DATABASE_URL")
    srv = Server(normalize_url(external)) if external else _embedded(18)
    yield srv
    srv.close()


@pytest.fixture(scope="session", params=[16, 18], ids=["pg16", "pg18"])
def versioned_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """Embedded PostgreSQL 16 and 18, for tests that must hold on both."""
    srv = _embedded(request.param)
    yield srv
    srv.close()


@pytest.fixture
def empty_url(server: Server) -> Iterator[str]:
    """URL of a fresh, empty database (no dpr_pg schema)."""
    name = server.create_database()
    yield server.url_for(name)
    server.drop_database(name)


@pytest.fixture
def database_url(server: Server) -> Iterator[str]:
    """URL of a fresh database with the dpr_pg schema at head, vector(768)."""
    name = server.create_database(template=server.initialized_template(768))
    yield server.url_for(name)
    server.drop_database(name)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An Engine on a fresh database with the dpr_pg schema at head."""
    eng = sa.create_engine(database_url)
    yield eng
    eng.dispose()


def run_cli(*args: str, input: str | None = None, env: dict[str, str] | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``dpr-pg ARGS`` in a subprocess, as a user would type it."""
    result = subprocess.run(
        [sys.executable, "-m", "dpr_pg.cli", *args],
        input=input, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"dpr-pg {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def cli():
    """``cli("init", "--dim", "8")`` runs the real command line in a subprocess."""
    return run_cli


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(question_dir, passage_dir) of a tiny random 768-d DPR pair, made once per session."""
    from dpr_pg.encoders.pair import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("tiny_models"), dim=768)


def _tiny_pair(tiny_models: tuple[Path, Path], **options: str) -> EncoderPair:
    return EncoderPair.load(str(tiny_models[0]), str(tiny_models[1]), **options)


# The tiny pair in the variants the tests ask for, each loaded once per module that uses it: a module's tests
# share its encoders (and their question cache), as they did when each module loaded its own.
@pytest.fixture(scope="module")
def pair(tiny_models: tuple[Path, Path]) -> EncoderPair:
    """The tiny pair with the device's defaults, as a user gets it (precision and runtime chosen for the device)."""
    return _tiny_pair(tiny_models)


@pytest.fixture(scope="module")
def fp32_pair(tiny_models: tuple[Path, Path]) -> EncoderPair:
    """The tiny pair in fp32: no bf16 or fp16 rounding, whatever the device."""
    return _tiny_pair(tiny_models, precision="fp32")


@pytest.fixture(scope="module")
def torch_pair(tiny_models: tuple[Path, Path]) -> EncoderPair:
    """The tiny pair with both encoders on torch (no ONNX Runtime question encoder), the device's default precision."""
    return _tiny_pair(tiny_models, runtime="torch")


@pytest.fixture(scope="module")
def torch_fp32_pair(tiny_models: tuple[Path, Path]) -> EncoderPair:
    """The tiny pair in fp32 with both encoders on torch."""
    return _tiny_pair(tiny_models, precision="fp32", runtime="torch")


@pytest.fixture(scope="session")
def tiny_reader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a tiny random extractive reader, made once per session."""
    from dpr_pg.reader import make_tiny_reader

    return make_tiny_reader(tmp_path_factory.mktemp("tiny_reader") / "reader")


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(question_dir, passage_dir) of the trained 384-d offline pair (all-MiniLM-L6-v2), made once per session."""
    from dpr_pg.encoders.pair import make_trained_models

    return make_trained_models(tmp_path_factory.mktemp("trained_models"))
