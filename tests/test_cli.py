"""The command line as a user types it: help everywhere, init, doctor, errors, a shared embedded server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from dpr_pg.db import schema
from dpr_pg.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        found.append((f"{prefix}{name}", command))
        if isinstance(command, click.Group):
            found.extend(_commands(command, f"{prefix}{name} "))
    return found


# The embedded server's own commands act on that server, never on a database URL or dpr_pg's schema;
# these others reach no database at all (they write model folders or print a path).
EMBEDDED_SERVER_GROUP = "server"
NO_DATABASE = {"sample-path", "tiny-models", "trained-models"}


def _database_commands() -> list[tuple[str, click.Command]]:
    """Every command that reaches a database, including any added later."""
    return [(name, command) for name, command in _commands(main)
            if not isinstance(command, click.Group) and name.split()[0] != EMBEDDED_SERVER_GROUP
            and name not in NO_DATABASE]


@pytest.mark.parametrize("name,command", _commands(main), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_has_help_with_an_example(name: str, command: click.Command) -> None:
    result = CliRunner().invoke(main, [*name.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert command.help and "Example" in command.help, f"dpr-pg {name} needs help text with an Example"


# Commands that work on a database without dpr_pg's schema (they create it or report it missing), and
# those that reach no database, with the arguments each is walked with ({tmp}: a folder of the test's
# own). Every other database command, including any added later, must fail in one line before init.
RUN_BEFORE_INIT = {
    "init": ["--dim", "16"],
    "doctor": [],
    "demo": [],
    "sample-path": [],
    "tiny-models": ["{tmp}/tiny", "--dim", "16"],
    "trained-models": ["{tmp}/trained"],
}
WORK_BEFORE_INIT = set(RUN_BEFORE_INIT) - NO_DATABASE
SAMPLE = ROOT / "dpr_pg" / "data" / "sample_es.jsonl"


def _leaves() -> list[str]:
    """Every command a user can run, subcommands of groups included."""
    return [name for name, command in _commands(main) if not isinstance(command, click.Group)]


def _needs_schema() -> list[tuple[str, click.Command]]:
    return [(name, command) for name, command in _database_commands() if name not in WORK_BEFORE_INIT]


def _invocation(name: str, command: click.Command, database_url: str) -> list[str]:
    """The command with its required arguments and options filled in, and --database-url after its name."""
    args = [*name.split(), "--database-url", database_url]
    for param in command.params:
        if param.required and isinstance(param, click.Argument):
            if isinstance(param.type, click.Choice):
                args.append(str(param.type.choices[0]))
            else:
                args.append(str(SAMPLE) if isinstance(param.type, click.Path) else "sevilla")
        elif param.required:
            args += [param.opts[0], "demo"]
    return args


def test_the_walks_before_init_cover_every_command() -> None:
    schema_commands = {name for name, _ in _needs_schema()}
    server_commands = {name for name in _leaves() if name.split()[0] == EMBEDDED_SERVER_GROUP}
    assert NO_DATABASE <= set(RUN_BEFORE_INIT)
    assert set(RUN_BEFORE_INIT) | server_commands | schema_commands == set(_leaves())
    assert not schema_commands & (set(RUN_BEFORE_INIT) | server_commands)
    assert {f"{EMBEDDED_SERVER_GROUP} {name}" for name, *_ in SERVER_WALK} == server_commands


@pytest.mark.parametrize("name,command", _needs_schema(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_before_init_fails_in_one_line_that_says_init(
        cli, empty_url: str, tiny_models: tuple[Path, Path], name: str, command: click.Command) -> None:
    env = {"DPR_PG_QUESTION_MODEL": str(tiny_models[0]), "DPR_PG_PASSAGE_MODEL": str(tiny_models[1])}
    result = cli(*_invocation(name, command, empty_url), env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("Error: ") and "dpr-pg init" in result.stderr


@pytest.mark.parametrize("name", sorted(RUN_BEFORE_INIT))
def test_the_commands_that_need_no_schema_succeed_before_init(
        cli, empty_url: str, tiny_models: tuple[Path, Path], tmp_path: Path, name: str) -> None:
    env = {"DPR_PG_QUESTION_MODEL": str(tiny_models[0]), "DPR_PG_PASSAGE_MODEL": str(tiny_models[1])}
    args = [arg.format(tmp=tmp_path) for arg in RUN_BEFORE_INIT[name]]
    result = cli("--database-url", empty_url, name, *args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stdout.strip()
    if name == "doctor":  # it reports the missing schema, and what to do about it
        assert "dpr-pg init" in result.stdout + result.stderr


# The embedded server's commands, in the order a user would walk them on a server no dpr-pg process has
# started: each with its arguments, exit code and a line it must print. The server holds no dpr_pg schema.
SERVER_WALK = [
    ("status", [], 0, "not running"),
    ("url", [], 1, "run dpr-pg server start"),
    ("start", [], 0, "kept up until dpr-pg server stop"),
    ("psql", ["-At", "-c", "SELECT 'psql works'"], 0, "psql works"),
    ("stop", [], 0, "stopped"),
]


def test_the_embedded_server_commands_before_init(lifecycle_home: Path) -> None:
    env = {**os.environ, "DPR_PG_HOME": str(lifecycle_home)}
    for name in ("DPR_PG_DATABASE_URL", "DATABASE_URL"):
        env.pop(name, None)
    for name, args, code, says in SERVER_WALK:
        result = subprocess.run([sys.executable, "-m", "dpr_pg.cli", EMBEDDED_SERVER_GROUP, name, *args], env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == code, f"server {name}: {result.stdout}{result.stderr}"
        assert says in result.stdout + result.stderr and "Traceback" not in result.stderr, f"server {name}"
        if code:
            assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("Error: ")


def test_init_then_init_again_is_a_no_op(cli, empty_url: str) -> None:
    first = cli("--database-url", empty_url, "init", "--dim", "16", check=True)
    second = cli("--database-url", empty_url, "init", "--dim", "16", check=True)
    assert f"empty -> {schema.head_revision()} (vector(16))" in first.stdout
    assert "nothing to do" in second.stdout


def test_init_with_a_conflicting_dim_exits_1_and_names_the_fix(cli, empty_url: str) -> None:
    cli("--database-url", empty_url, "init", "--dim", "16", check=True)
    result = cli("--database-url", empty_url, "init", "--dim", "32")
    assert result.returncode == 1
    assert "dpr-pg init --dim 16" in result.stderr


def test_init_without_dim_keeps_the_stored_dimension_and_gives_a_new_schema_768(cli, empty_url: str,
                                                                                 server) -> None:
    cli("--database-url", empty_url, "init", "--dim", "384", check=True)
    again = cli("--database-url", empty_url, "init", check=True)
    assert "already at" in again.stdout and "(vector(384))" in again.stdout
    fresh = server.create_database()
    try:
        result = cli("--database-url", server.url_for(fresh), "init", check=True)
    finally:
        server.drop_database(fresh)
    assert "(vector(768))" in result.stdout


def test_doctor_json_reports_versions_and_hides_the_password(cli, database_url: str) -> None:
    url_with_password = sa.engine.make_url(database_url).set(password="s3cret").render_as_string(hide_password=False)
    result = cli("--database-url", url_with_password, "doctor", "--json", check=True)
    report = json.loads(result.stdout)
    assert report["pgvector_version"] == "0.8.5"
    assert report["schema_revision"] == schema.head_revision()
    assert report["dim"] == 768
    assert report["warnings"] == []
    assert report["hnsw"] == {"m": 16, "ef_construction": 64, "storage": "vector", "column": "vector"}
    assert "s3cret" not in result.stdout and "***" in report["database_url"]


def test_doctor_warns_when_the_hnsw_index_is_missing(cli, database_url: str) -> None:
    from dpr_pg.db.index import drop_hnsw

    engine = sa.create_engine(database_url)
    drop_hnsw(engine)
    engine.dispose()
    result = cli("--database-url", database_url, "doctor", check=True)
    assert "missing or INVALID" in result.stderr and "run dpr-pg index" in result.stderr
    assert "hnsw index" in result.stdout and "missing" in result.stdout


@pytest.mark.parametrize(
    "url,expected",
    [
        ("mysql://user@host/db", "expected a PostgreSQL URL"),
        ("postgresql://user@host:notaport/db", "malformed database URL"),
        ("postgresql://nobody@127.0.0.1:1/db", "cannot connect to"),
    ],
)
def test_bad_database_url_gives_one_clear_error(cli, url: str, expected: str) -> None:
    result = cli("--database-url", url, "doctor")
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name,command", _database_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_takes_database_url_after_its_name(name: str, command: click.Command) -> None:
    result = CliRunner().invoke(main, [*name.split(), "--help"])
    assert "--database-url URL" in result.output


def test_database_url_after_the_subcommand_wins(cli, empty_url: str) -> None:
    result = cli("--database-url", "postgresql://nobody@127.0.0.1:1/db", "init", "--dim", "16",
                 "--database-url", empty_url, check=True)
    assert f"empty -> {schema.head_revision()} (vector(16))" in result.stdout


@pytest.mark.parametrize(
    "args,env,origin,next_step",
    [
        (["--database-url", "mysql://user@host/db"], {}, "(from --database-url)",
         "leave --database-url out to use the embedded server"),
        ([], {"DATABASE_URL": "mysql://user@host/db"}, "(from DATABASE_URL)", "unset DATABASE_URL to use the embedded server"),
        ([], {"DPR_PG_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/db", "DATABASE_URL": "postgresql://x@y/z"},
         "(from DPR_PG_DATABASE_URL)", "unset DPR_PG_DATABASE_URL to use DATABASE_URL"),
    ],
)
def test_a_bad_url_error_names_where_the_url_came_from(cli, args: list[str], env: dict[str, str], origin: str,
                                                       next_step: str) -> None:
    result = cli("doctor", *args, env=env)
    assert result.returncode == 1
    assert origin in result.stderr and next_step in result.stderr
    if "DPR_PG_DATABASE_URL" not in env:  # never a variable that is not set
        assert "DPR_PG_DATABASE_URL" not in result.stderr


def test_database_url_comes_from_the_environment(cli, database_url: str) -> None:
    result = cli("doctor", "--json", env={"DPR_PG_DATABASE_URL": database_url, "DATABASE_URL": "mysql://ignored"},
                 check=True)
    assert json.loads(result.stdout)["dim"] == 768


def test_two_cli_processes_share_one_embedded_server(lifecycle_home: Path) -> None:
    home = lifecycle_home
    env = {**os.environ, "DPR_PG_HOME": str(home)}
    for name in ("DPR_PG_DATABASE_URL", "DATABASE_URL"):
        env.pop(name, None)
    command = [sys.executable, "-m", "dpr_pg.cli", "init", "--dim", "8"]
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    stdout = "".join(out for out, _ in outputs)
    assert stdout.count("nothing to do") == 1  # one created the schema, the other found it done
    doctor = subprocess.run([sys.executable, "-m", "dpr_pg.cli", "doctor", "--json"], env=env,
                            capture_output=True, text=True, check=True)
    assert json.loads(doctor.stdout)["dim"] == 8
    assert (home / "pg18" / "PG_VERSION").read_text().strip() == "18"
    # The last process out stopped the server.
    assert not (home / "pg18" / "postmaster.pid").exists()
