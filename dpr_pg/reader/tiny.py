"""A tiny random extractive reader for offline tests: the files a Hub model has, the tiny encoders' tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

from dpr_pg.encoders.loading import quiet_progress
from dpr_pg.encoders.tiny import MAX_LENGTH, TINY_HEADS, TINY_HIDDEN, TINY_LAYERS, tiny_vocab


def make_tiny_reader(directory: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write a tiny random ``BertForQuestionAnswering`` and its fast WordPiece tokenizer to ``directory``.

    A 2-layer BERT (hidden size 64) with a span head: its answers carry no meaning, but it takes the
    same loading, windowing and scoring path as a real reader. The same seed gives the same files.

    Example:
        >>> reader_dir = make_tiny_reader("/tmp/tiny/reader")  # doctest: +SKIP
        >>> Reader.load(str(reader_dir))                       # doctest: +SKIP
    """
    import torch
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast


    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()  # the encoders' shipped vocabulary: the same seed gives the same files
    config = BertConfig(vocab_size=len(vocab), hidden_size=TINY_HIDDEN, num_hidden_layers=TINY_LAYERS,
                        num_attention_heads=TINY_HEADS, intermediate_size=4 * TINY_HIDDEN,
                        max_position_embeddings=MAX_LENGTH, pad_token_id=vocab["[PAD]"])
    with torch.random.fork_rng(devices=[]), quiet_progress():
        torch.manual_seed(seed)
        model = BertForQuestionAnswering(config).eval()
        with torch.no_grad():  # logits spread enough that spans and the null score differ clearly
            model.qa_outputs.weight.normal_(0.0, 1.0 / TINY_HIDDEN**0.5)
        model.save_pretrained(target)
    tokenizer = BertTokenizerFast(vocab=dict(vocab), do_lower_case=True, strip_accents=False,
                                  model_max_length=MAX_LENGTH)
    tokenizer.save_pretrained(target)
    return target
