"""The servers under test: how each is laid out, started, and spoken to.

Every server serves both models at once (an idle model costs nothing) on ports picked here,
with the same batch limits: at most `max_batch` rows, a partial batch held at most
`max_delay_us`, `intra_op_threads` ORT threads per session.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from benchmarks import payloads, venvs
from benchmarks.models import BenchModel
from benchmarks.servers import ServerProcess, StartError, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS = os.path.join(HERE, "peers")


@dataclass(frozen=True, slots=True)
class Settings:
    models: dict[str, BenchModel]
    workdir: str
    cache_dir: str
    max_batch: int
    max_delay_us: int
    intra_op_threads: int
    stream_messages: int  # requests one ModelStreamInfer call carries (at most the concurrency)
    ort_version: str


@dataclass(slots=True)
class Running:
    server: ServerProcess
    grpc_port: int | None
    http_port: int | None
    encode: Callable[[str, BenchModel, np.ndarray, int], payloads.Body]  # (protocol, model, x, concurrency)
    versions: dict[str, str | None] = field(default_factory=dict)
    counts: Callable[[str], tuple[int, int] | None] = lambda model: None  # (inferences, executions) so far
    # Servers that answer a fixed body (no model): its size per model, instead of checking the answer.
    fixed_answer_bytes: dict[str, int] | None = None

    def in_flight(self, body: payloads.Body, concurrency: int) -> int:
        """Requests the generator keeps in flight so that `concurrency` inferences are."""
        return math.ceil(concurrency / body.inferences)


@dataclass(frozen=True, slots=True)
class SystemConfig:
    system: str  # gateway | mlserver | pytriton | fastapi
    label: str  # as the table shows it
    config: str  # the settings that differ between rows of one system
    protocols: tuple[str, ...]
    batching: bool
    workers: int
    start: Callable[[Settings, str], Running]  # (settings, log path)
    window: str | None = None  # gateway batching: "adaptive" (its default) or "fixed" (Triton's semantics)


def _v2_ready_urls(http_port: int, s: Settings) -> list[str]:
    return [f"http://127.0.0.1:{http_port}/v2/models/{m}/ready" for m in s.models]


def _v2_encoder(http_body: Callable[[str, np.ndarray], payloads.Body]):
    """gRPC unary, or the system's HTTP body."""
    def encode(protocol: str, m: BenchModel, x: np.ndarray, concurrency: int) -> payloads.Body:
        return payloads.grpc_unary(m.name, x) if protocol == "grpc" else http_body(m.name, x)

    return encode


# --- gateway ----------------------------------------------------------------------------------


def _gateway_yaml(s: Settings, window: str | None) -> str:
    if window is None:
        return f"max_batch_size: 0\ninstances: 1\nintra_op_threads: {s.intra_op_threads}\n"
    return (
        f"max_batch_size: {s.max_batch}\n"
        "dynamic_batching:\n"
        f"  max_queue_delay_us: {s.max_delay_us}\n"
        f"  adaptive_delay: {'true' if window == 'adaptive' else 'false'}\n"
        "  max_queue_size: 4096\n"
        f"instances: 1\nintra_op_threads: {s.intra_op_threads}\n"
    )


def _gateway_counts(http_port: int, model: str) -> tuple[int, int] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/{model}/stats", timeout=10) as r:
            stats = json.load(r)["model_stats"]
    except (OSError, ValueError, KeyError):
        return None
    return (sum(int(v.get("inference_count", 0)) for v in stats), sum(int(v.get("execution_count", 0)) for v in stats))


def start_gateway(s: Settings, log_path: str, *, window: str | None, workers: int) -> Running:
    """window: "adaptive" or "fixed" batching, None for none."""
    repo = os.path.join(s.workdir, f"gateway-{window or 'nobatch'}-w{workers}")
    for m in s.models.values():
        os.makedirs(os.path.join(repo, m.name, "1"), exist_ok=True)
        shutil.copyfile(m.path, os.path.join(repo, m.name, "1", "model.onnx"))
        with open(os.path.join(repo, m.name, "model.yaml"), "w") as fh:
            fh.write(_gateway_yaml(s, window))
    grpc_port, http_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--grpc-port", str(grpc_port),
           "--http-port", str(http_port), "--model-repository", repo, "--repository-poll-s", "0",
           "--grace-period-s", "5", "--workers", str(workers)]
    # With workers, each logs its own 'ready: <models>' and the supervisor 'ready: N workers' once all
    # are: an HTTP probe (or the first worker's line) alone may speak for one worker only.
    ready_line = rf"\] gateway\.supervisor: ready: {workers} workers" if workers > 1 else r" ready: "
    server = ServerProcess("gateway", cmd, log_path=log_path, cwd=ROOT).start_or_stop(
        _v2_ready_urls(http_port, s), 180, log_pattern=ready_line)

    def encode(protocol: str, m: BenchModel, x: np.ndarray, concurrency: int) -> payloads.Body:
        if protocol == "grpc":
            return payloads.grpc_unary(m.name, x)
        if protocol == "grpc-stream":
            return payloads.grpc_stream(m.name, x, max(1, min(concurrency, s.stream_messages)))
        return payloads.http_binary(m.name, x)

    return Running(server, grpc_port, http_port, encode, counts=lambda model: _gateway_counts(http_port, model))


