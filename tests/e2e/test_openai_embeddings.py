"""/v1/embeddings and /v1/models with the official ``openai`` client against the daemon subprocess.

The model is all-MiniLM-L6-v2 (examples/embedding_model.py). ``minilm`` declares its token
inputs ragged (any lengths batch together); ``minilm-plain`` does not (requests are padded to
16-token buckets) and is Matryoshka-enabled, to test ``dimensions``.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import shutil

import numpy as np
import openai
import pytest
from tokenizers import Tokenizer

from daemons import copy_model, launch

import make_models

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A cat sleeps on the sofa.",
    "What is the capital of France?",
    "Embeddings map text to vectors; similar meanings land close together in the space.",
    "hi",
]
PLAIN_YAML = (
    "max_batch_size: 16\n"
    "embedding:\n  pooling: mean\n  normalize: true\n  max_tokens: 256\n  matryoshka: true\n"
)


@pytest.fixture(scope="module")
def gw(tmp_path_factory, minilm_model, tiny_llm_model):
    root = tmp_path_factory.mktemp("openai-embeddings") / "models"
    make_models.write_repository(str(root), ["mlp"])
    copy_model(minilm_model.parent, root, minilm_model.name)
    shutil.copytree(minilm_model, root / "minilm-plain", symlinks=True)
    (root / "minilm-plain" / "model.yaml").write_text(PLAIN_YAML)
    copy_model(tiny_llm_model.parent, root, tiny_llm_model.name)
    gateway = launch(root)
    yield gateway
    gateway.terminate()


@pytest.fixture(scope="module")
def client(gw):
    with openai.OpenAI(base_url=f"http://{gw.http_url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def tokenizer(minilm_model):
    tok = Tokenizer.from_file(str(minilm_model / "1" / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def vectors(resp) -> np.ndarray:
    assert [d.index for d in resp.data] == list(range(len(resp.data)))
    return np.array([d.embedding for d in resp.data], dtype=np.float64)


def post(gw, doc) -> tuple[int, dict]:
    status, _, raw = gw.http("POST", "/v1/embeddings", json.dumps(doc).encode(), {"Content-Type": "application/json"})
    return status, json.loads(raw)


# -- /v1/models ------------------------------------------------------------------------


def test_models_lists_embedding_models_only(client):
    ids = [m.id for m in client.models.list().data]
    assert "minilm" in ids and "minilm-plain" in ids
    assert "mlp" not in ids  # a plain tensor model is not an OpenAI model
    card = client.models.retrieve("minilm")
    assert (card.id, card.object, card.owned_by) == ("minilm", "model", "gateway")
    assert card.created > 1_600_000_000


def test_models_unknown_is_openai_404(client, gw):
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert err.value.status_code == 404
    assert err.value.body["code"] == "model_not_found" and err.value.body["type"] == "invalid_request_error"
    status, _, raw = gw.http("GET", "/v1/models/mlp")
    assert status == 404 and json.loads(raw)["error"]["code"] == "model_not_found"


# -- embeddings ------------------------------------------------------------------------------


def test_shape_and_unit_norm(client):
    resp = client.embeddings.create(model="minilm", input=TEXTS)
    v = vectors(resp)
    assert v.shape == (len(TEXTS), 384)
    assert resp.model == "minilm" and resp.object == "list" and resp.data[0].object == "embedding"
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # meaning, not noise: the two animal sentences are closer to each other than to the capital question
    assert v[0] @ v[1] > v[0] @ v[2]


def test_matches_the_semantic_cache_embedder(client, embedder):
    """The gateway's pooling over last_hidden_state equals the in-graph pooling of the reference encoder."""
    v = vectors(client.embeddings.create(model="minilm", input=TEXTS))
    np.testing.assert_allclose(v, embedder.embed(TEXTS), atol=1e-5)


