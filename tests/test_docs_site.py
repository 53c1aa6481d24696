"""The documentation site builds cleanly, and documents every command, option and exit code of the CLI.

Commands and options are enumerated from the click group at run time, so a command added later
fails here until the docs name it, as sqlite-utils' tests/test_docs.py does.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

import dpr_pg
from dpr_pg.cli import main
from _doc_pages import DOCS, ROOT, nav_pages, reading_order

REFERENCE = DOCS / "cli.md"


def _commands(command: click.Command, path: tuple[str, ...] = ("dpr-pg",)) -> Iterator[tuple[str, click.Command]]:
    yield " ".join(path), command
    if isinstance(command, click.Group):
        for name in command.list_commands(click.Context(command)):
            yield from _commands(command.get_command(click.Context(command), name), (*path, name))


COMMANDS = dict(_commands(main))


def _reference_sections() -> dict[str, str]:
    """docs/cli.md's text under each `## dpr-pg ...` heading."""
    parts = re.split(r"^## (dpr-pg[\w -]*)$", REFERENCE.read_text(encoding="utf-8"), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_the_site_builds_strict(tmp_path: Path) -> None:
    # --strict turns every warning into a failure: a broken link or anchor, a page left out of the
    # nav, a docstring reference that does not resolve, a module path the API page names that is gone.
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "cli" / "index.html").is_file()
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "search_many" in api and "EncoderPair" in api  # mkdocstrings rendered the docstrings


def test_every_page_is_in_the_nav() -> None:
    assert sorted(nav_pages()) == sorted(DOCS.glob("*.md"))


def test_the_cli_reference_is_what_the_commands_say() -> None:
    result = subprocess.run([sys.executable, str(DOCS / "_scripts" / "cli_reference.py")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout == REFERENCE.read_text(encoding="utf-8"), (
        "docs/cli.md is out of date: run `python docs/_scripts/cli_reference.py > docs/cli.md`")


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_and_option_is_in_the_reference(path: str) -> None:
    section = _reference_sections()[path]
    for param in COMMANDS[path].params:
        if isinstance(param, click.Option) and not param.hidden:
            for option in param.opts + param.secondary_opts:
                assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", section), f"{path}: {option}"


@pytest.mark.parametrize("path", sorted(p for p, c in COMMANDS.items() if p != "dpr-pg" and not c.hidden))
def test_every_command_is_explained_beyond_the_reference(path: str) -> None:
    prose = "\n".join(page.read_text(encoding="utf-8") for page in reading_order() if page != REFERENCE)
    assert re.search(rf"(?<![\w-]){re.escape(path)}(?![\w-])", prose), f"no page but the reference names {path}"


def test_every_exit_code_the_cli_uses_is_documented() -> None:
    table = REFERENCE.read_text(encoding="utf-8").split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| (\d+) \|", table, flags=re.M))
    source = (ROOT / "dpr_pg" / "cli.py").read_text(encoding="utf-8")
    used = set(re.findall(r"(?:sys\.exit|ctx\.exit|SystemExit)\((\d+)\)", source))
    used |= set(re.findall(r"^EX_\w+ = (\d+)", source, flags=re.M))  # EX_USAGE: every usage error
    used |= {"0", str(click.ClickException.exit_code)}
    assert used <= documented, f"exit codes used but not in docs/cli.md: {sorted(used - documented)}"


def test_every_public_name_is_in_the_api_reference() -> None:
    documented = set(re.findall(r"^::: dpr_pg\.(\w+)$", (DOCS / "api.md").read_text(encoding="utf-8"), flags=re.M))
    assert set(dpr_pg.__all__) - documented == set(), "names of dpr_pg.__all__ missing from docs/api.md"
