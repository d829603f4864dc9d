"""What idle polling (``idle_poll_us``) buys at low concurrency, and what it costs in CPU.

    .venv/bin/python benchmarks/idle_poll_bench.py [--seconds 4] [--rounds 3] [--concurrency 1,8,32] [--poll-us 300]

The mlp (batching on, the default adaptive window) in one gateway process at a time, started
without and with ``--idle-poll-us``, in interleaved rounds; h2load replays a batch-1 gRPC
ModelInfer over up to 4 connections (see grpc_unary.py). Per point: requests/s, the mean round
trip h2load saw, and the server's CPU per request: with polling the loop stays busy between
requests, so at low load the CPU per request rises while the time per request falls. Raw
onnxruntime at batch 1 (one thread, a tight loop) is the floor of the time per request.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import grpc_unary  # noqa: E402  (machine, cpu_seconds, start_gateway, raw_ort; puts examples/ on the path)
import make_models  # noqa: E402

MLP = "max_batch_size: 32\ndynamic_batching:\n  max_queue_delay_us: 2000\n  max_queue_size: 4096\n"


def h2load_point(port: int, body: str, concurrency: int, seconds: float) -> tuple[float, float, int]:
    """(requests/s, mean ms per request as h2load timed them, requests done)."""
    conns = min(concurrency, 4)
    cmd = ["h2load", "-D", f"{seconds:g}", "--warm-up-time=1", "-c", str(conns), "-m", str(max(1, concurrency // conns)),
           "-t", "1", "-d", body, "-H", "content-type: application/grpc", "-H", "te: trailers",
           f"http://127.0.0.1:{port}/inference.GRPCInferenceService/ModelInfer"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    if not rate or not done or not mean:
        raise RuntimeError("h2load output not understood:\n" + out)
    m = mean.group(1)
    ms = float(m[:-2]) / 1000 if m.endswith("us") else float(m[:-2]) if m.endswith("ms") else float(m[:-1]) * 1000
    return float(rate.group(1)), ms, int(done.group(1))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--poll-us", type=int, default=300)
    args = ap.parse_args()
    if shutil.which("h2load") is None:
        print("h2load not found: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    arms = {"off": (), f"idle_poll_us {args.poll_us}": ("--idle-poll-us", str(args.poll_us))}
    concurrencies = [int(v) for v in args.concurrency.split(",")]
    runs: dict[tuple[str, int], list[tuple[float, float, float]]] = {(a, c): [] for a in arms for c in concurrencies}
    load_before = f"{os.getloadavg()[0]:.2f}"
    with tempfile.TemporaryDirectory() as tmp:
        repo = os.path.join(tmp, "models")
        model_path = os.path.join(repo, "mlp", "1", "model.onnx")
        make_models._save(make_models.mlp_graph(0), model_path)
        with open(os.path.join(repo, "mlp", "model.yaml"), "w") as fh:
            fh.write(MLP)
        body = os.path.join(tmp, "mlp.bin")
        grpc_unary.grpc_body(body)
        raw_rate = grpc_unary.raw_ort(model_path, 1, min(args.seconds, 3))
        for _ in range(args.rounds):  # interleaved: a burst of load elsewhere hits both arms alike
            for arm, extra in arms.items():
                proc, grpc_port, _ = grpc_unary.start_gateway(repo, extra)
                try:
                    for c in concurrencies:
                        cpu0 = grpc_unary.cpu_seconds(proc.pid)
                        rate, ms, done = h2load_point(grpc_port, body, c, args.seconds)
                        cpu_ms = (grpc_unary.cpu_seconds(proc.pid) - cpu0) * 1000 / max(done, 1)
                        runs[(arm, c)].append((rate, ms, cpu_ms))
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(30)

    print(f"machine: {grpc_unary.machine()}; load average before the run {load_before}, after {os.getloadavg()[0]:.2f}")
    print(f"model: mlp [-1,64] -> [-1,8], max_batch_size 32, adaptive window (cap 2000 µs), 1 instance, 1 worker; "
          f"h2load gRPC batch 1 over up to 4 connections, {args.seconds:g} s per point, {args.rounds} interleaved rounds")
    print(f"raw onnxruntime batch 1, 1 thread, tight loop: {raw_rate:,.0f} infer/s ({1000 / raw_rate:.3f} ms each)\n")
    print("| c | idle polling | infer/s median | rounds | ÷ off | mean ms per request | − raw ORT batch 1, ms "
          "| server CPU ms per request |")
    print("|---:|---|---:|---|---:|---:|---:|---:|")
    for c in concurrencies:
        off = statistics.median(r[0] for r in runs[("off", c)])
        for arm in arms:
            rs = runs[(arm, c)]
            rate = statistics.median(r[0] for r in rs)
            ms = statistics.median(r[1] for r in rs)
            cpu = statistics.median(r[2] for r in rs)
            print(f"| {c} | {arm} | {rate:,.0f} | {' / '.join(f'{r[0]:,.0f}' for r in rs)} | {rate / off:.2f} "
                  f"| {ms:.3f} | {ms - 1000 / raw_rate:.3f} | {cpu:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
