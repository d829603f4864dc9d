"""Batch-1 gRPC ModelInfer throughput of the gateway against raw ONNX Runtime, same model, one run.

    .venv/bin/python benchmarks/grpc_unary.py [--seconds 5] [--concurrency 1,8,32,128]

The load generator is h2load (Debian package nghttp2-client), a compiled HTTP/2 client that
replays one pre-encoded ModelInferRequest: a Python gRPC client would saturate before the
server does. Prints a Markdown table with the machine, the server's CPU per inference and
the generator's own CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import json

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
sys.path.insert(0, ROOT)  # the benchmarks package, when this file runs as a script or from one

import make_models  # noqa: E402
from benchmarks.machine import cpu_idle, cpu_idle_words  # noqa: E402
from gateway._proto import grpc_service_pb2 as pb  # noqa: E402


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    idle = cpu_idle_words(cpu_idle())
    return f"{os.cpu_count()} cores, {model}, {idle}; Python {platform.python_version()}, onnxruntime {ort.__version__}"


def raw_ort(model_path: str, batch: int, seconds: float) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model_path, sess_options=opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 64)).astype(np.float32)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(["OUTPUT"], {"INPUT": x})
        n += 1
    return n * batch / (time.perf_counter() - t0)


def grpc_body(path: str) -> None:
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    req = pb.ModelInferRequest(model_name="mlp")
    req.inputs.add(name="INPUT", datatype="FP32", shape=[1, 64])
    req.raw_input_contents.append(x.tobytes())
    payload = req.SerializeToString()
    with open(path, "wb") as fh:
        fh.write(b"\0" + struct.pack(">I", len(payload)) + payload)


def start_gateway(
    repo: str, extra: tuple[str, ...] = (), env: dict[str, str] | None = None, tree: str = ROOT
) -> tuple[subprocess.Popen, int, int]:
    """The gateway of source tree ``tree`` (its own .venv unless it is this one) on free ports."""
    python = sys.executable if tree == ROOT else os.path.join(tree, ".venv", "bin", "python")
    proc = subprocess.Popen(
        [python, "-m", "gateway", "serve", "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0",
         "--model-repository", repo, "--repository-poll-s", "0", *extra],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=tree, env={**os.environ, **(env or {})},
    )
    ports = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"listening grpc=[\d.]+:(\d+) http=[\d.]+:(\d+)", line)
        if m:
            ports = int(m.group(1)), int(m.group(2))
        if " ready: " in line and ports:
            return proc, *ports
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("gateway did not start")


def h2load(port: int, body: str, concurrency: int, seconds: float, connections: int = 4) -> tuple[float, int, float]:
    conns = min(concurrency, connections)
    streams = max(1, concurrency // conns)
    cmd = ["h2load", "-D", f"{seconds:g}", "--warm-up-time=1", "-c", str(conns), "-m", str(streams), "-t", "1",
           "-d", body, "-H", "content-type: application/grpc", "-H", "te: trailers",
           f"http://127.0.0.1:{port}/inference.GRPCInferenceService/ModelInfer"]
    t_cpu = os.times()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    out = res.stdout + res.stderr
    after = os.times()
    gen_cpu = (after.children_user + after.children_system) - (t_cpu.children_user + t_cpu.children_system)
    finished = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    counts = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if not finished or not counts:
        raise RuntimeError("h2load output not understood:\n" + out)
    rate, done = float(finished.group(1)), int(counts.group(2))
    return rate, done, gen_cpu


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--concurrency", default="1,8,32,128")
    ap.add_argument("--max-queue-delay-us", type=int, default=0)
    args = ap.parse_args()
    if shutil.which("h2load") is None:
        print("h2load not found: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        repo = os.path.join(tmp, "models")
        make_models.write_repository(repo, ["mlp"])
        with open(os.path.join(repo, "mlp", "model.yaml"), "w") as fh:
            fh.write(f"max_batch_size: 32\ndynamic_batching:\n  max_queue_delay_us: {args.max_queue_delay_us}\n"
                     "  max_queue_size: 4096\n")
        model = os.path.join(repo, "mlp", "1", "model.onnx")
        body = os.path.join(tmp, "req.bin")
        grpc_body(body)
        raw1 = raw_ort(model, 1, args.seconds)
        raw32 = raw_ort(model, 32, args.seconds)
        proc, grpc_port, http_port = start_gateway(repo)
        rows = []
        try:
            for c in [int(v) for v in args.concurrency.split(",")]:
                cpu0 = cpu_seconds(proc.pid)
                rate, done, gen_cpu = h2load(grpc_port, body, c, args.seconds)
                cpu = cpu_seconds(proc.pid) - cpu0
                rows.append((c, rate, done, cpu, gen_cpu))
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/mlp/stats", timeout=10) as r:
                st = json.load(r)["model_stats"][0]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    print(f"machine: {machine()}")
    print(f"model: mlp [-1,64] -> [-1,8]; gateway max_batch_size 32, max_queue_delay_us {args.max_queue_delay_us}, "
          f"1 instance, 1 intra-op thread; {args.seconds:.0f} s per point")
    print(f"raw onnxruntime (1 thread): batch 1 {raw1:,.0f} infer/s; batch 32 {raw32:,.0f} rows/s\n")
    print("| concurrency | gateway infer/s | / raw ORT batch 1 | server CPU ms per infer | h2load CPU s |")
    print("|---:|---:|---:|---:|---:|")
    for c, rate, done, cpu, gen_cpu in rows:
        print(f"| {c} | {rate:,.0f} | {rate / raw1:.3f} | {cpu * 1000 / max(done, 1):.3f} | {gen_cpu:.2f} |")
    execs, infers = int(st.get("execution_count", 0)), int(st.get("inference_count", 0))
    print(f"\nserver executed {infers:,} inferences in {execs:,} batches (mean batch {infers / max(execs, 1):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
