"""A tiny text-generation model for tests and the example repository, built without downloads.

    python examples/tiny_llm.py [REPOSITORY_DIR]   (default: examples/models; writes tiny-gpt/)

Its weights are random (fixed seed): the text it writes is gibberish. It exists so the
OpenAI routes, the generation engine and their tests run on a real ONNX decoder with a
KV cache and a real tokenizer, in a few seconds, with no torch and no network.

What it writes (``write_tiny_llm(repo_dir, name="tiny-gpt")``)::

    <repo_dir>/<name>/model.yaml
    <repo_dir>/<name>/1/model.onnx              the decoder (layout below)
    <repo_dir>/<name>/1/tokenizer.json          byte-level BPE (``tokenizers``)
    <repo_dir>/<name>/1/tokenizer_config.json   chat_template (Jinja2, ChatML), eos/bos, model_max_length
    <repo_dir>/<name>/1/generation_config.json  eos_token_id: [<|endoftext|>, <|im_end|>] (HF convention)
    <repo_dir>/<name>/1/config.json             GPT-2-style hyper-parameters (n_layer, n_head, n_embd, ...)

The tokenizer files sit in the VERSION directory next to ``model.onnx``, so a new version
can change its tokenizer together with its weights.

The decoder has the input/output layout that Hugging Face optimum's text-generation-with-past
export produces for GPT-2 (names and axes)::

    in   input_ids                  int64   [batch, seq]
         attention_mask             int64   [batch, past + seq]    1 = real token, 0 = padding
         position_ids               int64   [batch, seq]
         past_key_values.{i}.key    float32 [batch, n_head, past, head_dim]   (past may be 0)
         past_key_values.{i}.value  float32 [batch, n_head, past, head_dim]
    out  logits                     float32 [batch, seq, vocab]
         present.{i}.key / .value   float32 [batch, n_head, past + seq, head_dim]

Attention: the query at cache index ``past + s`` sees keys ``0 .. past + s`` (causal over the
cache index, not the position id) AND only keys whose ``attention_mask`` is 1; masked keys get
a -1e9 additive bias. So a batch may be left-padded (the usual for prefill) or carry holes
(right padding followed by decode steps) and each row still computes what it would alone.
Position ids are the caller's: for a padded row, ``cumsum(mask) - 1`` over its real tokens.

A real model has the same layout: ``optimum-cli export onnx --model gpt2 --task
text-generation-with-past out/`` writes ``model.onnx`` + ``tokenizer.json`` +
``tokenizer_config.json`` to copy into a version directory.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17  # LayerNormalization
IR_VERSION = 8  # readable by every onnxruntime this project supports

EOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [EOS, IM_START, IM_END]  # ids 0, 1, 2 (the trainer puts specials first)
VOCAB_SIZE = 512
MAX_POSITIONS = 256

# ChatML, as Qwen and many others ship it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Training text for the tokenizer: fixed (not read from the Python install) so that every
# machine trains the same vocabulary and tests compare the same token ids.
CORPUS = [
    "The quick brown fox jumps over the lazy dog. A model-serving daemon answers requests "
    "for predictions; it batches them, runs them on an inference runtime and sends the answers back.",
    "Hello! How are you today? I am fine, thank you. What would you like to talk about? "
    "Tell me a story about a small robot who learned to write poems in the evening.",
    "Once upon a time there was a little town by the sea. The people of the town went fishing "
    "every morning and came home every night. The children played on the beach and the old "
    "men told stories of storms, ships and treasure.",
    "In computer science, a cache is a component that stores data so that future requests for "
    "that data can be served faster. A cache hit occurs when the requested data can be found "
    "in a cache, while a cache miss occurs when it cannot.",
    "Python is a programming language that lets you work quickly and integrate systems more "
    "effectively. def main(): print('hello world') return 0. for i in range(10): total += i",
    "The weather today is sunny with a light breeze from the west. Tomorrow there will be "
    "clouds in the morning and rain in the afternoon; temperatures between 12 and 18 degrees.",
    "You are a helpful assistant. Answer the question of the user as well as you can, and say "
    "so when you do not know the answer. The user asks: what is the capital of France? Paris.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14 2.71 42. Symbols: + - * / = < > ( ) [ ] { } "
    "# @ & % $ ! ? : ; , . ' \" Unicode: café, naïve, Straße, 東京, 😀.",
]


# ---------------------------------------------------------------------------------- tokenizer


def train_tokenizer(out_dir: str | os.PathLike, vocab_size: int = VOCAB_SIZE, model_max_length: int = MAX_POSITIONS) -> Path:
    """Trains a byte-level BPE on :data:`CORPUS`; writes tokenizer.json + tokenizer_config.json.

    Returns the path of ``tokenizer.json``. Byte-level means every UTF-8 string encodes
    (no unknown token) and decodes back exactly.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    path = out / "tokenizer.json"
    _atomic_write(path, tok.to_str(pretty=False))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": EOS,
        "model_max_length": model_max_length,
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    _atomic_write(out / "tokenizer_config.json", json.dumps(config, indent=2))
    return path


