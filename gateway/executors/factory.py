"""Picks the executor class for a model version from its model.yaml."""

from __future__ import annotations

from gateway.core.model_config import ModelConfig
from gateway.executors.base import Executor, resolve_max_batch_size
from gateway.executors.onnxruntime import OnnxRuntimeExecutor


def create_executors(cfg: ModelConfig, model_file: str) -> list[Executor]:
    """``cfg.instances`` executors; blocking (call from a worker thread); raises on any load failure."""
    if cfg.backend == "tensorrt":
        from gateway.executors.tensorrt import tensorrt_executors

        return list(tensorrt_executors(model_file, cfg))
    if any(p != "cpu" for p in cfg.providers):
        from gateway.executors.onnxruntime_gpu import OnnxRuntimeGpuExecutor

        profile = None
        if "tensorrt" in cfg.providers:
            from gateway.executors.tensorrt import batch_profile, onnx_input_shapes

            graph = onnx_input_shapes(model_file)
            mbs = resolve_max_batch_size(cfg.max_batch_size, all(s and s[0] == -1 for s in graph.values()))
            profile = batch_profile(graph, cfg, mbs)
        return [
            OnnxRuntimeGpuExecutor(
                model_file, providers=cfg.providers, intra_op_threads=cfg.intra_op_threads,
                device_id=cfg.gpu_device, trt=cfg.tensorrt, profile=profile,
            )
            for _ in range(cfg.instances)
        ]
    return [
        OnnxRuntimeExecutor(model_file, providers=cfg.providers, intra_op_threads=cfg.intra_op_threads)
        for _ in range(cfg.instances)
    ]
