"""Loading a DPR model and its fast tokenizer from the Hub or a local folder, with clear errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dpr_pg._fingerprint import folder_revision
from dpr_pg.errors import EncoderError

ENV_NAMES = {"question": "DPR_PG_QUESTION_MODEL", "passage": "DPR_PG_PASSAGE_MODEL"}


def load_parts(kind: str, name: str, revision: str | None) -> tuple[Any, Any, str, str | None]:
    """(model, tokenizer, source, resolved revision) for one side, with errors that say what to do.

    ``source`` is the Hub id, or the absolute path of a local folder (so that ``./m`` and
    ``/abs/m`` give the same fingerprint).
    """
    return _load(kind, name, revision, weights=True)


def load_light(kind: str, name: str, revision: str | None) -> tuple[Any, Any, str, str | None]:
    """(config, tokenizer, source, resolved revision): what a fingerprint needs, without the weights."""
    return _load(kind, name, revision, weights=False)


def output_dim(model_config: Any) -> int:
    """The vector size: DPR's projection when it has one, else the hidden size."""
    projection = int(getattr(model_config, "projection_dim", 0) or 0)
    return projection if projection > 0 else int(model_config.hidden_size)


def token_limit(model_config: Any, tokenizer: Any) -> int:
    """The longest input, in tokens, that both the tokenizer and the position embeddings allow."""
    return int(min(tokenizer.model_max_length, int(model_config.max_position_embeddings)))


def _load(kind: str, name: str, revision: str | None, *, weights: bool) -> tuple[Any, Any, str, str | None]:
    from transformers import (
        AutoConfig,
        DPRContextEncoder,
        DPRContextEncoderTokenizerFast,
        DPRQuestionEncoder,
        DPRQuestionEncoderTokenizerFast,
    )
    from transformers.utils.hub import cached_file, extract_commit_hash

    model_class, tokenizer_class = {
        "question": (DPRQuestionEncoder, DPRQuestionEncoderTokenizerFast),
        "passage": (DPRContextEncoder, DPRContextEncoderTokenizerFast),
    }[kind]

    def fail(reason: str) -> EncoderError:
        return EncoderError(
            f"cannot load the {kind} encoder {name!r}: {reason.rstrip('.')}. Expected a DPR {model_class.__name__} "
            "from the Hugging Face Hub or a local folder in from_pretrained format. To use a local copy, "
            f"set {ENV_NAMES[kind]}=/path/to/folder or pass {kind}_model='/path/to/folder' "
            "(`dpr-pg tiny-models DIR` writes a tiny offline pair for tests). Without network, "
            "HF_HUB_OFFLINE=1 skips the Hub's retries and uses the local cache only."
        )

    local = Path(name).expanduser()
    if local.is_dir():
        resolved = folder_revision(local)
        source = str(local.resolve())
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise fail(f"the folder {str(local)!r} does not exist")
    else:
        try:
            config_path = cached_file(name, "config.json", revision=revision)
        except Exception as e:  # OSError, HTTP and offline errors all mean: not loadable from here
            raise fail(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from e
        resolved = extract_commit_hash(config_path, None) or revision
        source = name
    pinned = None if local.is_dir() else resolved
    try:
        with quiet_progress():
            if weights:
                model, info = model_class.from_pretrained(source, revision=pinned, output_loading_info=True)
                model_config = model.config
            else:
                model_config = AutoConfig.from_pretrained(source, revision=pinned)  # its own model_type
            tokenizer = tokenizer_class.from_pretrained(source, revision=pinned)
    except Exception as e:
        raise fail(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from e
    if model_config.model_type != "dpr":
        raise fail(f"its config is a {model_config.model_type!r} model, not 'dpr'")
    if not weights:
        return model_config, tokenizer, source, resolved
    if info.get("missing_keys"):
        # A question checkpoint loaded as a passage encoder (or a plain BERT) would run on random weights.
        missing = sorted(info["missing_keys"])
        raise fail(f"{len(missing)} weights are missing from the checkpoint (e.g. {missing[0]!r}); "
                   f"is it a {model_class.__name__} checkpoint?")
    return model, tokenizer, source, resolved


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """No progress bars or load reports from transformers (our errors say it better); restored after."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if enabled:
            hf_logging.enable_progress_bar()
