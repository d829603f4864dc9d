"""/v1/embeddings throughput of the gateway against raw ONNX Runtime, same model, one run.

    .venv/bin/python benchmarks/embeddings_bench.py [--seconds 8] [--concurrency 1,16]

Model: all-MiniLM-L6-v2 (examples/embedding_model.py, ``last_hidden_state`` output, mean
pooling + L2 normalisation). Every request embeds one sentence.

- raw ORT, batch 1: this process, one thread, a loop of tokenize -> session.run -> pool,
  the work a hand-written service does per sentence without batching.
- raw ORT, batch 16 on one and on two threads: what batching alone can give on this model (on
  one thread a transformer's cost per sentence barely falls with the batch: ~1.3x batch 1 here).
- gateway: wrk (compiled HTTP/1.1 load generator) POSTing one OpenAI embeddings request per
  connection at a time, at each concurrency; the dynamic batcher joins concurrent requests.

Prints the machine, embeddings/s, latency, the gateway's CPU per request and the generator's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "examples"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import embedding_model  # noqa: E402
from grpc_unary import cpu_seconds, machine, start_gateway  # noqa: E402

from benchmarks.loadgen import wrk  # noqa: E402
from benchmarks.payloads import Body  # noqa: E402

SENTENCE = "A model-serving daemon batches concurrent requests to make better use of the hardware."


def raw_ort(model_dir: str, seconds: float, batch: int = 1, threads: int = 1) -> tuple[float, float]:
    """(embeddings/s, mean ms per run) of a tokenize + run + pool loop, ``batch`` sentences a run."""
    from tokenizers import Tokenizer

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(os.path.join(model_dir, "1", "model.onnx"), opts, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(os.path.join(model_dir, "1", "tokenizer.json"))
    tok.no_padding()

    def once() -> np.ndarray:
        ids = np.array([e.ids for e in tok.encode_batch([SENTENCE] * batch)], np.int64)
        (hidden,) = session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        v = hidden.mean(axis=1)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    for _ in range(max(2, 20 // batch)):
        once()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        once()
        n += 1
    wall = time.perf_counter() - start
    return n * batch / wall, wall / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--concurrency", default="1,16")
    args = ap.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    print(f"# /v1/embeddings vs raw ONNX Runtime (all-MiniLM-L6-v2, one sentence per request)\n\nmachine: {machine()}\n")

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(embedding_model.write_minilm(tmp))
        raw_rate, raw_ms = raw_ort(model_dir, args.seconds)
        # What batching alone can give: the same sentences 16 to a run, on one thread and on two.
        ceilings = [(threads, *raw_ort(model_dir, args.seconds / 2, batch=16, threads=threads)) for threads in (1, 2)]
        proc, _, http_port = start_gateway(tmp)
        # The daemon logs to stderr: keep reading it so a full pipe never stalls it.
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
        body = Body("http-json", "/v1/embeddings", json.dumps({"model": "minilm", "input": SENTENCE}).encode(),
                    (("Content-Type", "application/json"),))
        rows = []
        try:
            wrk(http_port, body, 1, 2)  # warm-up
            for c in concurrencies:
                cpu0 = cpu_seconds(proc.pid)
                res = wrk(http_port, body, c, args.seconds)
                cpu_ms = (cpu_seconds(proc.pid) - cpu0) * 1000 / max(res.requests, 1)
                rows.append((c, res, cpu_ms))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)

    print("| system | concurrency | embeddings/s | vs raw ORT | p50 ms | p99 ms | server CPU ms/req | generator CPU s | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| raw ORT batch 1 (in process) | 1 | {raw_rate:,.0f} | 1.00 | {raw_ms:.2f} | | | | 0 |")
    for threads, rate, ms in ceilings:
        print(f"| raw ORT batch 16, {threads} thread{'s' if threads > 1 else ''} (batching's ceiling) | | {rate:,.0f} "
              f"| {rate / raw_rate:.2f} | {ms:.2f} per run | | | | 0 |")
    for c, res, cpu_ms in rows:
        rate = res.requests / res.wall_s
        print(f"| gateway /v1/embeddings | {c} | {rate:,.0f} | {rate / raw_rate:.2f} | {res.p50_ms:.2f} | {res.p99_ms:.2f} "
              f"| {cpu_ms:.2f} | {res.gen_cpu_s:.2f} | {res.errors} |")


if __name__ == "__main__":
    main()
