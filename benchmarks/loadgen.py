"""Compiled load generators: h2load (HTTP/2, drives gRPC with a pre-encoded body), wrk (HTTP/1.1)
and Triton's perf_analyzer (the KServe v2 client people measure Triton with: gRPC, gRPC streaming,
HTTP binary; fetched by scripts/perf_analyzer.sh).

Each run returns throughput, latency percentiles, errors and the generator's own CPU time
(from wait4's rusage of the generator process, so nothing else is counted).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass

import numpy as np

from benchmarks.payloads import Body

HERE = os.path.dirname(os.path.abspath(__file__))
WRK_SCRIPT = os.path.join(HERE, "wrk_post.lua")


@dataclass(slots=True)
class LoadResult:
    requests: int  # requests answered successfully
    errors: int
    wall_s: float  # the measured window
    p50_ms: float | None
    p99_ms: float | None
    gen_cpu_s: float  # the generator's own user + system CPU
    inferences: int  # successful model inferences (a stream call carries several)

    @property
    def infer_per_s(self) -> float:
        return self.inferences / self.wall_s if self.wall_s > 0 else 0.0


class LoadError(RuntimeError):
    pass


def _run_measured(cmd: list[str], timeout_s: float, env: dict | None = None) -> tuple[int, str, float]:
    """Run cmd; return (exit code, stdout+stderr, CPU seconds the child used)."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return proc.returncode, out.read(), usage.ru_utime + usage.ru_stime


def _write_body(directory: str, body: Body) -> str:
    path = os.path.join(directory, "body.bin")
    with open(path, "wb") as fh:
        fh.write(body.data)
    return path


