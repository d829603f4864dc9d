"""Compiled load generators: h2load (HTTP/2, drives gRPC with a pre-encoded body) and wrk (HTTP/1.1).

Each run returns throughput, latency percentiles, errors and the generator's own CPU time
(from wait4's rusage of the generator process, so nothing else is counted).
"""

from __future__ import annotations

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
        cmd = ["h2load", "-D", f"{seconds:g}", "-c", str(conns), "-m", str(streams), "-t", "1",
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

