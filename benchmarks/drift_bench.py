"""What drift monitoring costs in throughput: the same MLP with drift off and on, one gateway, one run.

    .venv/bin/python benchmarks/drift_bench.py [--seconds 5] [--rounds 3] [--concurrency 1,32]

Two names for the same model in one daemon, measured in interleaved rounds with
h2load replaying a batch-1 gRPC ModelInfer (see grpc_unary.py):

- plain: no drift section (the baseline)
- drift: every one of the 64 input columns, every output column and the output's
  argmax watched (73 streams), 1000-row tumbling windows, Page-Hinkley on OUTPUT[0]

Then, in this process, per batch: what ``DriftWorker.submit`` costs on the event
loop (the hand-over) and what the drift thread spends (join, count, judge) when it
takes 1, 10 or 100 piled-up batches per wake-up. The 1-batch figure is also what
the executor thread would add to every batch if it counted right after run().
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import grpc_unary  # noqa: E402  (machine, cpu_seconds, start_gateway, h2load; puts examples/ on the path)
import make_models  # noqa: E402
from routing_bench import get_json, grpc_body  # noqa: E402

MLP = "max_batch_size: 32\ndynamic_batching:\n  max_queue_delay_us: 0\n  max_queue_size: 4096\n"
DRIFT = MLP + """drift:
  features:
    - {input: INPUT}
  outputs:
    - {output: OUTPUT}
    - {output: OUTPUT, argmax: true}
  window: {size_rows: 1000}
  page_hinkley: {output: OUTPUT, column: 0}
