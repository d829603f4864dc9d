"""Response cache: what a hit saves, what Redis costs, how often the semantic cache is wrong.

    .venv/bin/python benchmarks/cache_bench.py [--seconds 5] [--concurrency 1,32]

1. End to end over gRPC (h2load replays one pre-encoded ModelInfer, so with the
   cache on every request after the first is a hit): the mlp example model
   with the cache off, an in-process hit, and a Redis-only hit
   (``max_bytes: 0``), side by side in one run, with server CPU per request.
2. In-process timings per request (no network to the client): one Redis
   round trip (GET+PTTL pipeline), and ResponseCache.serve on a memory hit, a
   Redis hit, and a miss whose answer is stored in both tiers.
3. Semantic cache: embedding time per prompt, lookup time against a scope of
   1,000 entries, and the false-hit / paraphrase-hit rates on the labelled
   pairs of tests/semantic_pairs.py at several thresholds, with and without
   the lexical guard.

Needs h2load (Debian nghttp2-client) and redis-server (Debian redis-server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import uvloop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import make_models  # noqa: E402
from grpc_unary import cpu_seconds, grpc_body, h2load, machine, start_gateway  # noqa: E402
from redis_server import RedisServer  # noqa: E402
from semantic_pairs import PAIRS  # noqa: E402

from gateway.cache import ResponseCache  # noqa: E402
from gateway.cache.redis_store import RedisStore  # noqa: E402
from gateway.core.model_config import CacheConfig, SemanticCacheConfig  # noqa: E402
from gateway.core.stats import ModelStats  # noqa: E402
from gateway.core.types import InferRequest, InferResponse  # noqa: E402

MODEL_YAML = "max_batch_size: 32\ndynamic_batching:\n  max_queue_size: 4096\n"


def encoder_onnx() -> str:
    """The semantic cache's sentence encoder, built once: a real ~5 ms model to serve."""
    from gateway.cache.semantic.embedder import Embedder

    return str(Embedder(cache_dir=__import__("pathlib").Path(ROOT) / ".cache" / "embedder").onnx_path)


def write_body(path: str, model: str, inputs: dict[str, tuple[str, np.ndarray]]) -> None:
    """One pre-encoded gRPC ModelInfer message (5-byte frame prefix + protobuf) for h2load."""
    from gateway._proto import grpc_service_pb2 as pb

    req = pb.ModelInferRequest(model_name=model)
    for name, (datatype, arr) in inputs.items():
        req.inputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        req.raw_input_contents.append(arr.tobytes())
    payload = req.SerializeToString()
    with open(path, "wb") as fh:
        fh.write(b"\0" + struct.pack(">I", len(payload)) + payload)


redis_counts: dict[str, dict] = {}


def end_to_end(args, redis_url: str) -> list[tuple]:
    """All variants serve at once; rounds interleave them so load from elsewhere hits each alike."""
    variants = [
        ("cache off (model call)", "", ()),
        ("exact, in-process hit", "cache:\n  exact: true\n", ()),
        ("exact, Redis hit (max_bytes 0)", "cache:\n  exact: true\n  max_bytes: 0\n",
         ("--cache-url", redis_url, "--cache-timeout-ms", str(args.cache_timeout_ms))),
    ]
    concurrencies = [int(v) for v in args.concurrency.split(",")]
    samples: dict[tuple[str, str, int], list[tuple[float, float, float]]] = {}
    encoder = encoder_onnx()
    with tempfile.TemporaryDirectory() as tmp:
        bodies = {"mlp": os.path.join(tmp, "mlp.bin"), "minilm": os.path.join(tmp, "minilm.bin")}
        grpc_body(bodies["mlp"])
        tokens = np.array([[101, 2129, 2079, 1045, 2415, 1037, 4487, 2615, 1999, 20116, 2015, 1029, 102]], np.int64)
        write_body(bodies["minilm"], "minilm", {"input_ids": ("INT64", tokens), "attention_mask": ("INT64", np.ones_like(tokens))})
        servers = []
        try:
            for i, (name, cache_yaml, extra) in enumerate(variants):
                repo = os.path.join(tmp, f"repo{i}")
                make_models.write_repository(repo, ["mlp"])
                with open(os.path.join(repo, "mlp", "model.yaml"), "w") as fh:
                    fh.write(MODEL_YAML + cache_yaml)
                os.makedirs(os.path.join(repo, "minilm", "1"))
                os.symlink(encoder, os.path.join(repo, "minilm", "1", "model.onnx"))
                with open(os.path.join(repo, "minilm", "model.yaml"), "w") as fh:
                    fh.write("max_batch_size: 0\n" + cache_yaml)
                servers.append((name, *start_gateway(repo, tuple(extra))))
            for _ in range(args.rounds):
                for model in bodies:
                    for c in concurrencies:
                        for name, proc, grpc_port, _ in servers:
                            cpu0 = cpu_seconds(proc.pid)
                            rate, done, gen_cpu = h2load(grpc_port, bodies[model], c, args.seconds)
                            cpu_ms = (cpu_seconds(proc.pid) - cpu0) * 1000 / max(done, 1)
                            samples.setdefault((model, name, c), []).append((rate, cpu_ms, gen_cpu))
            for name, _, _, http_port in servers:
                if "Redis" in name:
                    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/cache/stats", timeout=10) as r:
                        redis_counts[name] = {m: d["tiers"].get("redis", {}) for m, d in json.load(r)["models"].items()}
        finally:
            for _, proc, _, _ in servers:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    rows = []
    for (model, name, c), runs in samples.items():
        rows.append((model, name, c, *(statistics.median(r[k] for r in runs) for k in range(3))))
    return rows


