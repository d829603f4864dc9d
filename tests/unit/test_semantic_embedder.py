"""The ONNX sentence encoder built from safetensors equals the same math in numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from gateway.cache.semantic.embedder import MAX_TOKENS, build_or_load_onnx, packaged_model_dir

SENTENCES = [
    "What is the capital of France?",
    "A man is playing a guitar on the street, and a small crowd has gathered to listen.",
    "ok",
]


def _layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def _gelu(x):
    from math import erf, sqrt

    return 0.5 * x * (1 + np.vectorize(erf)(x / sqrt(2)))


def reference_embedding(weights: dict, config: dict, ids: list[int]) -> np.ndarray:
    """BERT forward pass + mean pooling + L2 norm, float64, one unpadded sentence."""
    W = {k: v.astype(np.float64) for k, v in weights.items()}
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]
    n = len(ids)
    x = W["embeddings.word_embeddings.weight"][ids] + W["embeddings.position_embeddings.weight"][:n]
    x = x + W["embeddings.token_type_embeddings.weight"][0]
    x = _layer_norm(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"], eps)
    d = x.shape[1] // heads
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def lin(t, name):
            return t @ W[p + name + ".weight"].T + W[p + name + ".bias"]

        q, k, v = (lin(x, f"attention.self.{m}").reshape(n, heads, d).transpose(1, 0, 2) for m in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(d)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(1, 0, 2).reshape(n, heads * d)
        a = _layer_norm(lin(ctx, "attention.output.dense") + x, W[p + "attention.output.LayerNorm.weight"],
                        W[p + "attention.output.LayerNorm.bias"], eps)
        x = _layer_norm(lin(_gelu(lin(a, "intermediate.dense")), "output.dense") + a,
                        W[p + "output.LayerNorm.weight"], W[p + "output.LayerNorm.bias"], eps)
    mean = x.mean(0)
    return mean / np.linalg.norm(mean)


@pytest.fixture(scope="module")
def weights_and_config():
    model_dir = packaged_model_dir()
    return load_file(str(model_dir / "model.safetensors")), json.loads((model_dir / "config.json").read_text())


def test_onnx_encoder_matches_the_numpy_reference(embedder, weights_and_config):
    weights, config = weights_and_config
    got = embedder.embed(SENTENCES)
    for text, vec in zip(SENTENCES, got):
        ids, _ = embedder.tokenize([text])
        ref = reference_embedding(weights, config, ids[0].tolist())
        cosine = float(vec @ ref / np.linalg.norm(vec))
        assert cosine >= 0.999, f"{text!r}: cosine {cosine:.5f} to the numpy reference"
        assert abs(np.linalg.norm(vec) - 1) < 1e-4


def test_padding_in_a_batch_does_not_change_an_embedding(embedder):
    alone = np.stack([embedder.embed([s])[0] for s in SENTENCES])
    batched = embedder.embed(SENTENCES)  # padded to the longest sentence
    assert np.min(np.sum(alone * batched, axis=1)) >= 0.9999


def test_tokenizer_does_not_pad_to_a_fixed_length(embedder):
    ids, mask = embedder.tokenize(["ok"])
    assert ids.shape == (1, 3)  # [CLS] ok [SEP]
    assert mask.tolist() == [[1, 1, 1]]
    long_ids, _ = embedder.tokenize(["word " * 1000])
    assert long_ids.shape[1] == MAX_TOKENS


def test_similar_sentences_are_closer_than_unrelated_ones(embedder):
    a, b, c = embedder.embed(["How do I bake bread?", "What is a recipe for baking bread?", "The stock market fell today."])
    assert a @ b > 0.7 > 0.3 > a @ c


def test_the_built_graph_is_reused(embedder, tmp_path):
    path = build_or_load_onnx(packaged_model_dir(), embedder.onnx_path.parent)
    assert path == embedder.onnx_path
    assert not list(embedder.onnx_path.parent.glob("*.tmp"))
