"""Triton Inference Server via PyTriton serving ONNX models through onnxruntime, dynamic batcher on.

    python pytriton_server.py --http-port P --grpc-port Q --metrics-port R \
        --model mlp=/path/mlp.onnx --model cnn=/path/cnn.onnx [--max-batch 32] [--max-delay-us 2000]

Runs until SIGTERM. PyTriton's Python backend stub links libpython: the benchmark sets
LD_LIBRARY_PATH to the interpreter's lib directory.
"""

from __future__ import annotations

import argparse
import signal

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig


def make_infer(session: ort.InferenceSession):
    in_name, out_name = session.get_inputs()[0].name, session.get_outputs()[0].name

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return {out_name: session.run([out_name], {in_name: inputs[in_name]})[0]}

    return infer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--metrics-port", type=int, required=True)
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH.onnx")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-delay-us", type=int, default=2000)
    ap.add_argument("--intra-op-threads", type=int, default=1)
    args = ap.parse_args()

    config = TritonConfig(http_address="127.0.0.1", http_port=args.http_port, grpc_address="127.0.0.1",
                          grpc_port=args.grpc_port, metrics_port=args.metrics_port, log_verbose=0)
    # PyTriton 0.7 puts Triton's model-config and metadata APIs behind a random access token; perf_analyzer
    # (like any Triton client) reads them before loading. A benchmark on loopback restricts nothing.
    with Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=[])) as triton:
        for spec in args.model:
            name, path = spec.split("=", 1)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.intra_op_threads
            opts.inter_op_num_threads = 1
            session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
            inp, out = session.get_inputs()[0], session.get_outputs()[0]
            triton.bind(
                model_name=name,
                infer_func=make_infer(session),
                inputs=[Tensor(name=inp.name, dtype=np.float32, shape=tuple(inp.shape[1:]))],
                outputs=[Tensor(name=out.name, dtype=np.float32, shape=tuple(out.shape[1:]))],
                config=ModelConfig(max_batch_size=args.max_batch,
                                   batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_delay_us)),
                strict=False,
            )
        signal.signal(signal.SIGTERM, lambda *_: triton.stop())
        triton.serve()


if __name__ == "__main__":
    main()
