"""What sharing the fleet's state costs: gRPC unary throughput with and without it, A/B, interleaved.

    .venv/bin/python benchmarks/fleet_overhead.py [--rounds 3] [--seconds 5] [--concurrency 32]

Four gateways serve the mlp at once (batch-1 ModelInfer from h2load over 16 connections):
one process, one process with ``--state-url`` (a local redis-server), ``--workers 2`` (routing and
drift shared through the supervisor's directory) and ``--workers 2 --state-url``. Each round loads
every gateway in turn, in a rotated order, so slow drifts of a shared machine fall on every arm;
the table gives each arm's median and its ratio to the arm without the sharing. The model has a
routing section (one version, weight 1) and drift monitoring, so the state the fleet shares is
really exchanged while the load runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "examples"))

import make_models  # noqa: E402
from benchmarks.grpc_unary import cpu_seconds, grpc_body, h2load, machine  # noqa: E402

MODEL_YAML = """max_batch_size: 32
dynamic_batching:
  max_queue_delay_us: 2000
  max_queue_size: 4096
routing:
  weights: {1: 1}
drift:
  features:
    - {input: INPUT, columns: [0, 1, 2, 3, 4, 5, 6, 7]}
  window: {size_rows: 5000}
  reference: {capture_rows: 2000}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(workdir: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


class Arm:
    def __init__(self, name: str, repo: str, extra: list[str], workers: int, log_path: str) -> None:
        self.name, self.workers = name, workers
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0",
             "--model-repository", repo, "--repository-poll-s", "0", "--workers", str(workers), *extra],
            stdout=subprocess.DEVNULL, stderr=self.log, cwd=ROOT,
        )
        self.grpc_port = 0
        self.rates: list[float] = []
        self.cpu_ms: list[float] = []

    def wait_ready(self, log_path: str, timeout_s: float = 120) -> None:
        ready = re.compile(rf"ready: {self.workers} workers" if self.workers > 1 else r"gateway\.daemon: ready: ")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with open(log_path) as fh:
                text = fh.read()
            m = re.search(r"listening grpc=[\d.]+:(\d+) http", text)
            if m and ready.search(text):
                self.grpc_port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start; its log: {log_path}")

    def pids(self) -> list[int]:
        pids = [self.proc.pid]
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as fh:
                pids += [int(p) for p in fh.read().split()]
        except OSError:
            pass
        return pids

    def cpu(self) -> float:
        total = 0.0
        for pid in self.pids():
            try:
                total += cpu_seconds(pid)
            except OSError:
                pass
        return total

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    for tool in ("h2load", "redis-server"):
        if shutil.which(tool) is None:
            print(f"{tool} not found (apt-get install nghttp2-client redis-server)", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="fleet-overhead-") as tmp:
        redis, url = start_redis(tmp)
        arms: list[Arm] = []
        try:
            body = os.path.join(tmp, "req.bin")
            grpc_body(body)
            # Each state_url arm has a Redis database of its own: the two are separate fleets.
            specs = [("1 process", [], 1), ("1 process + state_url", ["--state-url", url + "/1"], 1),
                     ("2 workers", [], 2), ("2 workers + state_url", ["--state-url", url + "/2"], 2)]
            for i, (name, extra, workers) in enumerate(specs):
                repo = os.path.join(tmp, f"models-{i}")
                make_models.write_repository(repo, ["mlp"])
                with open(os.path.join(repo, "mlp", "model.yaml"), "w") as fh:
                    fh.write(MODEL_YAML)
                arms.append(Arm(name, repo, extra, workers, os.path.join(tmp, f"arm-{i}.log")))
            for i, arm in enumerate(arms):
                arm.wait_ready(os.path.join(tmp, f"arm-{i}.log"))
            for r in range(args.rounds):
                order = arms[r % len(arms):] + arms[:r % len(arms)]
                for arm in order:
                    cpu0 = arm.cpu()
                    # 16 connections: under --workers the kernel spreads connections, not requests
                    # (4 would often land 3/1 or 4/0 on the two workers).
                    rate, done, _ = h2load(arm.grpc_port, body, args.concurrency, args.seconds, connections=16)
                    arm.rates.append(rate)
                    arm.cpu_ms.append((arm.cpu() - cpu0) * 1000 / max(done, 1))
                    print(f"round {r + 1}: {arm.name:<24} {rate:>9,.0f} infer/s", flush=True)
        finally:
            for arm in arms:
                arm.stop()
            redis.terminate()
            redis.wait(10)
    base = {1: statistics.median(arms[0].rates), 2: statistics.median(arms[2].rates)}
    print(f"\nmachine: {machine()}; load average {os.getloadavg()[0]:.2f} at the end")
    print(f"mlp, batch-1 gRPC ModelInfer from h2load at c={args.concurrency}, {args.seconds:g} s per point, "
          f"{args.rounds} interleaved rounds; batching max 32 / 2 ms; the model has routing and drift\n")
    print("| arm | median infer/s | rounds | ÷ same workers without state_url | server CPU ms/infer (median) |")
    print("|---|---:|---|---:|---:|")
    for arm in arms:
        med = statistics.median(arm.rates)
        rounds = " / ".join(f"{v:,.0f}" for v in arm.rates)
        print(f"| {arm.name} | {med:,.0f} | {rounds} | {med / base[arm.workers]:.3f} | "
              f"{statistics.median(arm.cpu_ms):.3f} |")
    one, two = statistics.median(arms[0].rates), statistics.median(arms[2].rates)
    print(f"\n2 workers (directory-shared routing and drift) ÷ 1 process: {two / one:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
