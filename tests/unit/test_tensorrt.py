"""TensorRT executor and the GPU providers of ONNX Runtime.

The profile, cache-key and provider-option logic runs everywhere; engine builds and
runs need an NVIDIA GPU with the tensorrt and cuda-python packages and skip otherwise.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest

import make_models
from gateway.core.model_config import ModelConfig, TensorRTConfig
from gateway.executors.base import ExecutorUnavailableError
from gateway.executors.onnxruntime_gpu import provider_options
from gateway.executors.tensorrt import batch_profile, cache_key, load_runtime, onnx_input_shapes


def gpu_reason() -> str:
    try:
        load_runtime()
    except ExecutorUnavailableError as exc:
        return str(exc)
    return ""


NO_GPU = gpu_reason()
needs_gpu = pytest.mark.skipif(bool(NO_GPU), reason=f"needs an NVIDIA GPU with TensorRT: {NO_GPU}")


def cfg(**fields) -> ModelConfig:
    return ModelConfig.model_validate({"name": "m", **fields})


@pytest.fixture(scope="module")
def mlp_path(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("trt") / "models"
    make_models.write_repository(str(root), ["mlp"])
    return str(root / "mlp" / "1" / "model.onnx")


def test_profile_spans_one_row_to_max_with_the_largest_preferred_size_as_opt(mlp_path):
    graph = onnx_input_shapes(mlp_path)
    assert graph == {"INPUT": (-1, 64)}
    c = cfg(max_batch_size=32, dynamic_batching={"preferred_batch_sizes": [4, 16, 64]})
    assert batch_profile(graph, c, 32) == {"INPUT": ((1, 64), (16, 64), (32, 64))}
    assert batch_profile(graph, cfg(max_batch_size=8), 8) == {"INPUT": ((1, 64), (8, 64), (8, 64))}


def test_dynamic_non_batch_dims_need_a_declared_shape():
    graph = {"TOKENS": (-1, -1)}
    with pytest.raises(ValueError, match="TOKENS.*declare its shape"):
        batch_profile(graph, cfg(), 8)
    declared = cfg(inputs=[{"name": "TOKENS", "datatype": "INT64", "shape": [128]}])
    assert batch_profile(graph, declared, 8)["TOKENS"] == ((1, 128), (8, 128), (8, 128))
    assert batch_profile({"X": (3, 4)}, cfg(), 0) == {"X": ((3, 4), (3, 4), (3, 4))}


def test_engine_cache_key_changes_with_each_part():
    base = cache_key(b"model", "NVIDIA H100", "10.9.0", {"fp16": False})
    assert base == cache_key(b"model", "NVIDIA H100", "10.9.0", {"fp16": False})
    assert len({
        base,
        cache_key(b"model2", "NVIDIA H100", "10.9.0", {"fp16": False}),
        cache_key(b"model", "NVIDIA A10", "10.9.0", {"fp16": False}),
        cache_key(b"model", "NVIDIA H100", "10.10.0", {"fp16": False}),
        cache_key(b"model", "NVIDIA H100", "10.9.0", {"fp16": True}),
    }) == 5


def test_tensorrt_provider_options_carry_flags_cache_and_profile(tmp_path):
    trt = TensorRTConfig(fp16=True, workspace_mib=256, engine_cache_dir=str(tmp_path))
    opts = provider_options(1, trt, {"INPUT": ((1, 64), (16, 64), (32, 64))})
    t = opts["TensorrtExecutionProvider"]
    assert t["device_id"] == 1 and t["trt_fp16_enable"] is True and t["trt_int8_enable"] is False
    assert t["trt_max_workspace_size"] == 256 * 1024 * 1024
    assert t["trt_engine_cache_enable"] is True and t["trt_engine_cache_path"] == str(tmp_path)
    assert (t["trt_profile_min_shapes"], t["trt_profile_opt_shapes"], t["trt_profile_max_shapes"]) == (
        "INPUT:1x64", "INPUT:16x64", "INPUT:32x64")
    assert opts["CUDAExecutionProvider"] == {"device_id": 1}


def test_model_yaml_rejects_unknown_tensorrt_fields():
    with pytest.raises(Exception, match="fp8"):
        cfg(tensorrt={"fp8": True})


@pytest.mark.skipif(not NO_GPU, reason="this host has a GPU with TensorRT")
def test_without_a_gpu_loading_says_not_available():
    with pytest.raises(ExecutorUnavailableError, match="not available"):
        load_runtime()


def reference(path: str, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(["OUTPUT"], {"INPUT": x})[0]


@pytest.mark.gpu
@needs_gpu
def test_engine_builds_runs_and_is_cached(mlp_path, tmp_path, caplog):
    from gateway.executors.tensorrt import tensorrt_executors

    c = cfg(max_batch_size=16, instances=2, dynamic_batching={"preferred_batch_sizes": [8]},
            tensorrt={"engine_cache_dir": str(tmp_path)})
    executors = tensorrt_executors(mlp_path, c)
    assert [s.shape for s in executors[0].inputs] == [(-1, 64)]
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    for ex in executors:  # each instance has its own context, stream and buffers
        np.testing.assert_allclose(ex.run({"INPUT": x}, ["OUTPUT"])[0], reference(mlp_path, x), rtol=1e-3, atol=1e-3)
    plans = os.listdir(tmp_path)
    assert len(plans) == 1 and plans[0].endswith(".plan")
    for ex in executors:
        ex.close()
    caplog.set_level("INFO", logger="gateway.executors.tensorrt")
    again = tensorrt_executors(mlp_path, c)
    assert "engine from cache" in caplog.text
    # The cached plan also loads directly as a model file.
    plan_model = tmp_path / "model.plan"
    plan_model.write_bytes((tmp_path / plans[0]).read_bytes())
    direct = tensorrt_executors(str(plan_model), cfg(max_batch_size=16))[0]
    np.testing.assert_allclose(direct.run({"INPUT": x}, ["OUTPUT"])[0], reference(mlp_path, x), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="at most 16 rows"):
        tensorrt_executors(str(plan_model), cfg(max_batch_size=32))
    for ex in again + [direct]:
        ex.close()


@pytest.mark.gpu
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="needs onnxruntime-gpu with the CUDA provider")
def test_cuda_provider_with_io_binding_matches_cpu(mlp_path):
    from gateway.executors.onnxruntime_gpu import OnnxRuntimeGpuExecutor

    ex = OnnxRuntimeGpuExecutor(mlp_path, providers=("cuda",), intra_op_threads=1, device_id=0, trt=TensorRTConfig())
    x = np.random.default_rng(1).standard_normal((7, 64)).astype(np.float32)
    np.testing.assert_allclose(ex.run({"INPUT": x}, ["OUTPUT"])[0], reference(mlp_path, x), rtol=1e-4, atol=1e-4)
