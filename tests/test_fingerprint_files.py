"""A pair's fingerprint read from its folders' files is the one transformers' configs and tokenizers give."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dpr_pg.encoders import pair as pair_module
from dpr_pg.encoders.files import folder_parts
from dpr_pg.encoders.pair import fingerprint_of


@pytest.mark.parametrize("models", ["tiny_models", "trained_models"])
def test_the_files_give_the_fingerprint_transformers_gives(models: str, request: pytest.FixtureRequest) -> None:
    question, passage = request.getfixturevalue(models)
    assert folder_parts(question) is not None and folder_parts(passage) is not None  # the files say everything
    from_files = fingerprint_of(str(question), str(passage))
    assert from_files == pair_module._from_transformers(str(question), None, str(passage), None)
    assert from_files.id == pair_module._from_transformers(str(question), None, str(passage), None).id


def test_the_fingerprint_from_files_imports_neither_torch_nor_transformers(tiny_models: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    question, passage = tiny_models
    code = ("import sys, dpr_pg.cli; from dpr_pg.encoders.pair import fingerprint_of; "
            f"print(fingerprint_of({str(question)!r}, {str(passage)!r}).id); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DPR_PG_CACHE_DIR": str(tmp_path)})
    fingerprint, imported = result.stdout.split()
    assert (fingerprint, imported) == (fingerprint_of(str(question), str(passage)).id, "[]")


def test_a_token_transformers_would_add_sends_the_folder_to_transformers(tiny_models: tuple[Path, Path],
                                                                         tmp_path: Path) -> None:
    question = Path(shutil.copytree(tiny_models[0], tmp_path / "question"))
    config_path = question / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
    size = len(json.loads((question / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"])
    tokenizer_config.setdefault("added_tokens_decoder", {})[str(size)] = {
        "content": "[NUEVO]", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
        "special": True}
    config_path.write_text(json.dumps(tokenizer_config), encoding="utf-8")

    assert folder_parts(question) is None
    fingerprint = fingerprint_of(str(question), str(tiny_models[1]))
    assert fingerprint == pair_module._from_transformers(str(question), None, str(tiny_models[1]), None)
    assert fingerprint.tokenizer_hash != fingerprint_of(str(tiny_models[0]), str(tiny_models[1])).tokenizer_hash
