"""Loading the reader: a question-answering model and its fast tokenizer, from the Hub or a local folder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dpr_pg.encoders.loading import Location, locate, quiet_progress
from dpr_pg.errors import ReaderError


def _failure(name: str) -> Callable[[str], ReaderError]:
    def fail(reason: str) -> ReaderError:
        return ReaderError(
            f"cannot load the reader {name!r}: {reason.rstrip('.')}. Expected an extractive question-answering "
            "model (a ...ForQuestionAnswering checkpoint with a fast tokenizer) from the Hugging Face Hub or a "
            "local folder in from_pretrained format. To use a local copy, set DPR_PG_READER_MODEL=/path/to/folder "
            "or pass reader_model='/path/to/folder' (`dpr-pg tiny-models DIR` writes a tiny offline reader to "
            "DIR/reader). Without network, HF_HUB_OFFLINE=1 uses the local Hugging Face cache only, without probing "
            "the Hub."
        )

    return fail


def locate_reader(name: str, revision: str | None = None) -> Location:
    """Where the reader ``name`` loads from, without loading it; :class:`ReaderError` if from nowhere.

    Example:
        >>> locate_reader("/tmp/tiny/reader").source  # doctest: +SKIP
        '/tmp/tiny/reader'
    """
    return locate(name, revision, _failure(name))


def load_reader_parts(name: str, revision: str | None) -> tuple[Any, Any, str, str | None]:
    """(model, tokenizer, source, resolved revision), with errors that say what to do.

    Example:
        >>> model, tokenizer, source, revision = load_reader_parts("/tmp/tiny/reader", None)  # doctest: +SKIP
    """
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    fail = _failure(name)
    source, resolved, pinned, cache_only = locate(name, revision, fail)
    try:
        with quiet_progress():
            model, info = AutoModelForQuestionAnswering.from_pretrained(
                source, revision=pinned, output_loading_info=True, local_files_only=cache_only)
            tokenizer = AutoTokenizer.from_pretrained(source, revision=pinned, local_files_only=cache_only)
    except Exception as e:
        raise fail(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from e
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        # A plain BERT loaded as a reader would answer with a randomly drawn span head.
        raise fail(f"{len(missing)} weights are missing from the checkpoint (e.g. {missing[0]!r}); is it a "
                   "checkpoint fine-tuned for extractive question answering?")
    if not getattr(tokenizer, "is_fast", False):
        raise fail("its tokenizer has no fast (Rust) version, which the reader needs for character offsets")
    return model, tokenizer, source, resolved