@pytest.mark.parametrize("model", ["minilm", "minilm-plain"])
def test_batch_equals_each_input_alone(client, model):
    together = vectors(client.embeddings.create(model=model, input=TEXTS))
    alone = np.vstack([vectors(client.embeddings.create(model=model, input=t)) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_bucketed_padding_gives_the_same_vectors(client):
    ragged = vectors(client.embeddings.create(model="minilm", input=TEXTS))
    bucketed = vectors(client.embeddings.create(model="minilm-plain", input=TEXTS))
    np.testing.assert_allclose(ragged, bucketed, atol=1e-5)


def test_base64_decodes_to_the_same_floats(gw):
    status, floats = post(gw, {"model": "minilm", "input": TEXTS[:2], "encoding_format": "float"})
    assert status == 200
    status, b64 = post(gw, {"model": "minilm", "input": TEXTS[:2], "encoding_format": "base64"})
    assert status == 200
    for f, b in zip(floats["data"], b64["data"]):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert decoded.shape == (384,)
        np.testing.assert_array_equal(decoded, np.array(f["embedding"], dtype=np.float32))


def test_token_array_input(client, tokenizer):
    by_text = vectors(client.embeddings.create(model="minilm", input=TEXTS[:3]))
    ids = [tokenizer.encode(t).ids for t in TEXTS[:3]]
    one = vectors(client.embeddings.create(model="minilm", input=ids[0]))
    many = vectors(client.embeddings.create(model="minilm", input=ids))
    np.testing.assert_allclose(one[0], by_text[0], atol=1e-6)
    np.testing.assert_allclose(many, by_text, atol=1e-6)


def test_usage_counts_the_tokenizers_tokens(client, tokenizer):
    resp = client.embeddings.create(model="minilm", input=TEXTS)
    expected = sum(len(tokenizer.encode(t).ids) for t in TEXTS)  # [CLS] and [SEP] included
    assert resp.usage.prompt_tokens == expected and resp.usage.total_tokens == expected


def test_dimensions(client, gw):
    full = vectors(client.embeddings.create(model="minilm-plain", input=TEXTS[:2]))
    short = vectors(client.embeddings.create(model="minilm-plain", input=TEXTS[:2], dimensions=128))
    assert short.shape == (2, 128)
    prefix = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    np.testing.assert_allclose(short, prefix, atol=1e-5)
    same = vectors(client.embeddings.create(model="minilm", input=TEXTS[:1], dimensions=384))
    assert same.shape == (1, 384)
    status, doc = post(gw, {"model": "minilm", "input": "x", "dimensions": 128})
    assert status == 400 and doc["error"]["param"] == "dimensions" and "384" in doc["error"]["message"]
    status, doc = post(gw, {"model": "minilm-plain", "input": "x", "dimensions": 1000})
    assert status == 400 and doc["error"]["param"] == "dimensions"


def test_concurrent_requests_share_batches(gw):
    """16 clients each sending single inputs: the model's statistics show batches of more than one request."""

    async def run() -> list[np.ndarray]:
        async with openai.AsyncOpenAI(base_url=f"http://{gw.http_url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
            async def one(i: int):
                resp = await c.embeddings.create(model="minilm", input=f"{TEXTS[i % len(TEXTS)]} #{i}")
                return np.array(resp.data[0].embedding)

            return await asyncio.gather(*(one(i) for i in range(96)))

    before = batch_counts(gw, "minilm")
    results = asyncio.run(run())
    assert len(results) == 96 and all(r.shape == (384,) for r in results)
    after = batch_counts(gw, "minilm")
    grown = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert sum(n for size, n in grown.items() if size > 1) > 0, f"no batch of more than one request: {grown}"


def batch_counts(gw, model: str) -> dict[int, int]:
    status, doc = gw.http_json("GET", f"/v2/models/{model}/stats")
    assert status == 200
    rows = doc["model_stats"][0].get("batch_stats", [])
    return {int(r["batch_size"]): int(r["compute_infer"]["count"]) for r in rows}


def test_many_inputs_in_one_request_are_split_into_batches(client):
    texts = [f"sentence number {i} about {TEXTS[i % 5]}" for i in range(40)]  # max_batch_size of minilm-plain is 16
    together = vectors(client.embeddings.create(model="minilm-plain", input=texts))
    assert together.shape == (40, 384)
    np.testing.assert_allclose(together[37], vectors(client.embeddings.create(model="minilm-plain", input=texts[37]))[0], atol=1e-5)


# -- bad requests -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "status", "param", "words"),
    [
        ({"model": "nope", "input": "x"}, 404, None, "unknown model 'nope'"),
        ({"model": "mlp", "input": "x"}, 400, "model", "does not serve embeddings"),
        ({"input": "x"}, 400, "model", "required"),
        ({"model": "minilm"}, 400, "input", "required"),
        ({"model": "minilm", "input": 5}, 400, "input", "array of strings"),
        ({"model": "minilm", "input": [1, "a"]}, 400, "input", "array of strings"),
        ({"model": "minilm", "input": [True]}, 400, "input", "array of strings"),
        ({"model": "minilm", "input": "x", "encoding_format": "int8"}, 400, "encoding_format", "'float' or 'base64'"),
        ({"model": "minilm", "input": "x", "dimensions": "3"}, 400, "dimensions", "positive integer"),
        ({"model": "minilm", "input": ""}, 400, "input", "empty"),
        ({"model": "minilm", "input": []}, 400, "input", "empty"),
        ({"model": "minilm", "input": ["ok", ""]}, 400, "input", "input[1] is empty"),
        ({"model": "minilm", "input": [[101, 102], []]}, 400, "input", "input[1] is empty"),
        ({"model": "minilm", "input": [101, 99999999]}, 400, "input", "outside the vocabulary"),
        ({"model": "minilm", "input": ["short", "word " * 300]}, 400, "input", "maximum context length is 256 tokens"),
        ({"model": "minilm", "input": ["x"] * 2049}, 400, "input", "at most 2048"),
    ],
)
def test_bad_requests_get_openai_errors(gw, doc, status, param, words):
    got, body = post(gw, doc)
    assert got == status, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and words in err["message"], err
    assert err["type"] == "invalid_request_error"


def test_bad_json_and_the_client_raises_typed_errors(gw, client):
    status, _, raw = gw.http("POST", "/v1/embeddings", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in json.loads(raw)["error"]["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="minilm", input="word " * 300)
    assert err.value.body["param"] == "input"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")
    # the daemon keeps serving after all of the above
    assert vectors(client.embeddings.create(model="minilm", input="still here")).shape == (1, 384)


def test_concurrent_bad_and_good_requests_do_not_mix(gw, client):
    def good(i):
        return vectors(client.embeddings.create(model="minilm", input=TEXTS[i % 5]))[0]

    def bad(i):
        return post(gw, {"model": "minilm", "input": [101, 10 ** 9]})[0]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        goods = list(pool.map(good, range(16)))
        bads = list(pool.map(bad, range(8)))
    assert bads == [400] * 8
    reference = vectors(client.embeddings.create(model="minilm", input=TEXTS))
    for i, v in enumerate(goods):
        np.testing.assert_allclose(v, reference[i % 5], atol=1e-5)


def test_an_embedding_model_without_its_tokenizer_fails_to_load(tmp_path, minilm_model, start_gateway):
    """The tokenizer loads with the version (as generation's does), so a missing one is a load
    error the repository index shows, not a 503 on the first request."""
    root = tmp_path / "models"
    make_models.write_repository(str(root), ["mlp"])
    copy_model(minilm_model.parent, root, minilm_model.name)
    (root / minilm_model.name / "1" / "tokenizer.json").unlink()
    gateway = start_gateway(root)
    status, rows = gateway.http_json("POST", "/v2/repository/index", {})
    row = next(r for r in rows if r["name"] == minilm_model.name)
    assert status == 200 and row["state"] == "UNAVAILABLE", rows
    assert "tokenizer.json" in row["reason"] and "embedding" in row["reason"], row
    status, doc = gateway.http_json("POST", "/v1/embeddings", {"model": minilm_model.name, "input": "hi"})
    assert status in (404, 503) and "error" in doc, (status, doc)