# ---------------------------------------------------------------------------------- decoder


class _Graph:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: list[str] | None = None, **attrs) -> str:
        self._n += 1
        outs = outputs or [f"{op_type.lower()}_{self._n}"]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs[0]

    def linear(self, x: str, w: np.ndarray, b: np.ndarray, prefix: str) -> str:
        return self.op("Add", [self.op("MatMul", [x, self.const(prefix + ".w", w)]), self.const(prefix + ".b", b)])

    def layer_norm(self, x: str, d: int, prefix: str) -> str:
        scale = self.const(prefix + ".g", np.ones(d, np.float32))
        bias = self.const(prefix + ".b", np.zeros(d, np.float32))
        return self.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-5)


def _weights(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    return (rng.standard_normal(shape) * std).astype(np.float32)


def build_decoder(
    out_dir: str | os.PathLike,
    vocab_size: int = VOCAB_SIZE,
    n_layer: int = 2,
    n_head: int = 2,
    d_model: int = 64,
    max_positions: int = MAX_POSITIONS,
    seed: int = 0,
) -> Path:
    """Writes ``model.onnx`` (and ``config.json``) of a random GPT-2-style decoder; returns the ONNX path."""
    if d_model % n_head:
        raise ValueError(f"d_model {d_model} is not a multiple of n_head {n_head}")
    rng = np.random.default_rng(seed)
    head_dim = d_model // n_head
    g = _Graph()
    i64 = lambda name, v: g.const(name, np.array(v, dtype=np.int64))  # noqa: E731
    f32 = lambda name, v: g.const(name, np.array(v, dtype=np.float32))  # noqa: E731

    # Embeddings larger than GPT-2's init (std 0.02) and an untied output head, on purpose: with
    # random weights, a tied head maps each token's residual stream back onto the same token and
    # greedy decoding repeats it forever.
    wte = _weights(rng, (vocab_size, d_model), 1.0)
    wpe = _weights(rng, (max_positions, d_model), 0.5)
    x = g.op("Add", [g.op("Gather", [g.const("wte", wte), "input_ids"], axis=0), g.op("Gather", [g.const("wpe", wpe), "position_ids"], axis=0)])

    # Mask bias [batch, 1, seq, past+seq]: 0 where the query may look, -1e9 elsewhere.
    one = i64("one", 1)
    total = g.op("Squeeze", [g.op("Shape", ["attention_mask"], start=1, end=2)])  # past + seq (scalar)
    seq = g.op("Squeeze", [g.op("Shape", ["input_ids"], start=1, end=2)])
    past = g.op("Sub", [total, seq])
    query_index = g.op("Unsqueeze", [g.op("Range", [past, total, one]), i64("axis_last", [-1])])  # [seq, 1]
    key_index = g.op("Range", [i64("zero", 0), total, one])  # [past+seq]
    causal = g.op("LessOrEqual", [key_index, query_index])  # [seq, past+seq]
    keep = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=TensorProto.BOOL), i64("axes_1_2", [1, 2])])  # [b,1,1,t]
    allowed = g.op("And", [causal, keep])  # broadcast to [b, 1, seq, t]
    bias = g.op("Where", [allowed, f32("no_bias", 0.0), f32("masked_bias", -1e9)])

    scale = f32("attn_scale", 1.0 / np.sqrt(head_dim))
    split_heads = i64("split_heads", [0, 0, n_head, head_dim])  # Reshape's 0 copies batch and seq
    merge_heads = i64("merge_heads", [0, 0, d_model])
    std = 1.0 / np.sqrt(d_model)
    for layer in range(n_layer):
        p = f"h{layer}"
        h = g.layer_norm(x, d_model, p + ".ln_1")
        qkv = g.linear(h, _weights(rng, (d_model, 3 * d_model), std), np.zeros(3 * d_model, np.float32), p + ".attn.c_attn")
        q, k, v = (f"{p}.q", f"{p}.k", f"{p}.v")
        g.op("Split", [qkv, i64(p + ".split", [d_model] * 3)], [q, k, v], axis=-1)
        heads = lambda t: g.op("Transpose", [g.op("Reshape", [t, split_heads])], perm=[0, 2, 1, 3])  # noqa: E731
        key = g.op("Concat", [f"past_key_values.{layer}.key", heads(k)], [f"present.{layer}.key"], axis=2)
        value = g.op("Concat", [f"past_key_values.{layer}.value", heads(v)], [f"present.{layer}.value"], axis=2)
        scores = g.op("Mul", [g.op("MatMul", [heads(q), g.op("Transpose", [key], perm=[0, 1, 3, 2])]), scale])
        attn = g.op("Softmax", [g.op("Add", [scores, bias])], axis=-1)
        ctx = g.op("Reshape", [g.op("Transpose", [g.op("MatMul", [attn, value])], perm=[0, 2, 1, 3]), merge_heads])
        x = g.op("Add", [x, g.linear(ctx, _weights(rng, (d_model, d_model), std), np.zeros(d_model, np.float32), p + ".attn.c_proj")])

        h = g.layer_norm(x, d_model, p + ".ln_2")
        h = g.linear(h, _weights(rng, (d_model, 4 * d_model), std), _weights(rng, (4 * d_model,), 0.1), p + ".mlp.c_fc")
        h = g.op("Mul", [h, g.op("Sigmoid", [g.op("Mul", [h, f32(p + ".gelu_k", 1.702)])])])  # GELU (sigmoid form)
        out = g.linear(h, _weights(rng, (4 * d_model, d_model), 1.0 / np.sqrt(4 * d_model)), np.zeros(d_model, np.float32), p + ".mlp.c_proj")
        x = g.op("Add", [x, out])

    x = g.layer_norm(x, d_model, "ln_f")
    g.op("MatMul", [x, g.const("lm_head", _weights(rng, (d_model, vocab_size), 1.0))], ["logits"])

    batch, seq_axis, past_axis, total_axis = "batch_size", "sequence_length", "past_sequence_length", "past_sequence_length + sequence_length"
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, seq_axis]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, total_axis]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, [batch, seq_axis]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, seq_axis, vocab_size])]
    for layer in range(n_layer):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{layer}.{kind}", TensorProto.FLOAT, [batch, n_head, past_axis, head_dim]))
            outputs.append(helper.make_tensor_value_info(f"present.{layer}.{kind}", TensorProto.FLOAT, [batch, n_head, total_axis, head_dim]))

    graph = helper.make_graph(g.nodes, "tiny_gpt", inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="gateway-examples")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.onnx"
    tmp = out / "model.onnx.tmp"
    onnx.save(model, str(tmp))
    os.replace(tmp, path)  # the repository watcher never sees a half-written file
    config = {
        "model_type": "gpt2",
        "vocab_size": vocab_size,
        "n_layer": n_layer,
        "n_head": n_head,
        "n_embd": d_model,
        "n_positions": max_positions,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }
    _atomic_write(out / "config.json", json.dumps(config, indent=2))
    return path


