"""A newcomer's first steps: the demo's printed next step, then the commands of the README and the docs in order.

Both run in fresh shells (no venv on PATH, none of the demo's variables), with the embedded server
and an unreachable Hub, as on a machine without network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from _doc_pages import ROOT, reading_order
from dpr_pg.db.embedded import start_server, stop_server

UNREACHABLE_HUB = "http://127.0.0.1:9"
# The documented commands that read or write collections, encoder pairs or the schema's dimension, where
# following the sections in order could collide. The others (doctor, index, status, worker,
# tiny-models, trained-models, init --sql) have their own tests.
WALKED = ("dpr-pg init", "dpr-pg ingest", "dpr-pg search", "dpr-pg eval")
NOT_RUN = {
    "--vector query.npy": "needs the reader's own query vector file",
    "--sql": "prints a script; tests/test_schema.py applies it",
    "--ray": "needs a Ray cluster; tests/test_ingest_ray.py runs it against one started there",
    "--partition-by-collection": "needs a new, empty database; tests/test_partitions.py runs it on one",
}


def _fresh_shell_env(root: Path) -> dict[str, str]:
    """What a new login shell has: system PATH, HOME and XDG_RUNTIME_DIR, and the data folder the demo used."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(root / "user"), "LANG": "C.UTF-8",
            "XDG_RUNTIME_DIR": os.environ["XDG_RUNTIME_DIR"],
            "DPR_PG_HOME": str(root / "dpr_pg_home"), "DPR_PG_CACHE_DIR": str(root / "cache"),
            "HF_ENDPOINT": UNREACHABLE_HUB, "HF_HOME": str(root / "hf")}


@pytest.fixture(scope="module")
def demo(server,
         trained_models: tuple[Path, Path]) -> Iterator[tuple[Path, list[str]]]:
    """`dpr-pg demo` run from the clone as `make demo` runs it; (its folder, the commands it printed)."""
    # Not under pytest's basetemp, which a concurrent pytest may close to other users: as root, the
    # embedded server runs as another user, who must reach its data folder.
    root = Path(tempfile.mkdtemp(prefix="dpr_pg_first_steps_"))
    env = _fresh_shell_env(root)  # the session's server has set XDG_RUNTIME_DIR
    for folder in trained_models:  # built already by the session fixture: hard links, not a rebuild
        shutil.copytree(folder, Path(env["DPR_PG_HOME"]) / "trained-models" / folder.name, copy_function=os.link)
    # Kept up meanwhile, so that each command joins it instead of starting and stopping its own.
    start_server(home=Path(env["DPR_PG_HOME"]))
    result = subprocess.run([sys.executable, "-m", "dpr_pg.cli", "demo"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Next, ask your own question"))
    commands = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        commands.append(line.strip())
    yield root, commands
    stop_server(home=Path(env["DPR_PG_HOME"]), force=True)
    shutil.rmtree(root, ignore_errors=True)


def test_the_demos_next_step_works_pasted_into_a_fresh_shell_in_the_clone(demo: tuple[Path, list[str]]) -> None:
    root, commands = demo
    assert commands[0].startswith("export DPR_PG_QUESTION_MODEL=")
    assert commands[-1].endswith("search '¿Quién pintó el Guernica?' --collection demo")
    result = subprocess.run(["bash", "-c", "\n".join(commands)], cwd=ROOT, env=_fresh_shell_env(root),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    first_hit = next(line for line in result.stdout.splitlines() if re.match(r"│\s+0 │", line))
    assert "Guernica" in first_hit


def _documented_commands() -> list[str]:
    """The `dpr-pg` lines of every ```sh block: README.md's, then each page's in the site's nav order."""
    blocks = [block for page in reading_order()
              for block in re.findall(r"^```sh\n(.*?)^```", page.read_text(encoding="utf-8"), flags=re.S | re.M)]
    return [line for block in blocks for line in block.splitlines() if line.startswith("dpr-pg ")]


@pytest.mark.slow
def test_the_documented_commands_run_in_order_after_the_demo_from_any_folder(demo: tuple[Path, list[str]],
                                                                         tmp_path: Path, tiny_reader: Path) -> None:
    root, printed = demo
    env = _fresh_shell_env(root)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # as `source .venv/bin/activate`
    for line in printed[:-1]:  # the demo's exports: its encoder pair
        name, value = line.removeprefix("export ").split("=", 1)
        env[name] = value.strip("'")
    env["DPR_PG_READER_MODEL"] = str(tiny_reader)  # as the Documents page exports it, for eval --reader
    elsewhere = tmp_path / "elsewhere"  # not the clone: sample files must come from the package
    elsewhere.mkdir()
    commands = _documented_commands()
    assert any(c.startswith("dpr-pg ingest") for c in commands) and any(c.startswith("dpr-pg eval") for c in commands)
    ran = []
    for command in commands:
        if not command.startswith(WALKED) or any(marker in command for marker in NOT_RUN):
            continue
        # The clone's examples (examples/documents) are read in the clone, as the docs say.
        folder = ROOT if "examples/" in command else elsewhere
        result = subprocess.run(["bash", "-c", command], cwd=folder, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        ran.append((command, result.stdout))
    ingests = [(command, json.loads(out)) for command, out in ran
               if command.startswith("dpr-pg ingest") and "--json" in command]
    first, report = ingests[0]
    assert "--collection sample" in first and report["inserted"] == 47  # new: no collision with 'demo'
    documents = [report for command, report in ingests if "examples/documents" in command]
    assert documents and documents[-1]["documents_unchanged"] == 2  # its second run parses nothing
    assert len(ran) >= 10