def _request(value: float) -> InferRequest:
    return InferRequest("mlp", "1", {"INPUT": np.full((1, 64), value, np.float32)}, {"INPUT": "FP32"})


async def per_request(redis_url: str, n: int, salt: int) -> dict[str, float]:
    """Microseconds per operation, sequential, on this event loop."""
    out = np.zeros((1, 8), np.float32)

    async def model() -> InferResponse:
        return InferResponse("mlp", "1", {"OUTPUT": out}, {"OUTPUT": "FP32"})

    def timed(label: str, total_s: float) -> None:
        results[label] = total_s / n * 1e6

    results: dict[str, float] = {}
    store = RedisStore(redis_url, timeout_s=0.5)
    await store.call(lambda r: r.ping())

    async def get_with_ttl(r):
        pipe = r.pipeline(transaction=False)
        pipe.get("gw:x:bench")
        pipe.pttl("gw:x:bench")
        return await pipe.execute()

    t0 = time.perf_counter()
    for _ in range(n):
        await store.call(get_with_ttl)
    timed("one Redis round trip (GET+PTTL pipeline)", time.perf_counter() - t0)

    stats = ModelStats()
    both = ResponseCache(store)
    memory_only = ResponseCache()
    on, redis_only = CacheConfig(exact=True), CacheConfig(exact=True, max_bytes=0)
    req = _request(0.5)
    await memory_only.serve("mlp", "1", on, req, stats, model)
    t0 = time.perf_counter()
    for _ in range(n):
        await memory_only.serve("mlp", "1", on, req, stats, model)
    timed("ResponseCache.serve, in-process hit", time.perf_counter() - t0)

    await both.serve("mlp", "1", redis_only, req, stats, model)
    while both._pending_stores:
        await asyncio.sleep(0.001)
    t0 = time.perf_counter()
    for _ in range(n):
        await both.serve("mlp", "1", redis_only, req, stats, model)
    timed("ResponseCache.serve, Redis hit", time.perf_counter() - t0)

    t0 = time.perf_counter()
    for i in range(n):
        await memory_only.serve("mlp", "1", on, _request(float(i) + 1.5 + salt * n), stats, model)
    timed("ResponseCache.serve, miss + in-process store (model call excluded: ~0)", time.perf_counter() - t0)

    t0 = time.perf_counter()
    for i in range(n):
        await both.serve("mlp", "1", on, _request(-float(i) - 1.5 - salt * n), stats, model)
    while both._pending_stores:
        await asyncio.sleep(0.001)
    timed("ResponseCache.serve, miss + Redis lookup + both stores", time.perf_counter() - t0)
    await both.close()
    return results


