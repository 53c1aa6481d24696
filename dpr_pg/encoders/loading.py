"""Loading a DPR model and its fast tokenizer from the Hub or a local folder, with clear errors."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from dpr_pg.encoders.fingerprint import folder_revision
from dpr_pg.errors import EncoderError

ENV_NAMES = {"question": "DPR_PG_QUESTION_MODEL", "passage": "DPR_PG_PASSAGE_MODEL"}
# Long enough for a slow link's TCP handshake, short next to huggingface_hub's 30 s of retries.
HUB_PROBE_SECONDS = 3.0


def hub_endpoint() -> str:
    """The Hub's base URL as huggingface_hub uses it (``HF_ENDPOINT``, default https://huggingface.co)."""
    from huggingface_hub import constants  # lazy: it reads HF_* variables once, at first import

    return constants.ENDPOINT


def hub_offline() -> bool:
    """Whether huggingface_hub is switched off (``HF_HUB_OFFLINE=1``, read when it was first imported)."""
    from huggingface_hub import constants  # lazy: it reads HF_* variables once, at first import

    return bool(constants.HF_HUB_OFFLINE)


def hub_reachable(endpoint: str | None = None, *, timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether the Hub's host accepts a TCP connection within ``timeout`` seconds (name lookup included).

    One probe per endpoint and process. Behind an HTTP(S) proxy a direct connection says nothing,
    so the answer is True and huggingface_hub's own requests decide.

    Example:
        >>> hub_reachable("http://127.0.0.1:9")  # nothing listens on the discard port
        False
    """
    return _probe(endpoint or hub_endpoint(), timeout)


@functools.lru_cache(maxsize=8)
def _probe(endpoint: str, timeout: float) -> bool:
    url = urllib.parse.urlsplit(endpoint)
    host = url.hostname
    if not host:
        return True  # not a URL we can probe: leave it to huggingface_hub
    if urllib.request.getproxies() and not urllib.request.proxy_bypass(host):
        return True
    port = url.port or (80 if url.scheme == "http" else 443)
    answer: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answer.append(True)
        except OSError:
            answer.append(False)

    # A thread, because the socket timeout does not bound the name lookup.
    worker = threading.Thread(target=connect, name="dpr-pg-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(answer and answer[0])


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


MODEL_CLASSES = {"question": "DPRQuestionEncoder", "passage": "DPRContextEncoder"}
_COMMIT = re.compile(r"snapshots/([0-9a-f]{40})/")  # as transformers' extract_commit_hash


def failure(kind: str, name: str, reason: str) -> EncoderError:
    """The error for a model that cannot be loaded: what was expected, and where to get it."""
    reason = reason.rstrip(".")
    return EncoderError(
        f"cannot load the {kind} encoder {name!r}: {reason}. Expected a DPR {MODEL_CLASSES[kind]} "
        "from the Hugging Face Hub or a local folder in from_pretrained format. To use a local copy, "
        f"set {ENV_NAMES[kind]}=/path/to/folder or pass {kind}_model='/path/to/folder' "
        "(`dpr-pg trained-models DIR` writes a small trained offline pair). Without network, "
        "HF_HUB_OFFLINE=1 uses the local Hugging Face cache only, without probing the Hub.",
        reason=f"cannot load the {kind} encoder {name!r}: {reason}",
    )


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class Location(NamedTuple):
    """Where a model is loaded from: see :func:`locate`."""

    source: str  # the Hub id, or the folder's absolute path
    revision: str | None  # resolved: the Hub commit, or ``sha256:`` of a folder's files
    pinned: str | None  # the revision to ask from_pretrained for (None for a folder)
    cache_only: bool  # the Hub cannot be reached: load from the local Hugging Face cache only


def locate(name: str, revision: str | None, fail: Callable[[str], Exception]) -> Location:
    """Where the model named by a Hub id or a local folder loads from; ``fail(reason)`` is raised if nowhere.

    A Hub id must be loadable from here: from the Hub, or, when it cannot be reached (probed first,
    since huggingface_hub retries for about 30 s before it gives up), from the local cache. The
    source is the Hub id, or the absolute path of a local folder (so that ``./m`` and ``/abs/m``
    give the same fingerprint). Transformers is not imported: huggingface_hub's hf_hub_download is
    what its cached_file calls.

    Example:
        >>> locate("/tmp/tiny/question", None, ValueError).pinned  # doctest: +SKIP
    """
    local = Path(name).expanduser()
    if local.is_dir():
        return Location(str(local.resolve()), folder_revision(local), None, False)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise fail(f"the folder {str(local)!r} does not exist")
    from huggingface_hub import hf_hub_download  # lazy: ~0.3 s to import; cached paths never need it

    cache_only = not hub_offline() and not hub_reachable()
    try:
        config_path = hf_hub_download(name, "config.json", revision=revision, local_files_only=cache_only)
    except Exception as e:  # OSError, HTTP and offline errors all mean: not loadable from here
        if cache_only:
            raise fail(f"the Hugging Face Hub ({hub_endpoint()}) cannot be reached from here, "
                       "and the model is not in the local Hugging Face cache") from e
        raise fail(_first_line(e)) from e
    commit = _COMMIT.search(Path(config_path).as_posix())
    resolved = commit.group(1) if commit else revision
    return Location(name, resolved, resolved, cache_only)


def resolve_source(kind: str, name: str, revision: str | None) -> Location:
    """:func:`locate` for the question or passage encoder, failing with :func:`failure`'s error."""
    return locate(name, revision, lambda reason: failure(kind, name, reason))


def _load(kind: str, name: str, revision: str | None, *, weights: bool) -> tuple[Any, Any, str, str | None]:
    from transformers import (
        AutoConfig,
        DPRContextEncoder,
        DPRContextEncoderTokenizerFast,
        DPRQuestionEncoder,
        DPRQuestionEncoderTokenizerFast,
    )

    model_class, tokenizer_class = {
        "question": (DPRQuestionEncoder, DPRQuestionEncoderTokenizerFast),
        "passage": (DPRContextEncoder, DPRContextEncoderTokenizerFast),
    }[kind]
    source, resolved, pinned, cache_only = resolve_source(kind, name, revision)
    try:
        with quiet_progress():
            if weights:
                model, info = model_class.from_pretrained(source, revision=pinned, output_loading_info=True,
                                                          local_files_only=cache_only)
                model_config = model.config
            else:  # its own model_type
                model_config = AutoConfig.from_pretrained(source, revision=pinned, local_files_only=cache_only)
            tokenizer = tokenizer_class.from_pretrained(source, revision=pinned, local_files_only=cache_only)
    except Exception as e:
        raise failure(kind, name, _first_line(e)) from e
    if model_config.model_type != "dpr":
        raise failure(kind, name, f"its config is a {model_config.model_type!r} model, not 'dpr'")
    if not weights:
        return model_config, tokenizer, source, resolved
    if info.get("missing_keys"):
        # A question checkpoint loaded as a passage encoder (or a plain BERT) would run on random weights.
        missing = sorted(info["missing_keys"])
        raise failure(kind, name, f"{len(missing)} weights are missing from the checkpoint (e.g. {missing[0]!r}); "
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