# ---------------------------------------------------------------------------------- reference


def _session(model_dir: str | os.PathLike):
    import onnxruntime as ort

    path = Path(model_dir)
    if path.is_dir():
        path = path / "model.onnx"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def empty_past(session, batch: int) -> dict[str, np.ndarray]:
    """Zero-length ``past_key_values.*`` feeds for a first (prefill) call."""
    feeds = {}
    for inp in session.get_inputs():
        if inp.name.startswith("past_key_values."):
            _, n_head, _, head_dim = inp.shape
            feeds[inp.name] = np.zeros((batch, n_head, 0, head_dim), np.float32)
    return feeds


def reference_greedy(
    model_dir: str | os.PathLike, prompt_ids: list[int], max_new_tokens: int, stop_ids: tuple[int, ...] = (),
    session=None,
) -> list[int]:
    """Greedy decoding, batch 1: one prefill call, then one call per new token with the past.

    The ground truth the generation engine is compared with token for token. ``model_dir`` is
    a directory holding ``model.onnx`` (a version directory) or the file itself. Stops after
    ``max_new_tokens`` or at the first token in ``stop_ids`` (not included in the result).
    ``session``: one already made from ``model_dir`` (a loop of calls pays for it once).
    """
    session = session or _session(model_dir)
    present_names = [o.name for o in session.get_outputs() if o.name.startswith("present.")]
    ids = np.array([prompt_ids], np.int64)
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None, :],
        **empty_past(session, 1),
    }
    generated: list[int] = []
    while len(generated) < max_new_tokens:
        outputs = session.run(None, feeds)
        named = dict(zip([o.name for o in session.get_outputs()], outputs))
        token = int(np.argmax(named["logits"][0, -1]))
        if token in stop_ids:
            break
        generated.append(token)
        total = feeds["attention_mask"].shape[1] + 1
        feeds = {
            "input_ids": np.array([[token]], np.int64),
            "attention_mask": np.ones((1, total), np.int64),
            "position_ids": np.array([[total - 1]], np.int64),
            **{name.replace("present.", "past_key_values.", 1): named[name] for name in present_names},
        }
    return generated