async def semantic(redis_url: str) -> tuple[dict, list[tuple], dict]:
    from gateway.cache.semantic import SemanticCache, SemanticResult, prompt_query
    from gateway.cache.semantic.embedder import Embedder
    from gateway.cache.semantic.guard import conflict

    embedder = Embedder(cache_dir=__import__("pathlib").Path(ROOT) / ".cache" / "embedder")
    timings: dict[str, float] = {}
    prompts = [a for a, _, _ in PAIRS] + [b for _, b, _ in PAIRS]
    embedder.embed(prompts[:2])
    per = []
    for p in prompts:
        t0 = time.perf_counter()
        embedder.embed([p])
        per.append(time.perf_counter() - t0)
    timings["embed one prompt, median ms"] = statistics.median(per) * 1000
    timings["embed one prompt, p90 ms"] = sorted(per)[int(0.9 * len(per))] * 1000

    cache = SemanticCache(embedder)
    cfg = SemanticCacheConfig(enabled=True, max_entries=20_000)
    greedy = {"temperature": 0.0}
    rng = np.random.default_rng(0)
    for i in range(1000):  # random unit vectors: the scan's cost does not depend on what they mean
        v = rng.standard_normal(embedder.dim).astype(np.float32)
        filler = prompt_query("m", "1", [("user", f"synthetic prompt {i}")], greedy)
        await cache.store(filler, cfg, SemanticResult(None, None, vector=v / np.linalg.norm(v)), "filler")
    index = cache.index_for("m", cfg)
    scope = filler.scope
    q = prompt_query("m", "1", [("user", "How do I center a div in CSS?")], greedy)
    await cache.lookup(q, cfg)
    t0 = time.perf_counter()
    for _ in range(50):
        await cache.lookup(q, cfg)
    timings["lookup (embed + search 1,000 entries), ms"] = (time.perf_counter() - t0) / 50 * 1000
    vec = embedder.embed([q.prompt])[0]
    t0 = time.perf_counter()
    for _ in range(1000):
        index.search(scope, vec, time.monotonic_ns())
    timings["search alone, 1,000 entries, ms"] = (time.perf_counter() - t0)

    shared = SemanticCache(embedder, RedisStore(redis_url, timeout_s=0.5))
    sq = prompt_query("m", "1", [("user", "Explain what a hash table is.")], greedy)
    await shared.store(sq, cfg, await shared.lookup(sq, cfg), "answer")
    t0 = time.perf_counter()
    for _ in range(50):
        await shared.lookup(sq, cfg)
    timings["lookup with Redis scope sync, ms"] = (time.perf_counter() - t0) / 50 * 1000
    await shared.shared.close()

    sims = []
    for a, b, same in PAIRS:
        va, vb = embedder.embed([a, b])
        sims.append((float(va @ vb), same, bool(conflict(a, b))))
    table = []
    negatives = sum(1 for _, same, _ in sims if not same)
    positives = len(sims) - negatives
    for t in (0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97):
        fh_raw = sum(1 for s, same, _ in sims if not same and s >= t)
        fh = sum(1 for s, same, c in sims if not same and s >= t and not c)
        ph = sum(1 for s, same, c in sims if same and s >= t and not c)
        table.append((t, fh_raw, fh, ph))
    return timings, table, {"negatives": negatives, "positives": positives}


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return out.split()[2] if out else "?"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument("--ops", type=int, default=5000)
    ap.add_argument("--cache-timeout-ms", type=float, default=5.0, help="the gateway's cache_timeout_ms")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are printed")
    args = ap.parse_args()
    for tool, pkg in (("h2load", "nghttp2-client"), ("redis-server", "redis-server")):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install {pkg}", file=sys.stderr)
            return 2
    load_start = f"{os.getloadavg()[0]:.1f}"
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(tmp)
        server.start()
        try:
            rows = end_to_end(args, server.url)
            runs = [uvloop.run(per_request(server.url, args.ops, salt)) for salt in range(args.rounds)]
            micro = {label: statistics.median(r[label] for r in runs) for label in runs[0]}
            sem_timings, table, counts = asyncio.run(semantic(server.url))
        finally:
            server.stop()

    print(f"machine: {machine()}; redis-server {redis_version()} on loopback; "
          f"load average at start {load_start}, at end {os.getloadavg()[0]:.1f}")
    print("models: mlp [-1,64] -> [-1,8] (a tiny MLP: a model call costs little, a floor for what a hit saves); "
          "minilm: all-MiniLM-L6-v2 as ONNX, 13 tokens, no batching (a real ~5 ms model)")
    print(f"gRPC ModelInfer replayed by h2load, {args.seconds:.0f} s per point, "
          f"median of {args.rounds} interleaved rounds\n")
    print("| model | path | concurrency | requests/s | vs model call | server CPU ms per request | h2load CPU s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    base = {(m, c): rate for m, name, c, rate, _, _ in rows if name.startswith("cache off")}
    for model, name, c, rate, cpu_ms, gen_cpu in rows:
        print(f"| {model} | {name} | {c} | {rate:,.0f} | {rate / base[(model, c)]:.2f}x | {cpu_ms:.3f} | {gen_cpu:.2f} |")
    for name, per_model in redis_counts.items():
        for model, c in per_model.items():
            print(f"{name}, {model}: Redis hits {c.get('hits', 0):,}, misses {c.get('misses', 0):,}, "
                  f"errors {c.get('errors', 0):,}, bypassed {c.get('bypassed', 0):,} (timeout {args.cache_timeout_ms} ms)")
    print(f"\nin-process on uvloop, sequential, {args.ops:,} operations each, median of {args.rounds} rounds "
          "(µs per operation):\n")
    print("| operation | µs |")
    print("|---|---:|")
    for label, us in micro.items():
        print(f"| {label} | {us:.1f} |")
    print("\nsemantic cache (all-MiniLM-L6-v2 on onnxruntime, 1 thread):\n")
    print("| measure | ms |")
    print("|---|---:|")
    for label, ms in sem_timings.items():
        print(f"| {label} | {ms:.2f} |")
    print(f"\nlabelled pairs: {counts['negatives']} non-paraphrases, {counts['positives']} paraphrases "
          "(tests/semantic_pairs.py)\n")
    print("| threshold | false hits, similarity only | false hits, with guard | false-hit rate | paraphrase hits |")
    print("|---:|---:|---:|---:|---:|")
    for t, fh_raw, fh, ph in table:
        print(f"| {t:.2f} | {fh_raw}/{counts['negatives']} | {fh}/{counts['negatives']} | "
              f"{fh / counts['negatives']:.1%} | {ph}/{counts['positives']} ({ph / counts['positives']:.0%}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
