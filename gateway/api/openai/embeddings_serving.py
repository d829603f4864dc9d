"""Serving logic of ``POST /v1/embeddings``: tokenize, run through the model's batcher, pool.

An embedding request becomes ordinary tensor requests (``input_ids``, ``attention_mask`` and,
when the graph has it, ``token_type_ids``) submitted through the service like any v2 infer
call, so concurrent embedding requests share the model's dynamic batches, queue policy,
statistics and response cache. Pooling and normalisation happen here in numpy, on the
rows this request owns.

Padding, and why: the batcher joins requests only when their non-ragged trailing dims
match. When the model declares its token inputs ``ragged: true`` (the example does) the
batcher pads every batch to its longest member, so any lengths batch together and each
request is sent at its own length. Otherwise each request is padded to the next multiple of
``BUCKET_TOKENS``: requests of similar length then share a shape and batch together, at a
cost of at most ``BUCKET_TOKENS - 1`` padded positions per row (attention masks them out,
so results are unchanged).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from gateway.api.openai.embeddings_protocol import EmbeddingRequest, as_items
from gateway.core.errors import InvalidInputError, ModelNotReadyError
from gateway.core.model_config import EmbeddingConfig
from gateway.core.types import InferRequest, RequestedOutput
from gateway.service.facade import InferenceService, LoadedVersion

BUCKET_TOKENS = 16
# Above these sizes tokenizing / pooling moves off the event loop (tokenizers releases the GIL).
_INLINE_TEXT_CHARS = 2048
_INLINE_POOL_FLOATS = 1 << 18
_TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    model: str
    version: str
    vectors: np.ndarray  # [inputs, dimensions] float32
    prompt_tokens: int


def bucket_length(longest: int, ragged: bool) -> int:
    return longest if ragged else -(-longest // BUCKET_TOKENS) * BUCKET_TOKENS


def pool(hidden: np.ndarray, lengths: np.ndarray, cfg: EmbeddingConfig) -> np.ndarray:
    """[rows, tokens, dim] token vectors (or [rows, dim] already pooled) -> [rows, dim] float32."""
    if hidden.ndim == 2:
        vectors = hidden.astype(np.float32, copy=True)
    elif cfg.pooling == "cls":
        vectors = hidden[:, 0, :].astype(np.float32, copy=True)
    elif cfg.pooling == "last":
        vectors = hidden[np.arange(len(lengths)), lengths - 1, :].astype(np.float32, copy=True)
    else:
        keep = (np.arange(hidden.shape[1])[None, :] < lengths[:, None]).astype(np.float32)
        vectors = np.einsum("rtd,rt->rd", hidden.astype(np.float32, copy=False), keep) / lengths[:, None].astype(np.float32)
    if cfg.normalize:
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors


class EmbeddingServing:
    def __init__(self, service: InferenceService) -> None:
        self.service = service

    @staticmethod
    def embedding_config(loaded: LoadedVersion) -> EmbeddingConfig:
        cfg = loaded.config.embedding
        if cfg is None:
            raise InvalidInputError(
                f"model '{loaded.name}' does not serve embeddings (its model.yaml has no 'embedding:' section)", param="model"
            )
        return cfg

    async def create(self, req: EmbeddingRequest, route_key: str = "") -> EmbeddingResult:
        """The embeddings, on the version the model's routing picks (canary, fallback, shadows)."""
        if not self.service.accepting:
            raise ModelNotReadyError("server is shutting down")
        self.embedding_config(self.service.loaded(req.model))  # unknown -> 404, not ready -> 503, not embeddings -> 400
        return await self.service.routed_call(
            req.model, lambda loaded: self._create_on(loaded, req), lambda r: r.vectors, lambda r: r.version,
            route_key=route_key, user=req.user or "",
        )

    async def _create_on(self, loaded: LoadedVersion, req: EmbeddingRequest) -> EmbeddingResult:
        cfg = self.embedding_config(loaded)
        out_name = cfg.output or loaded.outputs[0].name
        if out_name not in loaded.output_index:
            raise InvalidInputError(f"model '{loaded.name}' has no output '{out_name}' (embedding.output)", param="model")
        dim = loaded.output_index[out_name].shape[-1]
        _check_dimensions(req.dimensions, dim, cfg, loaded.name)
        tokenizer = loaded.embedding_tokenizer  # loaded with the version (service/embedding.py)
        token_lists = await self._tokenize(tokenizer, as_items(req), loaded.name, cfg)
        vectors = await self._embed(loaded, cfg, out_name, token_lists)
        if req.dimensions is not None and req.dimensions != vectors.shape[1]:
            _check_dimensions(req.dimensions, vectors.shape[1], cfg, loaded.name)
            vectors = np.ascontiguousarray(vectors[:, : req.dimensions])
            if cfg.normalize:
                vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return EmbeddingResult(loaded.name, loaded.version, vectors, sum(len(t) for t in token_lists))

    # -- tokens ------------------------------------------------------------------------

    async def _tokenize(self, tokenizer, items, model: str, cfg: EmbeddingConfig) -> list[list[int]]:
        if isinstance(items[0], str):
            if sum(len(t) for t in items) <= _INLINE_TEXT_CHARS:
                encodings = tokenizer.encode_batch(items)
            else:
                encodings = await asyncio.to_thread(tokenizer.encode_batch, items)
            token_lists = [e.ids for e in encodings]
        else:
            vocab = tokenizer.get_vocab_size()
            for i, ids in enumerate(items):
                bad = next((t for t in ids if t < 0 or t >= vocab), None)
                if bad is not None:
                    raise InvalidInputError(f"input[{i}] has token id {bad}, outside the vocabulary of model '{model}' (0..{vocab - 1})", param="input")
            token_lists = items
        for i, ids in enumerate(token_lists):
            if len(ids) > cfg.max_tokens:
                raise InvalidInputError(
                    f"This model's maximum context length is {cfg.max_tokens} tokens, however input[{i}] has "
                    f"{len(ids)} tokens. Please shorten the input.",
                    param="input",
                )
        return token_lists

    # -- model -------------------------------------------------------------------------

    async def _embed(self, loaded: LoadedVersion, cfg: EmbeddingConfig, out_name: str, token_lists: list[list[int]]) -> np.ndarray:
        unknown = [s.name for s in loaded.inputs if s.name not in _TOKEN_INPUTS]
        if unknown or "input_ids" not in loaded.input_index:
            raise InvalidInputError(
                f"embedding model '{loaded.name}' takes inputs {[s.name for s in loaded.inputs]}; "
                f"the embeddings route feeds input_ids, attention_mask and token_type_ids",
                param="model",
            )
        # Similar lengths in one chunk waste the least padding; results go back in input order.
        order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
        chunk = loaded.max_batch_size if loaded.max_batch_size > 0 else len(order)
        groups = [order[i : i + chunk] for i in range(0, len(order), chunk)]
        parts = await asyncio.gather(*(self._run_group(loaded, cfg, out_name, [token_lists[i] for i in g]) for g in groups))
        vectors = np.empty((len(token_lists), parts[0].shape[1]), np.float32)
        for g, part in zip(groups, parts):
            vectors[g] = part
        return vectors

    async def _run_group(self, loaded: LoadedVersion, cfg: EmbeddingConfig, out_name: str, token_lists: list[list[int]]) -> np.ndarray:
        ragged = any(t.name == "input_ids" and t.ragged for t in loaded.config.inputs)
        lengths = np.array([len(t) for t in token_lists], np.int64)
        width = bucket_length(int(lengths.max()), ragged)
        ids = np.zeros((len(token_lists), width), np.int64)
        for row, t in enumerate(token_lists):
            ids[row, : len(t)] = t
        mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        inputs, datatypes = {}, {}
        for spec in loaded.inputs:
            dtype = np.int32 if spec.datatype == "INT32" else np.int64
            inputs[spec.name] = arrays[spec.name].astype(dtype, copy=False)
            datatypes[spec.name] = spec.datatype
        request = InferRequest(
            model=loaded.name, version=loaded.version, inputs=inputs, datatypes=datatypes, outputs=[RequestedOutput(out_name)],
        )
        response = await self.service.infer(request)
        hidden = response.outputs[out_name]
        if hidden.size <= _INLINE_POOL_FLOATS:
            return pool(hidden, lengths, cfg)
        return await asyncio.to_thread(pool, hidden, lengths, cfg)



def _check_dimensions(requested: int | None, dim: int, cfg: EmbeddingConfig, model: str) -> None:
    if requested is None or dim == -1 or requested == dim:
        return
    if not cfg.matryoshka:
        raise InvalidInputError(
            f"model '{model}' produces {dim}-dimensional embeddings and does not support other "
            f"'dimensions' (set embedding.matryoshka in its model.yaml if it was trained for truncation)",
            param="dimensions",
        )
    if requested > dim:
        raise InvalidInputError(f"'dimensions' {requested} exceeds the {dim} dimensions of model '{model}'", param="dimensions")
