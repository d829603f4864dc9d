"""examples/tiny_llm.py: the decoder's graph, its KV cache and masking, the tokenizer and chat template."""

from __future__ import annotations

import json

import jinja2
import numpy as np
import onnx
import pytest
from tokenizers import Tokenizer

import tiny_llm

PROMPT = "Hello! How are you today? Tell me a story about a small robot."


@pytest.fixture(scope="module")
def version_dir(tiny_llm_model):
    return tiny_llm_model / "1"


@pytest.fixture(scope="module")
def session(version_dir):
    return tiny_llm._session(version_dir)


@pytest.fixture(scope="module")
def tokenizer(version_dir):
    return Tokenizer.from_file(str(version_dir / "tokenizer.json"))


def run(session, ids, mask=None, positions=None, past=None) -> dict[str, np.ndarray]:
    ids = np.asarray(ids, np.int64)
    batch, seq = ids.shape
    past = past or tiny_llm.empty_past(session, batch)
    past_len = next(iter(past.values())).shape[2]
    if mask is None:
        mask = np.ones((batch, past_len + seq), np.int64)
    if positions is None:
        positions = np.broadcast_to(np.arange(past_len, past_len + seq, dtype=np.int64), (batch, seq))
    feeds = {"input_ids": ids, "attention_mask": np.asarray(mask, np.int64), "position_ids": np.ascontiguousarray(positions), **past}
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def as_past(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k.replace("present.", "past_key_values.", 1): v for k, v in outputs.items() if k.startswith("present.")}


