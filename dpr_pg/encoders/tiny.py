"""Tiny DPR encoder pairs for offline tests: random weights, a real Spanish WordPiece tokenizer.

The files are the ones a Hub model has (config.json, model.safetensors, tokenizer files), so the
code under test takes the same ``from_pretrained`` path as with the real IIC models.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

from dpr_pg.encoders.loading import quiet_progress
from dpr_pg.errors import ConfigError
from dpr_pg.validation import check_dim

TINY_HIDDEN = 64
TINY_LAYERS = 2
TINY_HEADS = 2
TINY_VOCAB = 1200
MAX_LENGTH = 512


def spanish_sentences() -> list[str]:
    """The Spanish sentences shipped with dpr_pg (tokenizer training text, benchmark passages).

    Example:
        >>> len(spanish_sentences()) > 50
        True
    """
    text = resources.files("dpr_pg.data").joinpath("spanish_sentences.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def tiny_vocab() -> dict[str, int]:
    """The tiny models' WordPiece vocabulary: token -> id, in the order of ``data/tiny_vocab.txt``.

    The file is what tokenizers' WordPiece trainer (``BertWordPieceTokenizer``, lowercase, accents
    kept, 1200 tokens, the five BERT special tokens first) made from :func:`spanish_sentences`. It is
    shipped rather than trained on each call because that trainer breaks ties between equally
    frequent merges in a different order in every process: the same seed would give other files.

    Example:
        >>> tiny_vocab()["[PAD]"], len(tiny_vocab())
        (0, 1200)
    """
    text = resources.files("dpr_pg.data").joinpath("tiny_vocab.txt").read_text(encoding="utf-8")
    tokens = text.splitlines()
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != TINY_VOCAB or len(tokens) != TINY_VOCAB:
        raise ConfigError(f"expected {TINY_VOCAB} distinct tokens in dpr_pg/data/tiny_vocab.txt, "
                         f"found {len(vocab)} of {len(tokens)} lines; reinstall dpr-pg")
    return vocab


# Gains chosen so that passages spread (mean pairwise cosine ~0.9, like a trained encoder) while
# staying stable: higher query/key gains make the random network chaotic under rounding.
VALUE_GAIN = 1.0
QUERY_GAIN = 1.5


def _spread_attention(model: Any, hidden: int) -> None:
    """Re-draw the attention weights so that different passages get clearly different vectors.

    With BERT's usual init (std 0.02) a random encoder maps every input to nearly the same
    vector, and any rounding reorders the neighbours; a trained encoder does not behave so.
    """
    import torch

    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith(("attention.self.value.weight", "attention.output.dense.weight")):
                weight.normal_(0.0, VALUE_GAIN / hidden**0.5)
            elif name.endswith(("attention.self.query.weight", "attention.self.key.weight")):
                weight.normal_(0.0, QUERY_GAIN / hidden**0.5)


def make_tiny_models(directory: str | os.PathLike[str], *, dim: int = 768, seed: int = 0) -> tuple[Path, Path]:
    """Write a tiny random DPR pair to ``directory/question`` and ``directory/passage``.

    The encoders are 2-layer BERTs (hidden size 64) whose ``pooler_output`` is projected to
    ``dim``, so their vectors fit a ``vector(dim)`` column. The same seed gives the same files.

    Example:
        >>> question_dir, passage_dir = make_tiny_models("/tmp/tiny", dim=768)  # doctest: +SKIP
        >>> pair = EncoderPair.load(str(question_dir), str(passage_dir))        # doctest: +SKIP
    """
    import torch
    from transformers import (
        DPRConfig,
        DPRContextEncoder,
        DPRContextEncoderTokenizerFast,
        DPRQuestionEncoder,
        DPRQuestionEncoderTokenizerFast,
    )

    check_dim(dim)
    root = Path(directory)
    vocab = tiny_vocab()
    config = DPRConfig(
        vocab_size=len(vocab),
        hidden_size=TINY_HIDDEN,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        intermediate_size=4 * TINY_HIDDEN,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=dim,
        pad_token_id=vocab["[PAD]"],
    )
    paths = []
    with torch.random.fork_rng(devices=[]), quiet_progress():
        torch.manual_seed(seed)
        for name, model_class, tokenizer_class in (
            ("question", DPRQuestionEncoder, DPRQuestionEncoderTokenizerFast),
            ("passage", DPRContextEncoder, DPRContextEncoderTokenizerFast),
        ):
            target = root / name
            target.mkdir(parents=True, exist_ok=True)
            model = model_class(config).eval()
            _spread_attention(model, TINY_HIDDEN)
            model.save_pretrained(target)
            tokenizer = tokenizer_class(
                vocab=dict(vocab), do_lower_case=True, strip_accents=False, model_max_length=MAX_LENGTH
            )
            tokenizer.save_pretrained(target)
            paths.append(target)
    return paths[0], paths[1]
