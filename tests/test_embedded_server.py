"""The embedded server's lifecycle with real processes: who keeps it up, who stops it, and psql on it.

Every test has its own DPR_PG_HOME (conftest's ``lifecycle_home``), so its servers are its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import psycopg
import pytest
import sqlalchemy as sa

from dpr_pg.db.engine import libpq_url
from dpr_pg.db.embedded import psql_path

# A process that uses the embedded server through the Python API, as an application would: it holds
# an engine (with a pooled connection), prints the server's URL and waits for a line on stdin.
HOLDER = (
    "import sys\n"
    "from dpr_pg.db.engine import create_engine, libpq_url\n"
    "engine = create_engine()\n"
    "print(libpq_url(engine.url.render_as_string(hide_password=False)), flush=True)\n"
    "sys.stdin.readline()\n"
)


@pytest.fixture
def home(lifecycle_home: Path) -> Path:
    return lifecycle_home


def _env(home: Path, **extra: str) -> dict[str, str]:
    unset = ("DPR_PG_DATABASE_URL", "DATABASE_URL", "DPR_PG_POSTGRES_VERSION")
    return {**{k: v for k, v in os.environ.items() if k not in unset}, "DPR_PG_HOME": str(home), **extra}


def dpr(home: Path, *args: str, check: bool = True, input: str | None = None,
        **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "dpr_pg.cli", *args], input=input, capture_output=True,
                            text=True, env=_env(home, **env), timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"dpr-pg {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def status(home: Path, *args: str) -> dict:
    return json.loads(dpr(home, "server", "status", "--json", *args).stdout)


def start_holder(home: Path) -> tuple[subprocess.Popen[str], str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], env=_env(home), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    url = holder.stdout.readline().strip()
    assert url.startswith("postgresql://"), holder.communicate(timeout=60)
    return holder, url


def release(holder: subprocess.Popen[str]) -> None:
    _, stderr = holder.communicate("\n", timeout=120)
    assert holder.returncode == 0, stderr


def postmaster_running(home: Path, version: int = 18) -> bool:
    return (home / f"pg{version}" / "postmaster.pid").exists()


def test_an_app_connection_survives_when_the_last_dpr_pg_process_exits(home: Path) -> None:
    holder, url = start_holder(home)
    with psycopg.connect(url, autocommit=True) as app:
        release(holder)  # the only dpr_pg process leaves while the app is connected

        assert app.execute("SELECT 42").fetchone() == (42,)
        after = status(home)
        assert after["running"] and after["processes"] == []
        assert [client["application_name"] for client in after["clients"]] == [""]  # psycopg sets none

        dpr(home, "server", "psql", "-c", "SELECT 1")  # a later dpr-pg process leaves it up too
        assert app.execute("SELECT 43").fetchone() == (43,)
    # Nobody connected now: the next dpr-pg process to leave stops it.
    dpr(home, "server", "psql", "-c", "SELECT 1")
    assert not postmaster_running(home)


def test_a_process_killed_with_sigkill_leaves_no_stale_handle(home: Path) -> None:
    killed, _ = start_holder(home)
    handles = home / "pg18" / ".handle_pids.json"
    assert json.loads(handles.read_text()) == [killed.pid]
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)

    assert status(home)["processes"] == []
    assert json.loads(handles.read_text()) == []
    # With the dead pid gone, the last process to leave stops the server again.
    holder, _ = start_holder(home)
    assert json.loads(handles.read_text()) == [holder.pid]
    release(holder)
    assert not postmaster_running(home)


def test_a_killed_dpr_pg_command_is_dropped_from_the_handle_list(home: Path) -> None:
    command = subprocess.Popen([sys.executable, "-m", "dpr_pg.cli", "server", "psql", "-At"], env=_env(home),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert command.stdin is not None and command.stdout is not None
    command.stdin.write("SELECT 7;\n")
    command.stdin.flush()
    assert command.stdout.readline().strip() == "7"
    psql = psutil.Process(command.pid).children()
    assert [child.name() for child in psql] == ["psql"]

    command.send_signal(signal.SIGKILL)
    command.wait(timeout=60)
    command.stdin.close()  # psql, orphaned, reads end-of-input and exits
    psutil.wait_procs(psql, timeout=60)

    assert status(home)["processes"] == []
    dpr(home, "server", "psql", "-c", "SELECT 1")
    assert not postmaster_running(home)


@pytest.mark.parametrize("version", [16, 18])
def test_server_start_keeps_it_up_for_psql_until_server_stop(home: Path, version: int) -> None:
    started = dpr(home, "server", "start", "--postgres-version", str(version))
    assert "kept up until dpr-pg server stop" in started.stdout

    url = dpr(home, "server", "url", "--postgres-version", str(version)).stdout.strip()
    psql = [str(psql_path(version)), url, "-Atc", "SHOW server_version"]
    assert subprocess.run(psql, capture_output=True, text=True, check=True).stdout.startswith(f"{version}.")
    # Other dpr-pg commands come and go; the server stays.
    dpr(home, "init", "--dim", "8", DPR_PG_POSTGRES_VERSION=str(version))
    doctor = json.loads(dpr(home, "doctor", "--json", DPR_PG_POSTGRES_VERSION=str(version)).stdout)
    assert doctor["database_url"] == url
    running = status(home, "--postgres-version", str(version))
    assert (running["running"], running["kept_running"], running["postgres_version"]) == (True, True, version)
    assert running["data_dir"] == str(home.resolve() / f"pg{version}")
    assert running["server_version"].startswith(f"{version}.")

    assert "stopped" in dpr(home, "server", "stop", "--postgres-version", str(version)).stdout
    assert status(home, "--postgres-version", str(version))["running"] is False
    failed = subprocess.run(psql, capture_output=True, text=True)
    assert failed.returncode == 2 and "No such file or directory" in failed.stderr


def test_server_stop_refuses_while_a_client_is_connected_unless_forced(home: Path) -> None:
    dpr(home, "server", "start")
    url = dpr(home, "server", "url").stdout.strip()
    with psycopg.connect(url, autocommit=True, application_name="reporting-app") as app:
        refused = dpr(home, "server", "stop", check=False)
        assert refused.returncode == 1
        assert "1 client(s) are connected (reporting-app on postgres)" in refused.stderr
        assert "--force" in refused.stderr and "Traceback" not in refused.stderr
        assert app.execute("SELECT 1").fetchone() == (1,)

        dpr(home, "server", "stop", "--force")
        with pytest.raises(psycopg.OperationalError):
            app.execute("SELECT 1")
    assert not postmaster_running(home)


def test_status_lists_the_connected_clients_and_processes(home: Path) -> None:
    holder, url = start_holder(home)
    with psycopg.connect(url, autocommit=True, application_name="reporting-app"):
        found = status(home)
        printed = dpr(home, "server", "url").stdout.strip()
    release(holder)
    assert found["running"] and found["processes"] == [holder.pid]
    names = sorted(client["application_name"] for client in found["clients"])
    assert names == [f"dpr-pg {holder.pid}", "reporting-app"]
    assert found["socket_dir"] and found["port"] == 5432 and found["url"] == printed
    assert not postmaster_running(home)


def test_server_psql_runs_the_init_script_as_the_readme_shows(home: Path, tmp_path: Path) -> None:
    script = tmp_path / "dpr_pg.sql"
    script.write_text(dpr(home, "init", "--sql", "--dim", "8").stdout)
    dpr(home, "server", "psql", "-c", "CREATE DATABASE reviewed")
    dpr(home, "server", "psql", "--database", "reviewed", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(script))
    assert not postmaster_running(home)  # psql was the only user: the server stopped after it

    counted = dpr(home, "server", "psql", "--database", "reviewed", "-At",
                  input="SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                        "WHERE attrelid = 'dpr_pg.passages'::regclass AND attname = 'embedding';\n")
    assert counted.stdout.strip() == "vector(8)"
    failing = dpr(home, "server", "psql", "-v", "ON_ERROR_STOP=1", "-c", "SELECT 1/0", check=False)
    assert failing.returncode == 1 and "division by zero" in failing.stderr


def test_server_url_of_a_stopped_server_is_one_clear_error(home: Path) -> None:
    result = dpr(home, "server", "url", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: the embedded PostgreSQL 18 is not running, so it has no URL yet; "
        "run dpr-pg server start (it then stays up until dpr-pg server stop)"]


def test_an_unsupported_postgres_version_is_one_clear_error(home: Path) -> None:
    result = dpr(home, "server", "status", check=False, DPR_PG_POSTGRES_VERSION="17")
    assert result.returncode == 1
    assert "expected PostgreSQL 16 or 18 for the embedded server, not '17' (DPR_PG_POSTGRES_VERSION)" in result.stderr
    assert "Traceback" not in result.stderr


def test_doctor_prints_a_psql_ready_url_masked_unless_asked(database_url: str, home: Path) -> None:
    with_password = sa.engine.make_url(database_url).set(password="s3cret").render_as_string(hide_password=False)
    masked = json.loads(dpr(home, "--database-url", with_password, "doctor", "--json").stdout)["database_url"]
    assert masked.startswith("postgresql://postgres:***@/") and "s3cret" not in masked
    text = dpr(home, "--database-url", with_password, "doctor").stdout
    assert "--show-password prints it whole" in text

    whole = json.loads(dpr(home, "--database-url", with_password, "doctor", "--json", "--show-password").stdout)
    assert whole["database_url"] == masked.replace("***", "s3cret")
    psql = subprocess.run([str(psql_path()), whole["database_url"], "-Atc", "SELECT current_database()"],
                          capture_output=True, text=True, check=True)
    assert psql.stdout.strip() == sa.engine.make_url(database_url).database
    assert libpq_url(database_url).startswith("postgresql://")


def test_an_application_engine_on_the_embedded_url_does_not_keep_the_server_up(home: Path) -> None:
    app = ("import sqlalchemy as sa\n"
           "from dpr_pg.db.engine import embedded_server\n"
           "server = embedded_server()\n"
           "engine = sa.create_engine(server.url(driver='psycopg'))\n"
           "with engine.connect() as conn:\n"
           "    conn.execute(sa.text('SELECT 1'))\n"  # the pool keeps the connection open until the very end
           "print(server.pid)\n")
    ran = subprocess.run([sys.executable, "-c", app], env=_env(home), capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(int(ran.stdout)).wait(timeout=120)  # the smart shutdown ends once the app's socket closes
    assert status(home)["running"] is False