def test_graph_passes_the_checker_and_has_the_optimum_layout(version_dir):
    model = onnx.load(str(version_dir / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    ins = {i.name: i for i in model.graph.input}
    outs = {o.name: o for o in model.graph.output}
    assert list(ins)[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert {f"past_key_values.{i}.{k}" for i in range(2) for k in ("key", "value")} <= set(ins)
    assert {"logits"} | {f"present.{i}.{k}" for i in range(2) for k in ("key", "value")} == set(outs)
    assert ins["input_ids"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    dims = [d.dim_param or d.dim_value for d in ins["past_key_values.0.key"].type.tensor_type.shape.dim]
    assert dims == ["batch_size", 2, "past_sequence_length", 32]
    config = json.loads((version_dir / "config.json").read_text())
    assert (config["n_layer"], config["n_head"], config["n_embd"], config["vocab_size"]) == (2, 2, 64, 512)


def test_kv_cache_step_equals_full_forward(session, tokenizer):
    ids = tokenizer.encode(PROMPT).ids
    full = run(session, [ids])
    prefill = run(session, [ids[:-1]])
    assert prefill["present.0.key"].shape == (1, 2, len(ids) - 1, 32)
    step = run(session, [ids[-1:]], past=as_past(prefill))
    assert step["present.1.value"].shape == (1, 2, len(ids), 32)
    np.testing.assert_allclose(step["logits"][0, -1], full["logits"][0, -1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(prefill["logits"][0], full["logits"][0, :-1], rtol=1e-4, atol=1e-4)
    # a chunk of several tokens on top of a past (chunked prefill) as well
    chunk = run(session, [ids[5:]], past=as_past(run(session, [ids[:5]])))
    np.testing.assert_allclose(chunk["logits"][0], full["logits"][0, 5:], rtol=1e-4, atol=1e-4)


def test_attention_is_causal(session, tokenizer):
    ids = tokenizer.encode(PROMPT).ids
    changed = list(ids)
    changed[-1] = (changed[-1] + 1) % 512
    a, b = run(session, [ids])["logits"][0], run(session, [changed])["logits"][0]
    np.testing.assert_allclose(a[:-1], b[:-1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(a[-1], b[-1])


def test_left_padded_batch_equals_rows_alone(session, tokenizer):
    long_ids = tokenizer.encode(PROMPT).ids
    short_ids = tokenizer.encode("What is the capital of France?").ids
    pad = len(long_ids) - len(short_ids)
    assert pad > 0
    ids = np.array([[0] * pad + short_ids, long_ids], np.int64)
    mask = np.array([[0] * pad + [1] * len(short_ids), [1] * len(long_ids)], np.int64)
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    batched = run(session, ids, mask, positions)
    alone_short, alone_long = run(session, [short_ids]), run(session, [long_ids])
    np.testing.assert_allclose(batched["logits"][0, pad:], alone_short["logits"][0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(batched["logits"][1], alone_long["logits"][0], rtol=1e-4, atol=1e-4)

    # one decode step for both rows on the padded cache
    nxt = [[7], [9]]
    step_mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
    step = run(session, nxt, step_mask, positions[:, -1:] + 1, past=as_past(batched))
    np.testing.assert_allclose(step["logits"][0, -1], run(session, [short_ids + [7]])["logits"][0, -1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(step["logits"][1, -1], run(session, [long_ids + [9]])["logits"][0, -1], rtol=1e-4, atol=1e-4)


def test_right_padded_batch_with_holes_in_the_cache(session, tokenizer):
    long_ids = tokenizer.encode(PROMPT).ids
    short_ids = tokenizer.encode("Paris.").ids
    pad = len(long_ids) - len(short_ids)
    ids = np.array([short_ids + [0] * pad, long_ids], np.int64)
    mask = np.array([[1] * len(short_ids) + [0] * pad, [1] * len(long_ids)], np.int64)
    positions = np.broadcast_to(np.arange(len(long_ids)), (2, len(long_ids)))
    batched = run(session, ids, mask, positions)
    np.testing.assert_allclose(batched["logits"][0, : len(short_ids)], run(session, [short_ids])["logits"][0], rtol=1e-4, atol=1e-4)
    # the short row's next token lands after the padding: the mask keeps the hole invisible
    step_mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
    step = run(session, [[11], [11]], step_mask, np.array([[len(short_ids)], [len(long_ids)]]), past=as_past(batched))
    np.testing.assert_allclose(step["logits"][0, -1], run(session, [short_ids + [11]])["logits"][0, -1], rtol=1e-4, atol=1e-4)


def test_reference_greedy_is_deterministic_and_not_one_repeated_token(version_dir, tokenizer):
    ids = tokenizer.encode(PROMPT).ids
    out = tiny_llm.reference_greedy(version_dir, ids, 32)
    assert len(out) == 32 and all(0 <= t < 512 for t in out)
    assert len(set(out)) >= 8, out
    assert tiny_llm.reference_greedy(version_dir, ids, 32) == out
    # the reference's first token is the full forward's argmax
    session = tiny_llm._session(version_dir)
    assert out[0] == int(np.argmax(run(session, [ids])["logits"][0, -1]))
    # stop ids end the output before the stop token
    assert tiny_llm.reference_greedy(version_dir, ids, 32, stop_ids=(out[3],)) == out[: out.index(out[3])]


def test_tokenizer_round_trips_text(tokenizer):
    for text in [PROMPT, "café naïve Straße 東京 😀", "  leading spaces\nand\ttabs  ", "def f(x): return x ** 2"]:
        enc = tokenizer.encode(text)
        assert tokenizer.decode(enc.ids) == text
    assert tokenizer.get_vocab_size() == 512
    assert [tokenizer.token_to_id(t) for t in tiny_llm.SPECIAL_TOKENS] == [0, 1, 2]
    # special tokens in text are single tokens (the chat template relies on it)
    assert tokenizer.encode("<|im_start|>user\nhi<|im_end|>").ids[0] == 1


def test_chat_template_renders(version_dir, tokenizer):
    config = json.loads((version_dir / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>" and config["bos_token"] == "<|endoftext|>"
    assert config["model_max_length"] == 256
    template = jinja2.Environment().from_string(config["chat_template"])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    text = template.render(messages=messages, add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    assert not template.render(messages=messages, add_generation_prompt=False).endswith("assistant\n")
    ids = tokenizer.encode(text).ids
    assert ids.count(1) == 3 and ids.count(2) == 2
    gen = json.loads((version_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [0, 2]


def test_write_tiny_llm_keeps_an_existing_model_yaml(tmp_path):
    model_dir = tiny_llm.write_tiny_llm(tmp_path, model_yaml="max_batch_size: 0\n# mine\n")
    assert (model_dir / "model.yaml").read_text().endswith("# mine\n")
    tiny_llm.write_tiny_llm(tmp_path)
    assert (model_dir / "model.yaml").read_text().endswith("# mine\n")
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == [
        "config.json", "generation_config.json", "model.onnx", "tokenizer.json", "tokenizer_config.json",
    ]
