"""Writes docs/cli.md, the `dpr-pg` reference, from the click commands themselves.

    python docs/_scripts/cli_reference.py > docs/cli.md

tests/test_docs_site.py fails while the checked-in page differs from this script's output, so a
new command or option, or changed help, lands with its page.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import click

# Fixed, so that the page does not depend on the terminal that writes it.
WIDTH = 100

HEADER = """\
# CLI reference

Every `dpr-pg` command with its options, as `dpr-pg COMMAND --help` prints them. This page is
generated: after changing a command, run `python docs/_scripts/cli_reference.py > docs/cli.md`.
The other pages explain the commands with examples; each help text below carries one too.

## Exit codes

| code | meaning |
| ---: | --- |
| 0 | success, including a search that finds no hits (stderr says why) |
| 1 | an error: one line on stderr saying what was expected, what came and what to do; never a traceback. Also `dpr-pg index` (and `ingest --defer-index`) giving up after `--wait` seconds, `dpr-pg worker --once` when it left a table alone, and Ctrl-C |
| 2 | `dpr-pg ingest` when records were rejected: the others are written (with `--strict`, nothing of the failing batch) |
| 64 | a usage error (sysexits' EX_USAGE): an unknown command or option, a bad value (`-k 0`, a `--filter` outside the filter language), a missing argument, with the command's usage on stderr |
| psql's | `dpr-pg server psql` exits with psql's own status (0, 1, 2 for a lost connection, 3 for an error in a script under `ON_ERROR_STOP`) |
| SIGTERM's | `dpr-pg serve` stopped by SIGTERM finishes the requests in flight, then re-raises the signal: 143 in a shell |
"""


def commands(command: click.Command, ctx: click.Context) -> Iterator[tuple[click.Command, click.Context]]:
    """The command and every subcommand below it, depth first, in the order `--help` lists them."""
    yield command, ctx
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from commands(sub, context(sub, name, parent=ctx))


def context(command: click.Command, name: str, parent: click.Context | None = None) -> click.Context:
    """What `dpr-pg ... NAME --help` formats with (its context settings), at the page's width."""
    settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    return click.Context(command, info_name=name, parent=parent, **settings)


def reference(main: click.Command) -> str:
    """The whole page: the header, then one section per command with its `--help` text."""
    parts = [HEADER]
    for command, ctx in commands(main, context(main, "dpr-pg")):
        parts.append(f"\n## {ctx.command_path}\n\n```text\n{command.get_help(ctx).rstrip()}\n```\n")
    return "".join(parts)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's dpr_pg
    from dpr_pg.cli import main as cli_main

    sys.stdout.write(reference(cli_main))