GATEWAY_BATCHING = {"on": "adaptive", "fixed": "fixed", "off": None}  # --gateway-batching -> window


def gateway_configs(batching_modes: list[str], workers_list: list[int], protocols: tuple[str, ...],
                    s_max_batch: int, s_delay_us: int) -> list[SystemConfig]:
    out = []
    for mode in batching_modes:
        window = GATEWAY_BATCHING[mode]
        for workers in workers_list:
            desc = {"adaptive": f"batching on (max {s_max_batch}, adaptive ≤ {s_delay_us} µs)",
                    "fixed": f"batching on (max {s_max_batch}, fixed {s_delay_us} µs window)",
                    None: "batching off"}[window]
            desc += f", {workers} worker{'s' if workers > 1 else ''}"
            out.append(SystemConfig(
                "gateway", "gateway", desc, protocols, window is not None, workers,
                lambda s, log, win=window, w=workers: start_gateway(s, log, window=win, workers=w), window=window,
            ))
    return out


# --- MLServer ---------------------------------------------------------------------------------


def start_mlserver(s: Settings, log_path: str, *, parallel_workers: int | None) -> Running:
    python = venvs.ensure("mlserver", "requirements-mlserver.txt", [f"onnxruntime=={s.ort_version}"], s.cache_dir)
    root = os.path.join(s.workdir, f"mlserver-pw{parallel_workers}")
    os.makedirs(root, exist_ok=True)
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    server_settings = {
        "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
        # no per-request access log line (the other servers write none either)
        "logging_settings": {"version": 1, "disable_existing_loggers": False,
                             "loggers": {"uvicorn.access": {"level": "WARNING"}}},
    }
    if parallel_workers is not None:
        server_settings["parallel_workers"] = parallel_workers
    with open(os.path.join(root, "settings.json"), "w") as fh:
        json.dump(server_settings, fh)
    for m in s.models.values():
        os.makedirs(os.path.join(root, m.name), exist_ok=True)
        with open(os.path.join(root, m.name, "model-settings.json"), "w") as fh:
            json.dump({
                "name": m.name,
                "implementation": "mlserver_onnx.OnnxModel",
                "max_batch_size": s.max_batch,
                "max_batch_time": s.max_delay_us / 1e6,
                "parameters": {"uri": m.path, "extra": {"intra_op_threads": s.intra_op_threads}},
            }, fh)
    cmd = [os.path.join(os.path.dirname(python), "mlserver"), "start", root]
    server = ServerProcess("MLServer", cmd, log_path=log_path, cwd=root, env={"PYTHONPATH": PEERS}).start_or_stop(
        _v2_ready_urls(http_port, s), 240)
    return Running(server, grpc_port, http_port, _v2_encoder(payloads.http_v2_json),
                   versions=venvs.versions(python, ["mlserver", "onnxruntime", "uvloop"]))


def mlserver_configs() -> list[SystemConfig]:
    return [
        SystemConfig("mlserver", "MLServer", "adaptive batching, parallel_workers 1 (default), no access log", ("grpc", "http-json"),
                     True, 1, lambda s, log: start_mlserver(s, log, parallel_workers=None)),
        SystemConfig("mlserver", "MLServer", "adaptive batching, parallel_workers 0 (in-process), no access log", ("grpc", "http-json"),
                     True, 1, lambda s, log: start_mlserver(s, log, parallel_workers=0)),
    ]


# --- Triton via PyTriton ----------------------------------------------------------------------


def _libdir(python: str) -> str:
    res = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                         capture_output=True, text=True, timeout=60)
    return res.stdout.strip()


