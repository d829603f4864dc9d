"""The limit: raw onnxruntime InferenceSession.run in a tight loop, in this process."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort

from benchmarks.models import BenchModel


def session(model: BenchModel, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.path, sess_options=opts, providers=["CPUExecutionProvider"])


def reference_output(model: BenchModel, x: np.ndarray) -> np.ndarray:
    return session(model, 1).run(None, {"INPUT": x})[0]


def measure(model: BenchModel, threads: int, batch: int, seconds: float) -> dict:
    """Rows per second, per-call latency percentiles and this process's CPU over the loop."""
    sess = session(model, threads)
    x = model.sample(batch)
    feed = {"INPUT": x}
    warm_until = time.perf_counter() + min(0.5, seconds / 4)
    while time.perf_counter() < warm_until:
        sess.run(None, feed)
    times_ns: list[int] = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    end = t0 + seconds
    while True:
        a = time.perf_counter_ns()
        sess.run(None, feed)
        times_ns.append(time.perf_counter_ns() - a)
        if time.perf_counter() >= end:
            break
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    rows = len(times_ns) * batch
    p50, p99 = np.percentile(np.asarray(times_ns), [50, 99]) / 1e6
    return {
        "infer_per_s": rows / wall,
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "server_cpu_cores": cpu / wall,
        "server_cpu_ms_per_infer": cpu * 1000 / rows,
        "inferences": rows,
        "wall_s": wall,
    }
