"""ONNX Runtime on the CUDA or TensorRT execution provider, with IO binding.

A batch's inputs are bound from host memory (ORT copies each to the device once),
outputs are bound to the device and come back in one copy per output after the
run, just before the scheduler scatters them: nothing crosses the bus per request.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

from gateway.core.model_config import TensorRTConfig
from gateway.executors.onnxruntime import PROVIDER_NAMES, OnnxRuntimeExecutor

ENGINE_CACHE_ENV = "GATEWAY_ENGINE_CACHE_DIR"

# Input name -> its (min, opt, max) shapes in a TensorRT optimization profile.
ShapeProfile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def engine_cache_dir(configured: str) -> str:
    return configured or os.environ.get(ENGINE_CACHE_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "gateway", "tensorrt"
    )


def _shape_list(shapes: dict[str, tuple[int, ...]]) -> str:
    """The TensorRT provider's profile syntax: ``name:1x64,other:1x3x224x224``."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in shape)}" for name, shape in shapes.items())


def provider_options(
    device_id: int, trt: TensorRTConfig, profile: ShapeProfile | None
) -> dict[str, dict]:
    """Options per ORT provider name; ``profile`` maps input -> (min, opt, max) shapes."""
    trt_options = {
        "device_id": device_id,
        "trt_fp16_enable": trt.fp16,
        "trt_int8_enable": trt.int8,
        "trt_max_workspace_size": trt.workspace_mib * 1024 * 1024,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": engine_cache_dir(trt.engine_cache_dir),
    }
    if profile:
        trt_options["trt_profile_min_shapes"] = _shape_list({n: s[0] for n, s in profile.items()})
        trt_options["trt_profile_opt_shapes"] = _shape_list({n: s[1] for n, s in profile.items()})
        trt_options["trt_profile_max_shapes"] = _shape_list({n: s[2] for n, s in profile.items()})
    return {
        PROVIDER_NAMES["cuda"]: {"device_id": device_id},
        PROVIDER_NAMES["tensorrt"]: trt_options,
    }


class OnnxRuntimeGpuExecutor(OnnxRuntimeExecutor):
    def __init__(
        self,
        path: str,
        *,
        providers: tuple[str, ...],
        intra_op_threads: int,
        device_id: int,
        trt: TensorRTConfig,
        profile: ShapeProfile | None = None,
    ) -> None:
        super().__init__(
            path,
            providers=providers,
            intra_op_threads=intra_op_threads,
            provider_options=provider_options(device_id, trt, profile),
        )
        self._device_id = device_id
        self.device = ("cuda", device_id)
        # String tensors live on the host only: such models take the plain path.
        self._bind = not (self._string_inputs or self._string_outputs)

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> list[np.ndarray]:
        if not self._bind:
            return super().run(feeds, output_names)
        binding = self._session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in output_names:
            binding.bind_output(name, "cuda", self._device_id)
        self._session.run_with_iobinding(binding, self._run_options)
        return binding.copy_outputs_to_cpu()