def start_pytriton(s: Settings, log_path: str) -> Running:
    python = venvs.ensure("pytriton", "requirements-pytriton.txt", [f"onnxruntime=={s.ort_version}"], s.cache_dir)
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    cmd = [python, os.path.join(PEERS, "pytriton_server.py"), "--http-port", str(http_port), "--grpc-port",
           str(grpc_port), "--metrics-port", str(metrics_port), "--max-batch", str(s.max_batch),
           "--max-delay-us", str(s.max_delay_us), "--intra-op-threads", str(s.intra_op_threads)]
    for m in s.models.values():
        cmd += ["--model", f"{m.name}={m.path}"]
    # the Python backend stub links libpython3.x.so: without this, models fail to load
    lib = os.pathsep.join(p for p in (_libdir(python), os.environ.get("LD_LIBRARY_PATH", "")) if p)
    server = ServerProcess("PyTriton", cmd, log_path=log_path, cwd=s.workdir, env={"LD_LIBRARY_PATH": lib}).start_or_stop(
        _v2_ready_urls(http_port, s), 300, grace_s=15)
    return Running(server, grpc_port, http_port, _v2_encoder(payloads.http_binary),
                   versions=venvs.versions(python, ["nvidia-pytriton", "onnxruntime"]))


def pytriton_configs(max_batch: int, delay_us: int) -> list[SystemConfig]:
    return [SystemConfig("pytriton", "Triton (PyTriton)", f"dynamic batcher (max {max_batch}, {delay_us} µs)",
                         ("grpc", "http-binary"), True, 1, start_pytriton)]


# --- naive FastAPI ----------------------------------------------------------------------------


def start_fastapi(s: Settings, log_path: str) -> Running:
    python = venvs.ensure("fastapi", "requirements-fastapi.txt", [f"onnxruntime=={s.ort_version}"], s.cache_dir)
    http_port = free_port()
    cmd = [python, os.path.join(PEERS, "fastapi_server.py"), "--port", str(http_port),
           "--intra-op-threads", str(s.intra_op_threads)]
    for m in s.models.values():
        cmd += ["--model", f"{m.name}={m.path}"]
    server = ServerProcess("FastAPI", cmd, log_path=log_path, cwd=s.workdir).start_or_stop(
        [f"http://127.0.0.1:{http_port}/health"], 120)
    return Running(server, None, http_port, _v2_encoder(payloads.naive_json),
                   versions=venvs.versions(python, ["fastapi", "uvicorn", "onnxruntime"]))


def fastapi_configs() -> list[SystemConfig]:
    return [SystemConfig("fastapi", "naive FastAPI", "uvicorn, 1 process, sync endpoint, no batching, no access log",
                         ("http-json",), False, 1, start_fastapi)]


# --- nghttpd: the protocol ceiling ------------------------------------------------------------


def start_nghttpd(s: Settings, log_path: str) -> Running:
    """nghttp2's C server (one thread) answering every gRPC request with a fixed ModelInfer answer
    of the model's answer size, read from a file: HTTP/2 framing, HPACK and the socket, no inference."""
    binary = shutil.which("nghttpd")
    if binary is None:
        raise StartError("nghttpd not found (apt-get install nghttp2-server)")
    docroot = os.path.join(s.workdir, "nghttpd")
    sizes = {}
    for m in s.models.values():
        answer = payloads.fixed_answer(m.name, (1, *m.output_shape))
        os.makedirs(os.path.join(docroot, m.name), exist_ok=True)
        with open(os.path.join(docroot, m.name, "ModelInfer"), "wb") as fh:
            fh.write(answer)
        sizes[m.name] = len(answer)
    port = free_port()
    server = ServerProcess("nghttpd", [binary, "--no-tls", "-n", "1", "-d", docroot, "-a", "127.0.0.1", str(port)],
                           log_path=log_path).wait_port(port, 30)

    def encode(protocol: str, m: BenchModel, x: np.ndarray, concurrency: int) -> payloads.Body:
        body = payloads.grpc_unary(m.name, x)
        return payloads.Body(body.protocol, f"/{m.name}/ModelInfer", body.data, body.headers)

    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    # `nghttpd --version` prints "nghttpd nghttp2/1.52.0"
    return Running(server, port, None, encode, versions={"nghttpd": version.removeprefix("nghttpd").strip()},
                   fixed_answer_bytes=sizes)


def nghttpd_configs() -> list[SystemConfig]:
    return [SystemConfig("nghttpd", "nghttpd (C, fixed answer)", "1 thread, no TLS, the request body read and dropped",
                         ("grpc",), False, 1, start_nghttpd)]
