"""The semantic prompt cache in front of text generation.

A request of a model whose ``cache.semantic.enabled`` is set is looked up before it
is admitted: a close enough prompt of the same scope (gateway/cache/semantic/scope.py)
answers at once, as a finished stream, without touching the engine. A miss is
generated as usual and its answer is stored when every choice has finished by
``stop`` or ``length``; a cancelled or failed generation is never stored.

The embedding model is loaded on the first lookup (in a worker thread), so a
gateway whose models do not use the semantic cache never pays for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from gateway.cache.exact import ResponseCache
from gateway.cache.semantic import PromptQuery, SemanticCache, SemanticResult, prompt_query
from gateway.cache.semantic.embedder import Embedder
from gateway.cache.semantic.scope import SamplingValue, not_cacheable
from gateway.core.generation import GenerationEvent, GenerationRequest, GenerationStream, TextGenerator
from gateway.core.model_config import GenerationConfig, SemanticCacheConfig
from gateway.text.chat_template import ChatTemplate, ChatTemplateError

_log = logging.getLogger(__name__)

# Stands in for the last user turn when the chat template is rendered for the scope (private-use
# characters: no real prompt renders the same).
_LAST_TURN = "\ue000last user turn\ue000"
# What a cached answer is kept as: one entry per choice.
_TEXT, _TOKEN_IDS, _FINISH = "text", "token_ids", "finish_reason"
_STORABLE_FINISH = frozenset({"stop", "length"})


def _frame(req: GenerationRequest, chat_template: ChatTemplate | None) -> str | None:
    """What the model reads around the last user turn: the chat template rendered with that turn
    replaced by a marker, or for a completion its prompt alone. None: the template cannot render
    these messages (the engine says why when it admits the request)."""
    if req.messages is None:
        return "completion"
    if chat_template is None:
        return None
    messages = [dict(m) for m in req.messages]
    last_user = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    messages[last_user]["content"] = _LAST_TURN
    try:
        return "chat:" + chat_template.render(messages)
    except ChatTemplateError:
        return None


def _query(
    name: str, version: str, req: GenerationRequest, cfg: SemanticCacheConfig,
    chat_template: ChatTemplate | None, generation: GenerationConfig | None,
) -> PromptQuery | None:
    """The request's cache query (not cacheable: token-id prompt, logprobs, no user turn, opted out,
    sampling); None when the chat template rejects its messages."""
    if req.messages is not None:
        messages = [(str(m.get("role", "")), str(m.get("content", ""))) for m in req.messages]
    elif req.prompt is not None:
        messages = [("user", req.prompt)]
    else:
        return not_cacheable(name, version, "the prompt is token ids")
    if req.sampling.logprobs is not None:
        return not_cacheable(name, version, "the request asks for logprobs")  # a cached answer carries none
    if not any(role == "user" for role, _ in messages):
        return not_cacheable(name, version, "no user turn to embed")
    frame = _frame(req, chat_template)
    if frame is None:
        return None
    s = req.sampling
    sampling: dict[str, SamplingValue] = {
        "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "seed": s.seed,
        "stop": list(s.stop), "n": s.n, "max_tokens": s.max_tokens, "min_p": s.min_p,
        "presence_penalty": s.presence_penalty, "frequency_penalty": s.frequency_penalty,
        "repetition_penalty": s.repetition_penalty, "logit_bias": json.dumps(s.logit_bias),
    }
    # The model's settings that shape an answer without a new version (model.yaml edits).
    shaping = "" if generation is None else json.dumps(
        [generation.context_length, generation.default_max_tokens, list(generation.stop_token_ids)]
    )
    return prompt_query(
        name, version, messages, sampling, allow_sampling=cfg.allow_sampling, opt_out=not req.cache,
        prompt_format=f"{frame}\n{shaping}",
    )


class PromptCache:
    def __init__(self, responses: ResponseCache, embedder_factory: Callable[[], Embedder] = Embedder) -> None:
        self._responses = responses  # its Redis tier and metrics are shared with the exact cache
        self._embedder_factory = embedder_factory
        self._semantic: SemanticCache | None = None
        self._loading: asyncio.Lock | None = None
        self._stores: set[asyncio.Task] = set()
        self._failing = False  # logs the failure once per outage, not per request

    async def _cache(self) -> SemanticCache:
        if self._semantic is None:
            self._loading = self._loading or asyncio.Lock()
            async with self._loading:
                if self._semantic is None:
                    embedder = await asyncio.get_running_loop().run_in_executor(None, self._embedder_factory)
                    self._semantic = SemanticCache(embedder, self._responses.shared, self._responses.metrics)
                    _log.info("semantic cache ready (embedding dimension %d)", embedder.dim)
        return self._semantic

    async def generate(
        self,
        name: str,
        version: str,
        cfg: SemanticCacheConfig,
        engine: TextGenerator,
        req: GenerationRequest,
        *,
        chat_template: ChatTemplate | None = None,
        generation: GenerationConfig | None = None,
    ) -> GenerationStream:
        """``chat_template`` and ``generation`` are the model's: they belong to the scope."""
        query = _query(name, version, req, cfg, chat_template, generation)
        if query is None:
            stream = engine.submit(req)  # raises the template's error as a 400, as without the cache
            self._responses.metrics.semantic_for(name).bypassed += 1
            return stream
        if not query.cacheable:
            self._responses.metrics.semantic_for(name).bypassed += 1
            return engine.submit(req)
        try:
            cache = await self._cache()
            result = await cache.lookup(query, cfg)
        except Exception as exc:  # noqa: BLE001 - the cache never fails a request: generate as on a miss
            self._responses.metrics.semantic_for(name).errors += 1
            if not self._failing:
                _log.warning("semantic cache unavailable, generating without it: %s", exc)
            self._failing = True
            return engine.submit(req)
        if self._failing:
            _log.info("semantic cache answering again")
            self._failing = False
        if result.hit:
            return self._answer(name, version, engine.count_prompt_tokens(req), result)
        stream = engine.submit(req)
        stream.observe(self._keeper(cache, query, cfg, result, stream.choices))
        return stream

    @staticmethod
    def _answer(name: str, version: str, prompt_tokens: int, result: SemanticResult) -> GenerationStream:
        choices = result.answer
        assert choices is not None, "a hit carries its answer"
        stream = GenerationStream(name, version, prompt_tokens, len(choices), lambda: None)
        stream.cache_similarity = result.similarity
        for index, choice in enumerate(choices):
            stream.push(GenerationEvent(index, choice[_TEXT], tuple(choice[_TOKEN_IDS]), (), choice[_FINISH]))
        return stream

    def _keeper(
        self, cache: SemanticCache, query: PromptQuery, cfg: SemanticCacheConfig, result: SemanticResult, n: int
    ) -> Callable[[GenerationEvent], None]:
        """Collects the generated choices; stores them once all have finished cleanly."""
        texts: list[list[str]] = [[] for _ in range(n)]
        ids: list[list[int]] = [[] for _ in range(n)]
        finish: list[str | None] = [None] * n

        def observe(event: GenerationEvent) -> None:
            texts[event.index].append(event.text)
            ids[event.index].extend(event.token_ids)
            if event.finish_reason is None:
                return
            finish[event.index] = event.finish_reason
            if all(f in _STORABLE_FINISH for f in finish):
                answer = [{_TEXT: "".join(t), _TOKEN_IDS: i, _FINISH: f} for t, i, f in zip(texts, ids, finish)]
                task = asyncio.get_running_loop().create_task(cache.store(query, cfg, result, answer))
                self._stores.add(task)
                task.add_done_callback(self._stored)

        return observe

    def _stored(self, task: asyncio.Task) -> None:
        self._stores.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.warning("semantic cache store failed: %r", task.exception())

    async def close(self) -> None:
        if self._stores:
            await asyncio.wait(set(self._stores), timeout=5)
