"""Row operations on a device-resident KV cache: tiny ONNX graphs run with IO binding.

ONNX Runtime has no tensor-ops API, so moving rows of the cache on the device (a batch
joining, rows leaving) is done by running a small graph in its own session on the same
device, with inputs bound as the OrtValues already there and outputs bound to the
device: the cache never visits the host. Each graph takes every layer's key and value at
once, so one operation is one session call whatever the depth.

Both graphs work on the decoder layout ``[rows, heads, length, head_dim]`` with every
dim dynamic except heads and head_dim:
  join  out_i = Concat(Pad(old_i, old_pads), Pad(new_i, new_pads), axis=0)
        left-pads each side's length axis with zeros to a common width, stacks the rows;
  keep  out_i = Slice(Gather(past_i, rows, axis=0), start.., axis=2)
        keeps the listed rows, drops the leading columns none of them uses.
The pads, row indices and start are a few int64 values bound from the host.

Handing device buffers from the model's session to these (and back) is safe because a run
returns only once the device has finished it (ONNX Runtime synchronises the stream at the
end of each run by default; a change of that for speed must add a sync here). These
sessions keep a device memory arena of their own beside the model's: on a GPU, the cache
freed by a join returns to one arena while its replacement came from the other, so the
device may hold up to twice the largest cache (a shared allocator, onnxruntime's
``create_and_register_allocator_v2`` with ``session.use_env_allocators``, would avoid it;
not measured without a GPU).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from gateway.executors.onnxruntime import new_run_options

# Pad with pads as an input (13), Slice with starts/ends/axes as inputs (13), Gather (13):
# opset 13 runs on every provider and onnxruntime this project supports.
_OPSET = 13
_IR_VERSION = 8
_INT64_MAX = np.iinfo(np.int64).max


def _kv_info(name: str, elem: int, heads: int, head_dim: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, [f"{name}_rows", heads, f"{name}_length", head_dim])


def _model(nodes, inputs, outputs, inits, name: str) -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="gateway-kv-ops")
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def join_graph(tensors: int, kv_dtype: np.dtype, heads: int, head_dim: int) -> bytes:
    """Inputs ``old_{i}``, ``new_{i}``, ``old_pads``, ``new_pads`` (int64[8]); outputs ``out_{i}``."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(kv_dtype))
    nodes, inputs, outputs = [], [], []
    for i in range(tensors):
        old, new, out = f"old_{i}", f"new_{i}", f"out_{i}"
        inputs += [_kv_info(old, elem, heads, head_dim), _kv_info(new, elem, heads, head_dim)]
        outputs.append(_kv_info(out, elem, heads, head_dim))
        nodes += [
            helper.make_node("Pad", [old, "old_pads"], [f"{old}_padded"], mode="constant"),
            helper.make_node("Pad", [new, "new_pads"], [f"{new}_padded"], mode="constant"),
            helper.make_node("Concat", [f"{old}_padded", f"{new}_padded"], [out], axis=0),
        ]
    inputs += [helper.make_tensor_value_info(n, TensorProto.INT64, [8]) for n in ("old_pads", "new_pads")]
    return _model(nodes, inputs, outputs, [], "kv_join")


def keep_graph(tensors: int, kv_dtype: np.dtype, heads: int, head_dim: int) -> bytes:
    """Inputs ``past_{i}``, ``rows`` (int64[k]), ``start`` (int64[1]); outputs ``out_{i}``."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(kv_dtype))
    inits = [
        helper.make_tensor("ends", TensorProto.INT64, [1], [_INT64_MAX]),
        helper.make_tensor("length_axis", TensorProto.INT64, [1], [2]),
    ]
    nodes, inputs, outputs = [], [], []
    for i in range(tensors):
        past, out = f"past_{i}", f"out_{i}"
        inputs.append(_kv_info(past, elem, heads, head_dim))
        outputs.append(_kv_info(out, elem, heads, head_dim))
        nodes += [
            helper.make_node("Gather", [past, "rows"], [f"{past}_kept"], axis=0),
            helper.make_node("Slice", [f"{past}_kept", "start", "ends", "length_axis"], [out]),
        ]
    inputs += [
        helper.make_tensor_value_info("rows", TensorProto.INT64, ["kept"]),
        helper.make_tensor_value_info("start", TensorProto.INT64, [1]),
    ]
    return _model(nodes, inputs, outputs, inits, "kv_keep")


def _left_pads(by: int) -> np.ndarray:
    # ONNX Pad order: all begins, then all ends; axis 2 (length) gets ``by`` in front.
    return np.array([0, 0, by, 0, 0, 0, 0, 0], np.int64)


class KvRowOps:
    """The join and keep graphs in sessions on ``device`` ("cpu" or "cuda", with ``device_id``)."""

    def __init__(self, tensors: int, kv_dtype: np.dtype, heads: int, head_dim: int, device: str, device_id: int) -> None:
        self.tensors = tensors
        self.device = device
        self.device_id = device_id
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        # Plain CUDA even when the model runs on TensorRT: these shapes change with every join,
        # and TensorRT would build an engine per new shape.
        providers: list[str | tuple[str, dict]] = ["CPUExecutionProvider"]
        if device == "cuda":
            providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        self._join = ort.InferenceSession(join_graph(tensors, kv_dtype, heads, head_dim), options, providers=providers)
        self._keep = ort.InferenceSession(keep_graph(tensors, kv_dtype, heads, head_dim), options, providers=providers)
        self._outs = [f"out_{i}" for i in range(tensors)]
        self._run_options = new_run_options()

    def _run(self, session: ort.InferenceSession, values: dict[str, ort.OrtValue], host: dict[str, np.ndarray]) -> list[ort.OrtValue]:
        binding = session.io_binding()
        for name, value in values.items():
            binding.bind_ortvalue_input(name, value)
        for name, array in host.items():
            binding.bind_cpu_input(name, array)
        for name in self._outs:
            binding.bind_output(name, self.device, self.device_id)
        session.run_with_iobinding(binding, self._run_options)
        return list(binding.get_outputs())

    def join(self, old: list[ort.OrtValue], old_by: int, new: list[ort.OrtValue], new_by: int) -> list[ort.OrtValue]:
        """Rows of ``old`` then ``new``, each left-padded on the length axis by its ``*_by`` columns."""
        values = {f"old_{i}": v for i, v in enumerate(old)} | {f"new_{i}": v for i, v in enumerate(new)}
        return self._run(self._join, values, {"old_pads": _left_pads(old_by), "new_pads": _left_pads(new_by)})

    def keep(self, past: list[ort.OrtValue], rows: list[int], start: int) -> list[ort.OrtValue]:
        """Rows ``rows`` of ``past`` (in that order), from column ``start`` on."""
        values = {f"past_{i}": v for i, v in enumerate(past)}
        return self._run(self._keep, values, {"rows": np.asarray(rows, np.int64), "start": np.array([start], np.int64)})