"""
MODELS = {"plain": MLP, "drift": DRIFT}


def write_repo(root: str) -> None:
    from gateway.tools.drift_profile import make_profile

    for name, cfg in MODELS.items():
        make_models._save(make_models.mlp_graph(0), os.path.join(root, name, "1", "model.onnx"))
        with open(os.path.join(root, name, "model.yaml"), "w") as fh:
            fh.write(cfg)
    data = os.path.join(root, "..", "reference.npy")
    np.save(data, np.random.default_rng(0).standard_normal((5000, 64)).astype(np.float32))
    make_profile(root, "drift", data)


def per_batch_costs(root: str, rows: int, piled: int) -> tuple[float, float]:
    """(µs per submit on the loop, µs per batch on the drift thread) for batches of ``rows`` rows,
    ``piled`` batches taken per wake-up of the drift thread."""
    import logging

    import onnxruntime as ort

    from gateway.core.model_config import load_model_config
    from gateway.core.types import TensorSpec
    from gateway.monitoring.drift import DriftWorker, VersionDrift, resolve_streams

    logging.getLogger("gateway.drift").disabled = True  # replaying one row drifts: keep the alerts off the screen
    cfg = load_model_config(os.path.join(root, "drift")).drift
    streams = resolve_streams(cfg, (TensorSpec("INPUT", "FP32", (64,)),), (TensorSpec("OUTPUT", "FP32", (8,)),), "model.yaml")
    monitor = VersionDrift("drift", "1", cfg, streams, os.path.join(root, "drift", "1", "reference.json"))
    sess = ort.InferenceSession(os.path.join(root, "drift", "1", "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((rows, 64)).astype(np.float32)
    feeds, outputs = {"INPUT": x}, {"OUTPUT": sess.run(["OUTPUT"], {"INPUT": x})[0]}
    worker = DriftWorker()
    worker._monitors.add(monitor)  # drained by hand below: no thread
    submit_s = drain_s = 0.0
    batches = 0
    for _ in range(max(1, 4000 // piled)):
        t0 = time.perf_counter()
        for _ in range(piled):
            worker.submit(monitor, feeds, outputs)
        t1 = time.perf_counter()
        worker.drain()
        drain_s += time.perf_counter() - t1
        submit_s += t1 - t0
        batches += piled
    return submit_s / batches * 1e6, drain_s / batches * 1e6


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("h2load") is None:
        print("h2load not found: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    rows, ratios = [], {}
    load_before = f"{os.getloadavg()[0]:.2f}"
    with tempfile.TemporaryDirectory() as tmp:
        repo = os.path.join(tmp, "models")
        write_repo(repo)
        costs = {(b, k): per_batch_costs(repo, b, k) for b in (1, 32) for k in (1, 10, 100)}
        proc, grpc_port, http_port = grpc_unary.start_gateway(repo)
        try:
            for model in MODELS:
                grpc_body(os.path.join(tmp, f"{model}.bin"), model)
            for c in [int(v) for v in args.concurrency.split(",")]:
                runs: dict[str, list] = {m: [] for m in MODELS}
                for _ in range(args.rounds):  # interleaved: a burst of load elsewhere hits both alike
                    for model in MODELS:
                        cpu0 = grpc_unary.cpu_seconds(proc.pid)
                        rate, done, gen_cpu = grpc_unary.h2load(grpc_port, os.path.join(tmp, f"{model}.bin"), c, args.seconds)
                        runs[model].append((rate, (grpc_unary.cpu_seconds(proc.pid) - cpu0) / max(done, 1), gen_cpu))
                # Each round measures plain then drift back to back: the ratio within a round is the least
                # disturbed by load that comes and goes on a shared host; its median is the headline.
                pair = [d[0] / p[0] for p, d in zip(runs["plain"], runs["drift"])]
                cpu_pair = [d[1] / p[1] for p, d in zip(runs["plain"], runs["drift"])]
                ratios[c] = (statistics.median(pair), min(pair), max(pair), statistics.median(cpu_pair))
                for model in MODELS:
                    rates = [r[0] for r in runs[model]]
                    rows.append((c, model, statistics.median(rates), rates,
                                 statistics.median(r[1] for r in runs[model]) * 1000, sum(r[2] for r in runs[model])))
            drift = get_json(http_port, "/v2/models/drift/versions/1/drift")
            stats = {m: get_json(http_port, f"/v2/models/{m}/stats")["model_stats"][0] for m in MODELS}
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)

    print(f"machine: {grpc_unary.machine()}; load average before the run {load_before}, after {os.getloadavg()[0]:.2f}")
    print(f"model: mlp [-1,64] -> [-1,8], max_batch_size 32, max_queue_delay_us 0, 1 instance; "
          f"h2load gRPC batch 1, {args.seconds:g} s per point, {args.rounds} interleaved rounds, one gateway process")
    print("drift: 73 streams (64 input columns, 8 output columns, output argmax), 1000-row tumbling windows, "
          "Page-Hinkley on OUTPUT_0\n")
    print("| concurrency | model | infer/s median | rounds | / plain | server CPU ms per infer | / plain | h2load CPU s |")
    print("|---:|---|---:|---|---:|---:|---:|---:|")
    base = {c: (rate, cpu) for c, m, rate, _, cpu, _ in rows if m == "plain"}
    for c, model, rate, rates, cpu, gen in rows:
        print(f"| {c} | {model} | {rate:,.0f} | {' / '.join(f'{r:,.0f}' for r in rates)} | {rate / base[c][0]:.3f} "
              f"| {cpu:.3f} | {cpu / base[c][1]:.3f} | {gen:.2f} |")
    print("\ndrift / plain within each round (median, min-max over rounds):\n")
    print("| concurrency | infer/s ratio median | min | max | server CPU per infer ratio median |")
    print("|---:|---:|---:|---:|---:|")
    for c, (med, lo, hi, cpu) in ratios.items():
        print(f"| {c} | {med:.3f} | {lo:.3f} | {hi:.3f} | {cpu:.3f} |")
    for m, st in stats.items():
        execs, infers = int(st.get("execution_count", 0)), int(st.get("inference_count", 0))
        print(f"\n{m}: {infers:,} inferences in {execs:,} batches (mean batch {infers / max(execs, 1):.1f})", end="")
    print(f"\ndrift monitor: {drift['rows_seen']:,} rows in {drift['batches']:,} batches counted, "
          f"{drift['dropped_batches']:,} batches dropped, {drift['windows_closed']:,} windows judged, errors {drift['errors']}")
    print("\nper batch, in process (73 streams):")
    print("| rows per batch | batches per wake-up | hand-over on the loop (submit) µs | drift thread (join, count, judge) µs |")
    print("|---:|---:|---:|---:|")
    for (b, k), (submit_us, drain_us) in costs.items():
        print(f"| {b} | {k} | {submit_us:.2f} | {drain_us:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
