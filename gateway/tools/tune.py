"""``gateway tune MODEL --p99-ms X``: find batch settings that serve the most under a p99 bound.

Coordinate descent over max_batch_size, max_queue_delay_us, instances and
intra_op_threads: each candidate is written to the model's model.yaml, the
daemon hot-reloads it (checked through ModelConfig), and the built-in load
generator measures it. The best setting whose p99 meets the bound is written
back (the old file kept as model.yaml.bak-<time>). Triton needs a separate
Model Analyzer for this.
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import grpc
import yaml

from gateway._proto import grpc_service_pb2 as pb
from gateway._proto import grpc_service_pb2_grpc as pb_grpc
from gateway.core.model_config import CONFIG_FILENAME, load_model_config
from gateway.tools.loadgen import LoadResult, example_request, fetch_metadata, run_load

SEARCH_SPACE: dict[str, list[int]] = {
    "max_batch_size": [4, 8, 16, 32, 64],
    "max_queue_delay_us": [0, 100, 500, 2000],
    "instances": [1, 2],
    "intra_op_threads": [1, 2],
}


@dataclass(slots=True)
class Trial:
    setting: dict[str, int]
    result: LoadResult


def _get(doc: dict, key: str, default: int) -> int:
    if key == "max_queue_delay_us":
        return int((doc.get("dynamic_batching") or {}).get(key, default))
    return int(doc.get(key, default))


def _apply(doc: dict, setting: dict[str, int]) -> dict:
    out = copy.deepcopy(doc)
    for key, value in setting.items():
        if key == "max_queue_delay_us":
            out.setdefault("dynamic_batching", {})[key] = value
        else:
            out[key] = value
    db = out.get("dynamic_batching") or {}
    # Preferred sizes above a smaller max_batch_size would make the file invalid.
    if "preferred_batch_sizes" in db:
        db["preferred_batch_sizes"] = [s for s in db["preferred_batch_sizes"] if s <= out["max_batch_size"]]
    return out


def _write_yaml(path: str, doc: dict) -> None:
    tmp = path + ".tuning"
    with open(tmp, "w", encoding="utf-8") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    os.replace(tmp, path)


async def _wait_applied(target: str, model: str, setting: dict[str, int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while True:
            try:
                cfg = (await stub.ModelConfig(pb.ModelConfigRequest(name=model), timeout=10)).config
                seen = {
                    "max_batch_size": cfg.max_batch_size,
                    "max_queue_delay_us": cfg.dynamic_batching.max_queue_delay_microseconds,
                    "instances": cfg.instance_group[0].count if cfg.instance_group else 1,
                    "intra_op_threads": int(cfg.parameters["intra_op_threads"].string_value or 0),
                }
                ready = (await stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=10)).ready
                if ready and all(seen[k] == v for k, v in setting.items()):
                    return
            except grpc.RpcError:
                pass  # the version is being swapped
            if time.monotonic() > deadline:
                raise TimeoutError(f"the daemon did not load {setting} within {timeout_s:.0f}s (is it polling {model}?)")
            await asyncio.sleep(0.1)


def _self_started(repository: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0",
         "--model-repository", repository, "--repository-poll-s", "0.2"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    stderr = proc.stderr
    assert stderr is not None  # stderr=PIPE
    deadline = time.monotonic() + 120
    target = ""
    while time.monotonic() < deadline:
        line = stderr.readline()
        m = re.search(r"listening grpc=([\d.]+:\d+)", line)
        if m:
            target = m.group(1)
        if target and " ready: " in line:
            # Keep draining stderr so the daemon never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in stderr], daemon=True).start()
            return proc, target
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("could not start a gateway daemon for tuning")


async def tune(
    model: str,
    repository: str,
    p99_ms: float,
    target: str | None,
    concurrency: int,
    seconds: float,
    dry_run: bool,
    out=print,
    warmup_s: float = 0.5,
) -> dict[str, int] | None:
    model_dir = os.path.join(repository, model)
    path = os.path.join(model_dir, CONFIG_FILENAME)
    load_model_config(model_dir)  # refuse to start from an invalid file
    original_text = None
    original: dict = {}  # model.yaml as parsed
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            original_text = fh.read()
        original = yaml.safe_load(original_text) or {}
    proc = None
    if target is None:
        proc, target = _self_started(repository)
    trials: list[Trial] = []
    try:
        metadata = await fetch_metadata(target, model)
        batching = bool(metadata.inputs) and all(t.shape and t.shape[0] == -1 for t in metadata.inputs)
        body = example_request(model, metadata)
        space = dict(SEARCH_SPACE)
        if not batching:
            space = {k: v for k, v in space.items() if k in ("instances", "intra_op_threads")}
        best = {k: _get(original, k, default) for k, default in
                (("max_batch_size", 32), ("max_queue_delay_us", 0), ("instances", 1), ("intra_op_threads", 1))
                if k in space}

        measured: dict[tuple, LoadResult] = {}

        async def measure(setting: dict[str, int]) -> LoadResult:
            key = tuple(sorted(setting.items()))
            if key in measured:  # coordinate descent can come back to a setting already tried
                return measured[key]
            _write_yaml(path, _apply(original, setting))
            await _wait_applied(target, model, setting, timeout_s=120)
            result = await run_load(target, body, concurrency, seconds, warmup_s)
            trials.append(Trial(dict(setting), result))
            measured[key] = result
            out(f"  {setting} -> {result.rate:,.0f} infer/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms"
                f"{', ' + str(result.errors) + ' errors' if result.errors else ''}")
            return result

        def score(r: LoadResult) -> tuple:
            meets = r.p99_ms <= p99_ms and r.errors == 0
            return (meets, r.rate if meets else -r.p99_ms)

        out(f"tuning {model} for p99 <= {p99_ms} ms at concurrency {concurrency}, {seconds:g} s per trial")
        best_result = await measure(best)
        for key, values in space.items():
            for value in values:
                if value == best[key]:
                    continue
                candidate = {**best, key: value}
                r = await measure(candidate)
                if score(r) > score(best_result):
                    best, best_result = candidate, r
    finally:
        # Leave the file byte for byte as it was until the decision below.
        if original_text is not None:
            tmp = path + ".tuning"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(original_text)
            os.replace(tmp, path)
        elif os.path.exists(path):
            os.remove(path)
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()

    out("")
    out("| " + " | ".join(SEARCH_SPACE) + " | infer/s | p50 ms | p99 ms | errors |")
    out("|" + "---:|" * (len(SEARCH_SPACE) + 4))
    for t in trials:
        cells = [str(t.setting.get(k, "-")) for k in SEARCH_SPACE]
        r = t.result
        out(f"| {' | '.join(cells)} | {r.rate:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |")
    if not (best_result.p99_ms <= p99_ms and best_result.errors == 0):
        out(f"\nno setting met p99 <= {p99_ms} ms; model.yaml left unchanged")
        return None
    out(f"\nbest: {best} ({best_result.rate:,.0f} infer/s, p99 {best_result.p99_ms:.2f} ms)")
    if dry_run:
        out("dry run: model.yaml left unchanged")
        return best
    if os.path.exists(path):
        backup = f"{path}.bak-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.copy2(path, backup)
        out(f"previous settings kept in {backup}")
    _write_yaml(path, _apply(original, best))
    out(f"wrote {path}")
    return best
