"""Cost of tracing: gRPC ModelInfer throughput and server CPU per request with tracing off and on, one run.

    .venv/bin/python benchmarks/tracing_overhead.py [--seconds 5] [--concurrency 8,32] [--rounds 2]

Modes, each a fresh gateway on the same mlp model (batch 1 requests, h2load as in grpc_unary.py):
- off:       no OTEL_* configuration (the api creates no span objects at all)
- on 100%:   every request traced (6 spans) and exported over OTLP/HTTP to a sink process
- on 1%:     trace_sample_ratio 0.01: the sampler runs per request, 1 in 100 is exported
- baseline:  with --baseline DIR, the gateway of another source tree (with its own .venv), e.g.
             main before telemetry: `git archive main | tar -x -C /tmp/base && (cd /tmp/base && scripts/setup.sh)`
Rounds alternate the modes so drift on a shared machine hits all of them alike. The sink
(an OTLP/HTTP endpoint answering 200) runs in its own process; its CPU is reported apart.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

from grpc_unary import ROOT, cpu_seconds, grpc_body, h2load, machine, start_gateway  # noqa: E402

import make_models  # noqa: E402  (grpc_unary put examples/ on the path)

SINK = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--concurrency", default="8,32")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--baseline", help="another gateway source tree with its own .venv, run as mode 'baseline'")
    args = ap.parse_args()
    if shutil.which("h2load") is None:
        print("h2load not found: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    endpoint = f"http://127.0.0.1:{sink.stdout.readline().strip()}"
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    modes = [
        ("off", [], {}, ROOT),
        ("on 100%", ["--tracing", "on"], otel, ROOT),
        ("on 1%", ["--tracing", "on", "--trace-sample-ratio", "0.01"], otel, ROOT),
    ]
    if args.baseline:
        modes.insert(0, ("baseline", [], {}, os.path.abspath(args.baseline)))
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    sink_cpu: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            repo = os.path.join(tmp, "models")
            make_models.write_repository(repo, ["mlp"])
            with open(os.path.join(repo, "mlp", "model.yaml"), "w") as fh:
                fh.write("max_batch_size: 32\ndynamic_batching:\n  max_queue_size: 4096\n")
            body = os.path.join(tmp, "req.bin")
            grpc_body(body)
            for _ in range(args.rounds):
                for name, extra, env, tree in modes:
                    proc, port, _ = start_gateway(repo, tuple(extra), env, tree)
                    try:
                        for c in concurrencies:
                            sink0 = cpu_seconds(sink.pid)
                            cpu0 = cpu_seconds(proc.pid)
                            rate, done, _ = h2load(port, body, c, args.seconds)
                            cpu = cpu_seconds(proc.pid) - cpu0
                            results.setdefault((name, c), []).append((rate, cpu * 1e6 / max(done, 1)))
                            sink_cpu[name] = sink_cpu.get(name, 0.0) + cpu_seconds(sink.pid) - sink0
                    finally:
                        stop(proc)
    finally:
        sink.kill()
        sink.wait(10)
    print(f"machine: {machine()}")
    print(f"model: mlp, batch-1 gRPC ModelInfer via h2load; {args.seconds:g} s per point, {args.rounds} rounds "
          f"interleaved; median over rounds (min in brackets)\n")
    print("| tracing | concurrency | infer/s | / off | server CPU us per infer | / off |")
    print("|---|---:|---:|---:|---:|---:|")
    for c in concurrencies:
        base_rate = statistics.median(r for r, _ in results[("off", c)])
        base_cpu = statistics.median(u for _, u in results[("off", c)])
        for name, *_ in modes:
            rates = [r for r, _ in results[(name, c)]]
            cpus = [u for _, u in results[(name, c)]]
            rate, cpu = statistics.median(rates), statistics.median(cpus)
            print(f"| {name} | {c} | {rate:,.0f} | {rate / base_rate:.3f} | {cpu:.0f} ({min(cpus):.0f}) | {cpu / base_cpu:.2f} |")
    print("\nOTLP sink CPU s (all points): " + ", ".join(f"{k}: {v:.2f}" for k, v in sink_cpu.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
