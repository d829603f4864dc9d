"""Builds a model version's text-generation engine from its files (worker thread, at load)."""

from __future__ import annotations

import logging
import os

from gateway.core.model_config import GenerationConfig
from gateway.executors.base import Executor
from gateway.executors.decoder import DecoderLayoutError, read_layout
from gateway.executors.kv_device import kv_on_device, make_decoder
from gateway.scheduler.generation.engine import GenerationEngine
from gateway.text.chat_template import ChatTemplateError
from gateway.text.tokenizer import TokenizerLoadError, TextTokenizer

_log = logging.getLogger(__name__)


class GenerationLoadError(Exception):
    pass


def _load_tokenizer(model_file: str) -> TextTokenizer:
    try:
        return TextTokenizer.from_dir(os.path.dirname(model_file))
    except (TokenizerLoadError, ChatTemplateError) as exc:
        raise GenerationLoadError(f"generation: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a template that does not compile
        raise GenerationLoadError(f"generation: chat_template: {exc}") from None


def generation_problems(graph, model_file: str) -> list[str]:
    """What ``build_generation_engine`` would refuse, from the graph's signature (``.inputs``,
    ``.outputs``) and the version's files, without a runtime: every problem (``gateway check``)."""
    problems = []
    try:
        read_layout(graph)
    except DecoderLayoutError as exc:
        problems.append(f"{model_file}: generation: {exc}")
    try:
        _load_tokenizer(model_file)
    except GenerationLoadError as exc:
        problems.append(str(exc))
    return problems


def build_generation_engine(name: str, version: str, config: GenerationConfig, executor: Executor, model_file: str) -> GenerationEngine:
    try:
        decoder = make_decoder(executor, config.kv_cache)
    except DecoderLayoutError as exc:
        raise GenerationLoadError(f"{model_file}: generation: {exc}") from None
    tokenizer = _load_tokenizer(model_file)
    tokenizer.byte_table  # noqa: B018 - built here, at load, not by the first request on the event loop
    if not tokenizer.eos_token_ids and not config.stop_token_ids:
        _log.warning("%s:%s has no eos token: sequences end only at max_tokens or a stop string", name, version)
    layout = decoder.layout
    _log.info(
        "%s:%s generation: %d layers, %d heads x %d, %d B of KV cache per token (max_kv_tokens %d = %.1f MiB), "
        "max_sequences %d, context_length %d, KV cache on the %s",
        name, version, layout.layers, layout.heads, layout.head_dim, layout.bytes_per_token, config.max_kv_tokens,
        config.max_kv_tokens * layout.bytes_per_token / 2**20, config.max_sequences, config.context_length,
        "device" if kv_on_device(executor, config.kv_cache) else "host",
    )
    return GenerationEngine(name, version, config, decoder, tokenizer)
