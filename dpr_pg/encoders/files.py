"""What a fingerprint needs, read from a model folder's files: no torch, no transformers.

Precomputed vectors only need the pair named (:func:`dpr_pg.encoders.pair.fingerprint_of`), and
importing transformers and torch for that costs ~400 MiB of memory and seconds of start-up. For a
local folder in the layout ``save_pretrained`` writes (``config.json``, ``tokenizer.json`` with a
WordPiece vocabulary, ``tokenizer_config.json`` with ``model_max_length``), the vocabulary
transformers' DPR tokenizer would have is ``tokenizer.json``'s own, as long as every special or
added token the folder names is already in it (at its id); then the files say everything.
Anything else (a Hub id, ``vocab.txt`` only, a token transformers would add) gets ``None``, and the
caller loads the config and tokenizer with transformers as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

# transformers' DPRConfig defaults, for keys a config.json leaves out
_DEFAULTS = {"projection_dim": 0, "hidden_size": 768, "max_position_embeddings": 512}
# BertTokenizer's special tokens and their default text
_SPECIAL = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
            "mask_token": "[MASK]"}


class FolderParts(NamedTuple):
    """A model folder's vector size, longest input in tokens, and the tokenizer's vocabulary."""

    dim: int
    max_length: int
    vocabulary: dict[str, int]


def folder_parts(folder: str | Path) -> FolderParts | None:
    """The fingerprint's parts of a DPR model folder from its files; None when only transformers can say.

    Example:
        >>> folder_parts("/tmp/tiny/question").dim  # doctest: +SKIP
        768
    """
    root = Path(folder)
    try:
        model_config = _json(root / "config.json")
        tokenizer_json = _json(root / "tokenizer.json")
        tokenizer_config = _json(root / "tokenizer_config.json")
        special_map = _json(root / "special_tokens_map.json") if (root / "special_tokens_map.json").exists() else {}
    except (OSError, ValueError):
        return None
    if (not isinstance(model_config, dict) or model_config.get("model_type") != "dpr"
            or not isinstance(tokenizer_config, dict) or not isinstance(special_map, dict)
            or (root / "added_tokens.json").exists()):
        return None
    model = tokenizer_json.get("model") if isinstance(tokenizer_json, dict) else None
    vocabulary = model.get("vocab") if isinstance(model, dict) and model.get("type") == "WordPiece" else None
    model_max_length = tokenizer_config.get("model_max_length")
    if (not isinstance(vocabulary, dict) or isinstance(model_max_length, bool)
            or not isinstance(model_max_length, int) or not _all_known(vocabulary, tokenizer_json, tokenizer_config,
                                                                       special_map)):
        return None
    settings = {key: model_config.get(key, default) for key, default in _DEFAULTS.items()}
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in settings.values()):
        return None
    dim = settings["projection_dim"] if settings["projection_dim"] > 0 else settings["hidden_size"]
    return FolderParts(dim, min(model_max_length, settings["max_position_embeddings"]), vocabulary)


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _all_known(vocabulary: dict[str, int], tokenizer_json: dict[str, Any], tokenizer_config: dict[str, Any],
               special_map: dict[str, Any]) -> bool:
    """Whether every token the tokenizer would add is already in ``vocabulary`` (with ids: at that id)."""
    with_ids: list[tuple[Any, Any]] = [(t.get("content") if isinstance(t, dict) else None,
                                        t.get("id") if isinstance(t, dict) else None)
                                       for t in tokenizer_json.get("added_tokens") or []]
    decoder = tokenizer_config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        return False
    for index, token in decoder.items():
        try:
            with_ids.append((token.get("content") if isinstance(token, dict) else token, int(index)))
        except (TypeError, ValueError):
            return False
    names: list[Any] = []
    for source in (tokenizer_config, special_map):
        for key, default in _SPECIAL.items():
            value = source.get(key, default if source is tokenizer_config else None)
            if value is not None:
                names.append(value)
        for key in ("additional_special_tokens", "extra_special_tokens"):
            extra = source.get(key) or []
            names.extend(extra.values() if isinstance(extra, dict) else extra if isinstance(extra, list) else [extra])
    for token, index in with_ids:
        if not isinstance(token, str) or vocabulary.get(token) != index:
            return False
    for name in names:
        text = name.get("content") if isinstance(name, dict) else name
        if not isinstance(text, str) or text not in vocabulary:
            return False
    return True


__all__ = ["FolderParts", "folder_parts"]
