"""Native TensorRT executor: an engine built from the ONNX model (or a model.plan), run on CUDA streams.

- Build: the ONNX graph is parsed into a network and built with one optimisation
  profile per the batch settings: min 1 row, opt the largest preferred batch size,
  max ``max_batch_size`` (non-batch dims must be fixed, by the graph or model.yaml).
  ``tensorrt.fp16`` / ``int8`` set the builder flags (TensorRT 10; 11 builds strongly
  typed networks only, so precision must then be in the graph).
- Cache: the serialized engine is written under the engine cache dir, keyed by GPU
  name, TensorRT version, the model file's hash and the build settings, and loaded
  from there on the next start. A ``.plan``/``.engine`` model file is loaded as is.
- Run: one engine per version, one execution context, CUDA stream and set of device
  buffers (sized for the profile's max) per instance; inputs go up and outputs come
  down with async copies on that stream, one synchronisation per batch.

Without the ``tensorrt`` and ``cuda-python`` packages, or without a CUDA device,
loading raises ExecutorUnavailableError saying which is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading

import numpy as np

from gateway.core import datatypes
from gateway.core.model_config import ModelConfig
from gateway.core.types import TensorSpec
from gateway.executors.base import resolve_max_batch_size
from gateway.executors.base import ExecutorUnavailableError
from gateway.executors.onnxruntime_gpu import ShapeProfile, engine_cache_dir

_log = logging.getLogger(__name__)

PLAN_SUFFIXES = (".plan", ".engine", ".trt")


def load_runtime():
    """(tensorrt module, CUDA runtime bindings), or ExecutorUnavailableError naming what is missing."""
    try:
        import tensorrt as trt
    except Exception as exc:  # noqa: BLE001 - ImportError, or OSError for missing libnvinfer
        raise ExecutorUnavailableError(
            f"TensorRT is not available on this host ({type(exc).__name__}: {exc}); "
            "install gateway[gpu] on a host with an NVIDIA GPU, or use backend: onnxruntime"
        ) from None
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise ExecutorUnavailableError(
                "TensorRT is installed but cuda-python is not: install gateway[gpu]"
            ) from None
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count == 0:
        raise ExecutorUnavailableError(f"TensorRT is not available on this host: no CUDA device ({err.name if err else 'none'})")
    return trt, cudart


class _Cuda:
    """The few CUDA runtime calls the executor needs, raising on any error."""

    def __init__(self, cudart) -> None:
        self.rt = cudart

    def __call__(self, result):
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA error: {err.name}")
        return values[0] if len(values) == 1 else values


def onnx_input_shapes(path: str) -> dict[str, tuple[int, ...]]:
    import onnx

    model = onnx.load(path, load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    shapes = {}
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in dims)
    return shapes


def batch_profile(
    graph_shapes: dict[str, tuple[int, ...]], cfg: ModelConfig, max_batch_size: int
) -> ShapeProfile:
    """(min, opt, max) shape per input; raises ValueError for dims the profile cannot fix."""
    declared = {t.name: tuple(t.shape) for t in cfg.inputs}
    preferred = [s for s in cfg.dynamic_batching.preferred_batch_sizes if s <= max_batch_size]
    opt_rows = max(preferred) if preferred else max_batch_size
    profile: ShapeProfile = {}
    for name, shape in graph_shapes.items():
        rest = shape[1:] if max_batch_size > 0 else shape
        if name in declared and len(declared[name]) == len(rest):
            rest = tuple(d if d > 0 else declared[name][i] for i, d in enumerate(rest))
        if any(d < 1 for d in rest):
            raise ValueError(
                f"input '{name}' has dynamic dims {list(shape)}: TensorRT needs them fixed; "
                f"declare its shape in model.yaml inputs"
            )
        if max_batch_size > 0:
            profile[name] = ((1, *rest), (opt_rows, *rest), (max_batch_size, *rest))
        else:
            profile[name] = (rest, rest, rest)
    return profile


def cache_key(model_bytes: bytes, gpu_name: str, trt_version: str, settings: dict) -> str:
    h = hashlib.sha256()
    h.update(hashlib.sha256(model_bytes).digest())
    h.update(json.dumps({"gpu": gpu_name, "trt": trt_version, **settings}, sort_keys=True).encode())
    return h.hexdigest()[:32]


def _build(trt, logger, onnx_bytes: bytes, path: str, cfg: ModelConfig, profile: ShapeProfile) -> bytes:
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes, path):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT cannot parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.tensorrt.workspace_mib * 1024 * 1024)
    for wanted, flag in ((cfg.tensorrt.fp16, "FP16"), (cfg.tensorrt.int8, "INT8")):
        if not wanted:
            continue
        if not hasattr(trt.BuilderFlag, flag):
            raise ValueError(
                f"tensorrt.{flag.lower()}: TensorRT {trt.__version__} builds strongly typed networks only; "
                f"put the precision in the ONNX graph and remove this flag"
            )
        config.set_flag(getattr(trt.BuilderFlag, flag))
    opt = builder.create_optimization_profile()
    for name, (lo, mid, hi) in profile.items():
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ValueError("TensorRT failed to build an engine (see the TensorRT log lines above)")
    return bytes(serialized)


class TensorRTEngine:
    """One deserialized engine per model version; ``instance()`` gives each executor its own context."""

    def __init__(self, path: str, cfg: ModelConfig) -> None:
        self.trt, cudart = load_runtime()
        self.cuda = _Cuda(cudart)
        self.device = cfg.gpu_device
        self.cuda(cudart.cudaSetDevice(self.device))
        trt = self.trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        plan = self._plan(path, cfg)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ValueError(f"{path}: TensorRT could not deserialize the engine (built by another version or GPU?)")
        self.inputs, self.outputs = self._io_specs()
        if cfg.max_batch_size:
            for spec in self.inputs:
                rows = self.engine.get_tensor_profile_shape(spec.name, 0)[2][0] if spec.shape[:1] == (-1,) else None
                if rows is not None and rows < cfg.max_batch_size:
                    raise ValueError(
                        f"{path}: the engine's profile takes at most {rows} rows on input '{spec.name}' "
                        f"but max_batch_size is {cfg.max_batch_size}"
                    )

    def _plan(self, path: str, cfg: ModelConfig) -> bytes:
        with open(path, "rb") as fh:
            data = fh.read()
        if path.endswith(PLAN_SUFFIXES):
            return data
        graph = onnx_input_shapes(path)
        mbs = resolve_max_batch_size(cfg.max_batch_size, all(s and s[0] == -1 for s in graph.values()))
        profile = batch_profile(graph, cfg, mbs)
        props = self.cuda(self.cuda.rt.cudaGetDeviceProperties(self.device))
        gpu = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        settings = {
            "fp16": cfg.tensorrt.fp16, "int8": cfg.tensorrt.int8, "workspace_mib": cfg.tensorrt.workspace_mib,
            "profile": {n: [list(s) for s in p] for n, p in profile.items()},
        }
        key = cache_key(data, gpu, self.trt.__version__, settings)
        directory = engine_cache_dir(cfg.tensorrt.engine_cache_dir)
        cached = os.path.join(directory, f"{os.path.basename(os.path.dirname(os.path.dirname(path)))}-{key}.plan")
        if os.path.exists(cached):
            _log.info("TensorRT engine from cache %s", cached)
            with open(cached, "rb") as fh:
                return fh.read()
        _log.info("building TensorRT engine for %s on %s (TensorRT %s, profile %s)", path, gpu, self.trt.__version__, profile)
        plan = _build(self.trt, self.logger, data, path, cfg, profile)
        os.makedirs(directory, exist_ok=True)
        tmp = f"{cached}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(plan)
        os.replace(tmp, cached)  # another process building the same key writes the same bytes
        return plan

    def _io_specs(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        trt, engine = self.trt, self.engine
        inputs: list[TensorSpec] = []
        outputs: list[TensorSpec] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            spec = TensorSpec(name, datatypes.from_numpy(dtype), tuple(engine.get_tensor_shape(name)))
            (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
        return tuple(inputs), tuple(outputs)

    def instance(self) -> TensorRTExecutor:
        return TensorRTExecutor(self)


class TensorRTExecutor:
    def __init__(self, engine: TensorRTEngine) -> None:
        self._engine = engine
        self._cuda = engine.cuda
        trt, eng, rt = engine.trt, engine.engine, engine.cuda.rt
        self.inputs, self.outputs = engine.inputs, engine.outputs
        self._context = eng.create_execution_context()
        self._stream = self._cuda(rt.cudaStreamCreate())
        self._buffers: dict[str, int] = {}
        self._dtypes: dict[str, np.dtype] = {}
        try:
            for spec in self.inputs + self.outputs:
                name = spec.name
                self._dtypes[name] = np.dtype(trt.nptype(eng.get_tensor_dtype(name)))
                shape = tuple(eng.get_tensor_shape(name))
                if -1 in shape and eng.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    shape = tuple(eng.get_tensor_profile_shape(name, 0)[2])  # the profile's max
                elif -1 in shape:
                    shape = self._max_output_shape(name)
                nbytes = max(1, int(np.prod(shape)) * self._dtypes[name].itemsize)
                self._buffers[name] = int(self._cuda(rt.cudaMalloc(nbytes)))
                self._context.set_tensor_address(name, self._buffers[name])
        except Exception:
            self.close()
            raise

    def _max_output_shape(self, name: str) -> tuple[int, ...]:
        """Output size at the profile's max input shapes (TensorRT infers it from the inputs)."""
        eng = self._engine.engine
        for spec in self.inputs:
            self._context.set_input_shape(spec.name, tuple(eng.get_tensor_profile_shape(spec.name, 0)[2]))
        shape = tuple(self._context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise ValueError(f"output '{name}' has a data-dependent shape {list(shape)}: not supported")
        return shape

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> list[np.ndarray]:
        cuda, rt, ctx, stream = self._cuda, self._cuda.rt, self._context, self._stream
        cuda(rt.cudaSetDevice(self._engine.device))  # the runtime API's device is per thread
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        keep = []  # host arrays must outlive their async copies
        for spec in self.inputs:
            array = np.ascontiguousarray(feeds[spec.name], dtype=self._dtypes[spec.name])
            keep.append(array)
            if not ctx.set_input_shape(spec.name, array.shape):
                raise ValueError(f"input '{spec.name}' shape {list(array.shape)} is outside the engine's profile")
            cuda(rt.cudaMemcpyAsync(self._buffers[spec.name], array.ctypes.data, array.nbytes, h2d, stream))
        results = []
        for name in output_names:
            results.append(np.empty(tuple(ctx.get_tensor_shape(name)), dtype=self._dtypes[name]))
        if not ctx.execute_async_v3(int(stream)):
            raise RuntimeError("TensorRT failed to enqueue the batch")
        for name, out in zip(output_names, results):
            cuda(rt.cudaMemcpyAsync(out.ctypes.data, self._buffers[name], out.nbytes, d2h, stream))
        cuda(rt.cudaStreamSynchronize(stream))
        del keep
        return results

    def close(self) -> None:
        rt = self._cuda.rt
        for ptr in self._buffers.values():
            rt.cudaFree(ptr)
        self._buffers = {}
        if self._stream is not None:
            rt.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = None


def tensorrt_executors(path: str, cfg: ModelConfig) -> list[TensorRTExecutor]:
    engine = TensorRTEngine(path, cfg)
    return [engine.instance() for _ in range(cfg.instances)]
