"""The KV cache kept on the session's device between steps (ONNX Runtime IO binding).

``DeviceKv`` is the decoder's store when the model runs in an ONNX Runtime session: each
step binds the previous step's ``present.*`` outputs, left where the run put them, as this
step's ``past_key_values.*`` inputs, and binds the new ``present.*`` to the device again.
Per step only ``input_ids``, ``attention_mask`` and ``position_ids`` go in (a few bytes per
row) and ``logits`` come out; row moves (a batch joining, rows leaving) run as the small
graphs of ``kv_ops`` on the same device. On a CUDA or TensorRT provider that takes the
whole cache off the bus twice per token; on CPU it is the same arithmetic as ``HostKv``
without numpy conversions, so both paths give identical logits (tested).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from gateway.executors.base import Executor
from gateway.executors.decoder import DecoderLayout, HostKv, KvCacheDecoder, read_layout
from gateway.executors.kv_ops import KvRowOps
from gateway.executors.onnxruntime import OnnxRuntimeExecutor

KvCacheMode = Literal["auto", "host", "device"]


class DeviceKv:
    def __init__(self, executor: OnnxRuntimeExecutor, layout: DecoderLayout) -> None:
        self.executor = executor
        self.layout = layout
        self.device, self.device_id = executor.device
        self.ops = KvRowOps(len(layout.past_names), layout.kv_dtype, layout.heads, layout.head_dim, self.device, self.device_id)

    def run(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: list | None) -> tuple[np.ndarray, list]:
        lay = self.layout
        session = self.executor.session
        binding = session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        if lay.has_position_ids:
            binding.bind_cpu_input("position_ids", positions)
        if past is None:
            # A zero-length past has no bytes to copy: binding it from the host costs nothing.
            empty = lay.empty_past(ids.shape[0])
            for name in lay.past_names:
                binding.bind_cpu_input(name, empty)
        else:
            for name, value in zip(lay.past_names, past):
                binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in lay.present_names:
            binding.bind_output(name, self.device, self.device_id)
        session.run_with_iobinding(binding, self.executor.run_options)
        out = binding.get_outputs()
        return out[0].numpy(), list(out[1:])

    def join(self, old: list, old_by: int, new: list, new_by: int) -> list:
        return self.ops.join(old, old_by, new, new_by)

    def keep(self, past: list, rows: list[int], start: int) -> list:
        return self.ops.keep(past, rows, start)


def kv_on_device(executor: Executor, mode: KvCacheMode) -> bool:
    """Whether the decoder keeps its cache on the session's device.

    ``device`` needs an ONNX Runtime session (other executors have no IO binding: host).
    ``auto`` keeps it on the device for the CUDA and TensorRT providers, where the host path
    copies the whole cache across the bus twice per step, and on the host for CPU, where
    benchmarks/generation_bench.py measured the host path faster on tiny-gpt (the device path
    at a median ~0.87x its tokens/s: the bindings' Python calls, README "Text generation").
    """
    if not isinstance(executor, OnnxRuntimeExecutor) or mode == "host":
        return False
    return mode == "device" or executor.device[0] != "cpu"


def make_decoder(executor: Executor, mode: KvCacheMode = "auto") -> KvCacheDecoder:
    layout = read_layout(executor)  # raises DecoderLayoutError before any session is built
    if kv_on_device(executor, mode):
        assert isinstance(executor, OnnxRuntimeExecutor)  # kv_on_device checked it
        return KvCacheDecoder(executor, DeviceKv(executor, layout))
    return KvCacheDecoder(executor, HostKv(executor, layout))

