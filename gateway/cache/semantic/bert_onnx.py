"""A BERT sentence encoder as an ONNX graph, built with onnx.helper from safetensors weights.

Inputs ``input_ids`` and ``attention_mask`` (int64, [batch, tokens]); output
``embedding`` (float32, [batch, hidden]): the encoder's last hidden states,
mean-pooled over the tokens the mask keeps and L2-normalised, which is what
sentence-transformers' all-MiniLM-L6-v2 computes. Token types are all 0 (one
segment). No torch: the weights are read with safetensors' numpy API.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17  # LayerNormalization
IR_VERSION = 8


@dataclass(frozen=True, slots=True)
class BertShape:
    hidden: int
    heads: int
    layers: int
    layer_norm_eps: float

    @classmethod
    def from_config(cls, config: dict) -> BertShape:
        if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only BERT with gelu and absolute position embeddings is supported")
        return cls(config["hidden_size"], config["num_attention_heads"], config["num_hidden_layers"], config["layer_norm_eps"])


class _Graph:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        self._n += 1
        out = f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def linear(self, x: str, weights: dict[str, np.ndarray], prefix: str) -> str:
        # torch Linear keeps W as [out, in]; MatMul wants [in, out].
        w = self.const(prefix + ".weight_t", weights[prefix + ".weight"].T.astype(np.float32))
        b = self.const(prefix + ".bias", weights[prefix + ".bias"].astype(np.float32))
        return self.op("Add", [self.op("MatMul", [x, w]), b])

    def layer_norm(self, x: str, weights: dict[str, np.ndarray], prefix: str, eps: float) -> str:
        scale = self.const(prefix + ".weight", weights[prefix + ".weight"].astype(np.float32))
        bias = self.const(prefix + ".bias", weights[prefix + ".bias"].astype(np.float32))
        return self.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=eps)


def build_bert_encoder(weights: dict[str, np.ndarray], shape: BertShape, pooled: bool = True) -> onnx.ModelProto:
    """``pooled=False``: output the encoder's ``last_hidden_state`` [batch, tokens, hidden] instead,
    as Hugging Face exports do (pooling then happens outside the graph)."""
    g = _Graph()
    h, heads = shape.hidden, shape.heads
    head_dim = h // heads
    i64 = lambda name, v: g.const(name, np.array(v, dtype=np.int64))  # noqa: E731

    # Embeddings: word + position + token type 0, then LayerNorm.
    words = g.const("word_embeddings", weights["embeddings.word_embeddings.weight"].astype(np.float32))
    positions = g.const("position_embeddings", weights["embeddings.position_embeddings.weight"].astype(np.float32))
    type0 = g.const("token_type_0", weights["embeddings.token_type_embeddings.weight"][0].astype(np.float32))
    tokens = g.op("Shape", ["input_ids"], start=1, end=2)  # [tokens], 1-D
    first_rows = g.op("Slice", [positions, i64("zero", [0]), tokens, i64("axis0", [0])])
    x = g.op("Add", [g.op("Gather", [words, "input_ids"], axis=0), first_rows])
    x = g.layer_norm(g.op("Add", [x, type0]), weights, "embeddings.LayerNorm", shape.layer_norm_eps)

    # Additive attention mask [batch, 1, 1, tokens]: 0 where kept, a large negative where padded.
    mask_f = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    neg = g.const("mask_negative", np.array(-1e9, dtype=np.float32))
    bias = g.op("Mul", [g.op("Sub", [g.const("one_f", np.array(1.0, np.float32)), mask_f]), neg])
    bias = g.op("Unsqueeze", [bias, i64("mask_axes", [1, 2])])

    split_heads = i64("split_heads", [0, 0, heads, head_dim])
    merge_heads = i64("merge_heads", [0, 0, h])
    scale = g.const("attn_scale", np.array(1.0 / np.sqrt(head_dim), dtype=np.float32))
    sqrt_half = g.const("sqrt_half", np.array(1.0 / np.sqrt(2.0), dtype=np.float32))
    half = g.const("half", np.array(0.5, dtype=np.float32))
    one = "one_f"

    for i in range(shape.layers):
        p = f"encoder.layer.{i}."

        def heads_of(name: str, perm: list[int]) -> str:
            return g.op("Transpose", [g.op("Reshape", [g.linear(x, weights, p + name), split_heads])], perm=perm)

        q = heads_of("attention.self.query", [0, 2, 1, 3])  # [b, heads, t, d]
        k = heads_of("attention.self.key", [0, 2, 3, 1])  # [b, heads, d, t]
        v = heads_of("attention.self.value", [0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), bias])
        context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        context = g.op("Reshape", [g.op("Transpose", [context], perm=[0, 2, 1, 3]), merge_heads])
        attended = g.layer_norm(
            g.op("Add", [g.linear(context, weights, p + "attention.output.dense"), x]),
            weights, p + "attention.output.LayerNorm", shape.layer_norm_eps,
        )
        inner = g.linear(attended, weights, p + "intermediate.dense")
        # Exact (erf) GELU, as BERT's "gelu".
        gelu = g.op("Mul", [g.op("Mul", [inner, half]), g.op("Add", [g.op("Erf", [g.op("Mul", [inner, sqrt_half])]), one])])
        x = g.layer_norm(
            g.op("Add", [g.linear(gelu, weights, p + "output.dense"), attended]),
            weights, p + "output.LayerNorm", shape.layer_norm_eps,
        )

    if not pooled:
        g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
        output = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "tokens", h])
        return _model(g, output)

    # Mean over kept tokens, then L2 normalisation.
    keep = g.op("Unsqueeze", [mask_f, i64("last_axis", [2])])
    summed = g.op("ReduceSum", [g.op("Mul", [x, keep]), i64("token_axis", [1])], keepdims=0)
    counts = g.op("Max", [g.op("ReduceSum", [keep, "token_axis"], keepdims=0), g.const("tiny", np.array(1e-9, np.float32))])
    mean = g.op("Div", [summed, counts])
    norm = g.op("Max", [g.op("ReduceL2", [mean], axes=[1], keepdims=1), "tiny"])  # axes an attribute until opset 18
    g.nodes.append(helper.make_node("Div", [mean, norm], ["embedding"]))
    return _model(g, helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", h]))


def _model(g: _Graph, output: onnx.ValueInfoProto) -> onnx.ModelProto:
    graph = helper.make_graph(
        g.nodes,
        "sentence_encoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
        ],
        [output],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="gateway-cache")
    model.ir_version = IR_VERSION
    return model
