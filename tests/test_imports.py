"""``import dpr_pg`` stays light: public names load on first use, and keep their meaning."""

from __future__ import annotations

import subprocess
import sys

import dpr_pg


def test_import_dpr_pg_loads_neither_sqlalchemy_nor_torch() -> None:
    probe = "import sys, dpr_pg; print(sorted(m for m in ('sqlalchemy', 'alembic', 'torch', 'transformers') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_every_public_name_resolves() -> None:
    missing = [name for name in dpr_pg.__all__ if getattr(dpr_pg, name, None) is None]
    assert missing == []


def test_all_lists_every_lazily_loaded_name_once() -> None:
    assert len(dpr_pg.__all__) == len(set(dpr_pg.__all__))
    assert set(dpr_pg.__all__) == set(dpr_pg._EXPORTS)


def test_a_public_name_is_the_object_its_module_defines() -> None:
    import importlib

    for name, module in dpr_pg._EXPORTS.items():
        assert getattr(dpr_pg, name) is getattr(importlib.import_module(module), name), name


def test_submodules_are_attributes_of_the_package_and_unknown_names_are_not() -> None:
    probe = ("import dpr_pg; print(dpr_pg.config.DEFAULT_DIM, dpr_pg.errors.DprPgError.__name__, "
             "callable(dpr_pg.aio.ask), hasattr(dpr_pg, 'no_such_name'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["768", "DprPgError", "True", "False"]


def test_a_function_keeps_its_name_when_its_module_of_the_same_name_is_imported() -> None:
    probe = ("import dpr_pg, dpr_pg.search.planner, dpr_pg.ingest.index, dpr_pg.db.doctor, dpr_pg.evaluation.evaluate; "
             "print([callable(f) and f.__name__ for f in (dpr_pg.search, dpr_pg.ingest, dpr_pg.doctor, dpr_pg.evaluate)])")
    names = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert names.strip() == "['search', 'ingest', 'doctor', 'evaluate']"
