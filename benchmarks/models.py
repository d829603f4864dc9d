"""The two benchmark models, built with onnx.helper from fixed seeds (same bytes every run).

- mlp: INPUT FP32 [-1,64] -> Gemm 64x256, Relu, Gemm 256x256, Relu, Gemm 256x8 -> OUTPUT [-1,8].
  Tiny: per-request overhead dominates.
- cnn: INPUT FP32 [-1,3,64,64] -> four 3x3 convs (32/64/64/64 channels, strides 1/2/2/2, each
  followed by Relu) -> global average pool -> Gemm 64x10 -> OUTPUT [-1,10]. Compute-bound.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import make_models  # noqa: E402  (the example repository's mlp is the benchmark's mlp)

CNN_CHANNELS = (32, 64, 64, 64)
CNN_STRIDES = (1, 2, 2, 2)
CNN_CLASSES = 10


@dataclass(frozen=True, slots=True)
class BenchModel:
    name: str
    input_shape: tuple[int, ...]  # without the batch dim
    output_shape: tuple[int, ...]
    path: str

    def sample(self, batch: int, seed: int = 0) -> np.ndarray:
        """Real, finite inputs (standard normal), the same for every system."""
        return np.random.default_rng(seed).standard_normal((batch, *self.input_shape)).astype(np.float32)


def cnn_graph(seed: int = 0) -> onnx.GraphProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev, in_ch = "INPUT", 3
    for i, (out_ch, stride) in enumerate(zip(CNN_CHANNELS, CNN_STRIDES)):
        fan_in = in_ch * 9
        w = (rng.standard_normal((out_ch, in_ch, 3, 3)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (rng.standard_normal(out_ch) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"CW{i}"), numpy_helper.from_array(b, f"CB{i}")]
        nodes.append(helper.make_node(
            "Conv", [prev, f"CW{i}", f"CB{i}"], [f"C{i}"],
            kernel_shape=[3, 3], strides=[stride, stride], pads=[1, 1, 1, 1],
        ))
        nodes.append(helper.make_node("Relu", [f"C{i}"], [f"R{i}"]))
        prev, in_ch = f"R{i}", out_ch
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["POOLED"]))
    nodes.append(helper.make_node("Flatten", ["POOLED"], ["FLAT"], axis=1))
    w = (rng.standard_normal((in_ch, CNN_CLASSES)) / np.sqrt(in_ch)).astype(np.float32)
    b = (rng.standard_normal(CNN_CLASSES) * 0.1).astype(np.float32)
    inits += [numpy_helper.from_array(w, "FW"), numpy_helper.from_array(b, "FB")]
    nodes.append(helper.make_node("Gemm", ["FLAT", "FW", "FB"], ["OUTPUT"]))
    return helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["batch", CNN_CLASSES])],
        initializer=inits,
    )


SPECS = {
    "mlp": (make_models.mlp_graph, (64,), (8,)),
    "cnn": (cnn_graph, (3, 64, 64), (CNN_CLASSES,)),
}


def write_models(directory: str, names: list[str]) -> dict[str, BenchModel]:
    """Write <directory>/<name>.onnx for each name; return their descriptions."""
    os.makedirs(directory, exist_ok=True)
    out = {}
    for name in names:
        build, in_shape, out_shape = SPECS[name]
        model = helper.make_model(build(), opset_imports=make_models.OPSET, producer_name="gateway-benchmarks")
        model.ir_version = make_models.IR_VERSION
        onnx.checker.check_model(model)
        path = os.path.join(directory, f"{name}.onnx")
        onnx.save(model, path)
        out[name] = BenchModel(name, in_shape, out_shape, path)
    return out
