"""The wheel carries migrations/ and sql/: `pip install dpr-pg && dpr-pg init` works outside the checkout."""

from __future__ import annotations

import ast
import os
import re
import shutil
import site
import subprocess
import sys
import tomllib
import venv
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import sqlalchemy as sa

from dpr_pg.db import schema
from dpr_pg.ingest.documents.extra import PACKAGES as DOCUMENT_PARSERS

ROOT = Path(__file__).resolve().parent.parent


def _build_wheel(out: Path) -> Path:
    # Built from a copy of the tracked files: setuptools reuses a checkout's build/ folder, where
    # modules that were since moved or deleted would ride into the wheel.
    source = out.parent / "source"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out), str(source)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = out.glob("dpr_pg-*.whl")
    return wheel


def _imported_top_level_names() -> set[str]:
    """Every package dpr_pg imports, by its top-level import name (stdlib and dpr_pg itself left out)."""
    names = set(DOCUMENT_PARSERS)  # imported by name at run time, so that a missing parser says what to install
    for path in (ROOT / "dpr_pg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in {"dpr_pg", "__future__"}}


def _canonical(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def test_every_imported_package_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    declared = {_canonical(re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0]) for r in requirements}
    providers = packages_distributions()
    undeclared = {}
    for name in sorted(_imported_top_level_names()):
        fallback = [DOCUMENT_PARSERS[name][0]] if name in DOCUMENT_PARSERS else [name]
        distributions = {_canonical(d) for d in providers.get(name, fallback)}
        if not distributions & declared:
            undeclared[name] = sorted(distributions)
    assert undeclared == {}, f"imported but not declared in pyproject.toml: {undeclared}"


def test_wheel_installed_in_a_clean_venv_runs_init(tmp_path: Path, empty_url: str) -> None:
    wheel = _build_wheel(tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    assert "dpr_pg/_migrations/env.py" in names
    assert any(name.startswith("dpr_pg/_migrations/versions/0001") for name in names)
    assert "dpr_pg/_migrations/script.py.mako" in names
    assert "dpr_pg/_migrations/frozen.py" in names  # the migrations' own helpers: init below imports them
    assert {"dpr_pg/data/sample_es.jsonl", "dpr_pg/data/tiny_vocab.txt"} <= set(names)
    assert "dpr_pg/_migrations/versions/sql/0004_search.sql" in names  # the SQL 0004 ran, frozen
    assert "dpr_pg/_sql/search.sql" in names
    assert {"dpr_pg/ingest/documents/pdf.py", "dpr_pg/reader/__init__.py"} <= set(names)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    target = next((env_dir / "lib").glob("python*/site-packages"))
    # Dependencies (torch, transformers, ...) come from this interpreter's site-packages, added as a
    # plain path: its editable-install hooks are not processed, so dpr_pg is imported from the wheel.
    deps = [p for p in site.getsitepackages() if "site-packages" in p]
    (target / "deps.pth").write_text("\n".join(deps) + "\n")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    python = env_dir / "bin" / "python"

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": ""}
    located = subprocess.run(
        [str(python), "-c", "import dpr_pg, dpr_pg.db.schema as s; print(dpr_pg.__file__); print(s.resource_dir('migrations'))"],
        cwd=workdir, capture_output=True, text=True, env=env, check=True,
    ).stdout.splitlines()
    assert located[0].startswith(str(target))
    assert located[1] == str(target / "dpr_pg" / "_migrations")

    # The documented sample files, from a folder that is not the checkout.
    for which, name in (("corpus", "sample_es.jsonl"), ("questions", "sample_questions_es.jsonl")):
        printed = subprocess.run([str(python), "-m", "dpr_pg.cli", "sample-path", which], cwd=workdir,
                                 capture_output=True, text=True, env=env, check=True).stdout.strip()
        assert printed == str(target / "dpr_pg" / "data" / name)
        assert Path(printed).stat().st_size > 0

    result = subprocess.run(
        [str(python), "-m", "dpr_pg.cli", "--database-url", empty_url, "init"],
        cwd=workdir, capture_output=True, text=True, env=env,
    )
    assert result.returncode == 0, result.stderr
    assert f"-> {schema.head_revision()}" in result.stdout
    engine = sa.create_engine(empty_url)
    with engine.connect() as conn:
        assert schema.current_revision(conn) == schema.head_revision()
    engine.dispose()