# ---------------------------------------------------------------------------------- repository


MODEL_YAML = """max_batch_size: 0
generation:
  context_length: {max_positions}   # the decoder's position table
  default_max_tokens: 64
  max_sequences: 32
"""


def write_tiny_llm(repo_dir: str | os.PathLike, name: str = "tiny-gpt", model_yaml: str | None = None, version: int = 1, seed: int = 0,
                   max_positions: int = MAX_POSITIONS) -> Path:
    """Writes ``<repo_dir>/<name>/`` (model.yaml, <version>/model.onnx and tokenizer files); returns the model dir.

    An existing ``model.yaml`` is kept unless ``model_yaml`` is given (as make_models does).
    ``max_positions``: the longest sequence the decoder takes (its context length).
    """
    model_dir = Path(repo_dir) / name
    version_dir = model_dir / str(version)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(train_tokenizer(version_dir)))
    build_decoder(version_dir, vocab_size=tokenizer.get_vocab_size(), max_positions=max_positions, seed=seed)
    eos_ids = [tokenizer.token_to_id(EOS), tokenizer.token_to_id(IM_END)]
    _atomic_write(version_dir / "generation_config.json", json.dumps({"bos_token_id": eos_ids[0], "eos_token_id": eos_ids}, indent=2))
    cfg = model_dir / "model.yaml"
    if model_yaml is not None or not cfg.exists():
        _atomic_write(cfg, MODEL_YAML.format(max_positions=max_positions) if model_yaml is None else model_yaml)
    return model_dir


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
    print("wrote", write_tiny_llm(target))
