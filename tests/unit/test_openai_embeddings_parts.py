"""The parts of /v1/embeddings that need no daemon: request parsing, pooling, padding, encoding."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from gateway.api.openai.embeddings_protocol import as_items, parse_request, response_document
from gateway.api.openai.embeddings_serving import BUCKET_TOKENS, bucket_length, pool
from gateway.api.openai.wire import json_bytes
from gateway.core.errors import ConfigError, InvalidInputError
from gateway.core.model_config import EmbeddingConfig, parse_model_config


def test_input_forms():
    assert as_items(parse_request({"model": "m", "input": "a"})) == ["a"]
    assert as_items(parse_request({"model": "m", "input": ["a", "b"]})) == ["a", "b"]
    assert as_items(parse_request({"model": "m", "input": [1, 2]})) == [[1, 2]]
    assert as_items(parse_request({"model": "m", "input": [[1], [2, 3]]})) == [[1], [2, 3]]


def test_unknown_fields_are_ignored_and_wrong_types_name_the_field():
    req = parse_request({"model": "m", "input": "a", "some_future_field": {"x": 1}, "user": "u"})
    assert req.encoding_format == "float" and req.dimensions is None
    for doc, param in [
        ({"model": 3, "input": "a"}, "model"),
        ({"model": "m", "input": 1.5}, "input"),
        ({"model": "m", "input": [[1, "2"]]}, "input"),
        ({"model": "m", "input": "a", "dimensions": 0}, "dimensions"),
        ({"model": "m", "input": "a", "dimensions": True}, "dimensions"),
        ({"model": "m", "input": "a", "encoding_format": "hex"}, "encoding_format"),  # null is the default
    ]:
        with pytest.raises(InvalidInputError) as err:
            parse_request(doc)
        assert err.value.param == param, doc
    with pytest.raises(InvalidInputError):
        parse_request(["not", "an", "object"])


def test_mean_pooling_ignores_padding_and_normalises():
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((2, 5, 3)).astype(np.float32)
    lengths = np.array([2, 5])
    got = pool(hidden, lengths, EmbeddingConfig(pooling="mean", normalize=False))
    np.testing.assert_allclose(got[0], hidden[0, :2].mean(0), rtol=1e-6)
    np.testing.assert_allclose(got[1], hidden[1].mean(0), rtol=1e-6)
    hidden[0, 2:] = 1e6  # padding positions never count
    np.testing.assert_allclose(pool(hidden, lengths, EmbeddingConfig(normalize=False))[0], got[0], rtol=1e-6)
    unit = pool(hidden, lengths, EmbeddingConfig())
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)


def test_cls_last_and_already_pooled():
    hidden = np.arange(2 * 4 * 2, dtype=np.float32).reshape(2, 4, 2)
    lengths = np.array([3, 4])
    np.testing.assert_array_equal(pool(hidden, lengths, EmbeddingConfig(pooling="cls", normalize=False)), hidden[:, 0])
    np.testing.assert_array_equal(pool(hidden, lengths, EmbeddingConfig(pooling="last", normalize=False)), [hidden[0, 2], hidden[1, 3]])
    flat = np.array([[3.0, 4.0]], np.float32)
    np.testing.assert_allclose(pool(flat, np.array([7]), EmbeddingConfig()), [[0.6, 0.8]])


def test_bucket_lengths():
    assert bucket_length(1, ragged=False) == BUCKET_TOKENS == 16
    assert [bucket_length(n, ragged=False) for n in (16, 17, 33)] == [16, 32, 48]
    assert bucket_length(17, ragged=True) == 17


def test_base64_is_little_endian_float32():
    v = np.array([[1.5, -2.0, 3.25]], np.float32)
    doc = response_document("m", v, "base64", 7)
    assert np.frombuffer(base64.b64decode(doc["data"][0]["embedding"]), "<f4").tolist() == [1.5, -2.0, 3.25]
    assert doc["usage"] == {"prompt_tokens": 7, "total_tokens": 7} and doc["object"] == "list"
    row = response_document("m", v, "float", 7)["data"][0]
    assert row["object"] == "embedding" and row["index"] == 0 and row["embedding"].tolist() == [1.5, -2.0, 3.25]
    assert json.loads(json_bytes(response_document("m", np.array([[0.1]], np.float32), "float", 7)))["data"][0]["embedding"] \
        == [float(np.float32(0.1))]  # the float32's exact value, as json.dumps of the list wrote it


def test_embedding_section_is_validated_with_the_field_named():
    cfg = parse_model_config({"embedding": {"pooling": "cls", "max_tokens": 128}}, file="m/model.yaml", default_name="m")
    assert cfg.embedding == EmbeddingConfig(pooling="cls", max_tokens=128)
    assert parse_model_config({}, file="m/model.yaml", default_name="m").embedding is None
    with pytest.raises(ConfigError) as err:
        parse_model_config({"embedding": {"pooling": "max"}}, file="m/model.yaml", default_name="m")
    assert err.value.field == "embedding.pooling"
    with pytest.raises(ConfigError) as err:
        parse_model_config({"embedding": {"normalise": True}}, file="m/model.yaml", default_name="m")
    assert err.value.field == "embedding.normalise" and err.value.reason == "unknown field"
