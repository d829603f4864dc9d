"""ONNX Runtime executor (CPU, CUDA and TensorRT execution providers)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort

from gateway.core import datatypes
from gateway.core.types import TensorSpec
from gateway.executors.base import ExecutorUnavailableError

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


# Operators whose work can depend on input values: control flow and ORT's generation loops.
_VALUE_DEPENDENT_OPS = frozenset({"Loop", "Scan", "If", "BeamSearch", "GreedySearch", "Sampling", "WhisperBeamSearch"})
# Larger files are not parsed a second time to find them; a model that big is never inline-fast anyway.
_OPS_SCAN_MAX_BYTES = 64 << 20


def has_value_dependent_cost(path: str) -> bool:
    """Whether the model's top-level graph has an operator whose cost may follow input values
    (control flow nests inside those operators, so the top level is enough)."""
    if os.path.getsize(path) > _OPS_SCAN_MAX_BYTES:
        return True
    try:
        graph = onnx.load(path, load_external_data=False).graph
    except Exception:  # noqa: BLE001 - a file only onnxruntime reads (ORT format): assume the worst
        return True
    return any(node.op_type in _VALUE_DEPENDENT_OPS for node in graph.node)


def _spec(node) -> TensorSpec:
    # Symbolic or unknown dims are dynamic.
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
    return TensorSpec(node.name, datatypes.from_onnx(node.type), shape)


def resolve_providers(requested: tuple[str, ...]) -> list[str]:
    available = set(ort.get_available_providers())
    chosen = []
    for p in requested:
        name = PROVIDER_NAMES[p]
        if name not in available:
            raise ExecutorUnavailableError(
                f"execution provider '{p}' ({name}) is not available in this onnxruntime build "
                f"(available: {', '.join(sorted(available))}); install onnxruntime-gpu on a host with a GPU "
                f"or set providers: [cpu]"
            )
        chosen.append(name)
    return chosen


def new_run_options() -> ort.RunOptions:
    """RunOptions with ``gpu_graph_id`` set to its default (0). onnxruntime's Python
    ``run_with_iobinding`` reads that entry on every call, and an unset one costs a C++
    exception (~60-70 us on this machine kind, measured with 1.32) per bound run."""
    options = ort.RunOptions()
    options.add_run_config_entry("gpu_graph_id", "0")
    return options


class OnnxRuntimeExecutor:
    # The device the session's providers compute on, as IO binding names it: outputs bound
    # there stay there between runs (the KV cache of ``kv_device.DeviceKv``).
    device: tuple[str, int] = ("cpu", 0)

    def __init__(
        self,
        path: str,
        *,
        providers: tuple[str, ...] = ("cpu",),
        intra_op_threads: int = 1,
        provider_options: dict[str, dict] | None = None,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        names = resolve_providers(providers)
        # Plain provider names, or (name, options) pairs when options are given.
        chosen: list[str] | list[tuple[str, dict]] = names
        if provider_options:
            chosen = [(name, provider_options.get(name, {})) for name in names]
        self._session = ort.InferenceSession(path, sess_options=options, providers=chosen)
        self.inputs = tuple(_spec(i) for i in self._session.get_inputs())
        self.outputs = tuple(_spec(o) for o in self._session.get_outputs())
        self._string_inputs = {s.name for s in self.inputs if s.datatype == "BYTES"}
        self._string_outputs = {s.name for s in self.outputs if s.datatype == "BYTES"}
        self.data_dependent_cost = has_value_dependent_cost(path)
        # The next run's options. An abort sets their terminate flag even before that run starts
        # (its caller may leave while the batch waits for its thread); rearm() gives fresh ones
        # once an aborted run has returned, so the abort never reaches the run after.
        self._run_options = new_run_options()

    @property
    def session(self) -> ort.InferenceSession:
        """For callers that bind their own inputs and outputs (IO binding); same thread rules as ``run``."""
        return self._session

    @property
    def run_options(self) -> ort.RunOptions:
        """The options ``run`` passes, so a bound run honours ``abort`` too."""
        return self._run_options

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> list[np.ndarray]:
        for name in self._string_inputs & feeds.keys():
            # ORT string tensors hold str; the wire carries bytes.
            feeds[name] = np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(feeds[name])
        results = self._session.run(output_names, feeds, self._run_options)
        for i, name in enumerate(output_names):
            if name in self._string_outputs:
                results[i] = np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(results[i])
        return results

    def abort(self) -> None:
        """Thread-safe: onnxruntime checks the flag between kernels (Loop iterations too)."""
        self._run_options.terminate = True

    def rearm(self) -> None:
        self._run_options = new_run_options()

    def close(self) -> None:
        self._session = None