def h2load(port: int, body: Body, concurrency: int, seconds: float, *, expected_response_bytes: int,
           max_connections: int = 16) -> LoadResult:
    """concurrency requests in flight, spread over up to max_connections HTTP/2 connections.

    h2load does not read gRPC trailers, so a gRPC error still looks like HTTP 200. A success
    carries a response message of known size and an error carries none (or a different one),
    so successes are counted from the DATA bytes received: expected_response_bytes per request.
    """
    conns = min(concurrency, max_connections)
    streams = math.ceil(concurrency / conns)
    with tempfile.TemporaryDirectory(prefix="bench-h2load-") as tmp:
        body_path = _write_body(tmp, body)
        log_path = os.path.join(tmp, "requests.log")
        # h2load reads a bare "-D 0.5" as an error; with a unit, fractions are fine.
        cmd = ["h2load", "-D", f"{max(1, round(seconds * 1000))}ms", "-c", str(conns), "-m", str(streams), "-t", "1",
               "-d", body_path, f"--log-file={log_path}"]
        for name, value in body.headers:
            cmd += ["-H", f"{name}: {value}"]
        cmd.append(f"http://127.0.0.1:{port}{body.path}")
        rc, out, cpu = _run_measured(cmd, timeout_s=seconds + 60)
        finished = re.search(r"finished in ([\d.]+)(\w+), ([\d.]+) req/s", out)
        counts = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
        traffic = re.search(r"\((\d+)\) data", out)
        if rc != 0 or not finished or not counts or not traffic:
            raise LoadError(f"h2load exited {rc}; output not understood:\n{out[-2000:]}")
        wall_s = float(finished.group(1)) * {"s": 1.0, "ms": 1e-3, "us": 1e-6}.get(finished.group(2), 1.0)
        done, succeeded = int(counts.group(1)), int(counts.group(2))
        answered = min(succeeded, int(traffic.group(1)) // max(expected_response_bytes, 1))
        p50, p99 = _percentiles_from_log(log_path)
    return LoadResult(answered, done - answered, wall_s, p50, p99, cpu, answered * body.inferences)


def _percentiles_from_log(path: str) -> tuple[float | None, float | None]:
    """h2load --log-file: start µs, HTTP status, µs until the end of the response (tab-separated)."""
    try:
        data = np.loadtxt(path, dtype=np.int64, delimiter="\t", usecols=(1, 2), ndmin=2)
    except (OSError, ValueError):
        return None, None
    ok = data[data[:, 0] == 200, 1] if data.size else data
    if not len(ok):
        return None, None
    p50, p99 = np.percentile(ok, [50, 99]) / 1000.0
    return float(p50), float(p99)


def wrk(port: int, body: Body, concurrency: int, seconds: float) -> LoadResult:
    """concurrency HTTP/1.1 keep-alive connections, one request in flight on each."""
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        env = {**os.environ, "BENCH_BODY": _write_body(tmp, body),
               "BENCH_HEADERS": "\n".join(f"{n}: {v}" for n, v in body.headers)}
        duration = max(1, round(seconds))  # wrk takes whole seconds
        cmd = ["wrk", "-t", "1", "-c", str(concurrency), "-d", f"{duration}s", "--timeout", "30s",
               "-s", WRK_SCRIPT, f"http://127.0.0.1:{port}{body.path}"]
        rc, out, cpu = _run_measured(cmd, timeout_s=duration + 60, env=env)
    m = re.search(r"BENCH requests=(\d+) duration_us=(\d+) bytes=\d+ status_errors=(\d+) socket_errors=(\d+) "
                  r"p50_us=(\d+) p99_us=(\d+)", out)
    if rc != 0 or not m:
        raise LoadError(f"wrk exited {rc}; output not understood:\n{out[-2000:]}")
    requests, duration_us, status_err, socket_err, p50_us, p99_us = (int(g) for g in m.groups())
    ok = max(0, requests - status_err)
    return LoadResult(ok, status_err + socket_err, duration_us / 1e6, p50_us / 1000.0, p99_us / 1000.0, cpu, ok)



PERF_ANALYZER_SCRIPT = os.path.join(os.path.dirname(HERE), "scripts", "perf_analyzer.sh")


def perf_analyzer_binary() -> str:
    """The launcher's path (fetched on first use); LoadError saying why when it cannot be had."""
    try:
        done = subprocess.run([PERF_ANALYZER_SCRIPT, "--install"], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LoadError(f"perf_analyzer not available: {exc}") from None
    if done.returncode != 0:
        raise LoadError("perf_analyzer not available: " + (done.stderr.strip().splitlines() or ["?"])[-1])
    return done.stdout.strip()


def perf_analyzer_input(directory: str, input_name: str, rows: np.ndarray, *, batch_axis: bool = False) -> str:
    """A --input-data file of real rows (perf_analyzer's own random FP32 is random bytes: NaN, Inf).
    ``batch_axis``: each row's shape starts with 1, for a model served with max_batch_size 0."""
    lead = [1] if batch_axis else []
    path = os.path.join(directory, f"pa-input-{input_name}-{[*lead, *rows.shape[1:]]}.json".replace(" ", ""))
    docs = [{input_name: {"content": row.ravel().round(5).tolist(), "shape": lead + list(row.shape)}} for row in rows]
    with open(path, "w") as fh:
        json.dump({"data": docs}, fh)
    return path


def perf_analyzer(binary: str, url: str, protocol: str, model: str, concurrency: int, seconds: float,
                  input_data: str, *, streaming: bool = False) -> LoadResult:
    """perf_analyzer at one concurrency, batch-1 requests, async: three measurement windows of
    seconds/3 each, stability not chased (a shared host never holds 10 %), averaged by perf_analyzer."""
    interval_ms = max(200, round(seconds * 1000 / 3))
    with tempfile.TemporaryDirectory(prefix="bench-pa-") as tmp:
        csv_path = os.path.join(tmp, "pa.csv")
        cmd = [binary, "-m", model, "-u", url, "-i", protocol, "-b", "1", "--async",
               "--concurrency-range", f"{concurrency}:{concurrency}", "--input-data", input_data,
               "--measurement-mode", "time_windows", "--measurement-interval", str(interval_ms),
               "--stability-percentage", "999", "--max-trials", "3", "-f", csv_path]
        if streaming:
            cmd.append("--streaming")
        rc, out, cpu = _run_measured(cmd, timeout_s=seconds * 4 + 120)
        if rc != 0 or not os.path.exists(csv_path):
            raise LoadError(f"perf_analyzer exited {rc}:\n{out[-2000:]}")
        with open(csv_path) as fh:
            header, *lines = [line.strip().split(",") for line in fh if line.strip()]
    if not lines:
        raise LoadError(f"perf_analyzer wrote no measurement:\n{out[-2000:]}")
    row = dict(zip(header, lines[0]))
    per_s = float(row["Inferences/Second"])
    measured_s = 3 * interval_ms / 1000
    errors = 0
    m = re.search(r"Error count: (\d+)", out)
    if m:
        errors = int(m.group(1))
    return LoadResult(round(per_s * measured_s), errors, measured_s, float(row["p50 latency"]) / 1000.0,
                      float(row["p99 latency"]) / 1000.0, cpu, round(per_s * measured_s))
