"""Continuous batching vs one request at a time, on the tiny decoder, side by side.

    .venv/bin/python benchmarks/generation_bench.py [--tokens 64] [--requests 64] [--concurrency 1,8,32]
                                                    [--kv-cache host,device]

One daemon serves two copies of examples/tiny_llm.py's model: ``batched`` (max_sequences
32: every decode step runs all active sequences in one call) and ``serial``
(max_sequences 1: sequences are generated one at a time, the rest wait), and a raw
onnxruntime greedy loop in this process (the limit for one stream). For each
concurrency, N streamed /v1/completions requests (greedy, ``ignore_eos``-like: a long
max_tokens and a prompt whose greedy continuation is long) are kept in flight by a
closed-loop aiohttp client; completion tokens/s come from the usage chunks. Also
printed: the engine's step-batch histogram, the KV re-padding share of step time, and
server / client CPU (2-core hosts: the client competes with the server).

``--kv-cache host,device`` serves both copies once per ``generation.kv_cache`` mode (models
``batched-host``, ``batched-device``, ...), measured one after the other at each concurrency,
and prints the modes' tokens/s side by side (numpy past fed each step vs OrtValues kept
in the session's memory, rows moved by kv_ops graphs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request

import aiohttp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

import tiny_llm  # noqa: E402

from benchmarks.machine import cpu_split, describe, summary_line, tree_cpu_by_pid  # noqa: E402
from benchmarks.servers import ServerProcess, free_port  # noqa: E402

YAML = """max_batch_size: 0
generation:
  context_length: 256
  max_sequences: {max_sequences}
  max_waiting_sequences: 1024
  kv_cache: {kv_cache}
"""
PROMPT = "Once upon a time"


async def _one(session: aiohttp.ClientSession, url: str, model: str, tokens: int) -> int:
    body = {"model": model, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    completion = 0
    async with session.post(url, json=body) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if line.startswith(b"data: {") and b'"usage":{' in line:
                completion = json.loads(line[6:])["usage"]["completion_tokens"]
    return completion


async def _drive(url: str, model: str, concurrency: int, requests: int, tokens: int) -> tuple[float, int]:
    left = requests
    total = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        async def worker():
            nonlocal left, total
            while left > 0:
                left -= 1
                got = await _one(session, url, model, tokens)  # not `total += await`: that reads total first
                total += got

        start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        return time.perf_counter() - start, total


def _raw_greedy(model_dir: str, requests: int, tokens: int) -> tuple[float, int]:
    """The limit for one stream: (seconds, tokens) of ``requests`` greedy generations in a loop of
    onnxruntime calls in this process (one thread, batch 1, the past fed back; no server, no text)."""
    from tokenizers import Tokenizer

    version_dir = os.path.join(model_dir, "1")
    session = tiny_llm._session(version_dir)
    tokenizer = Tokenizer.from_file(os.path.join(version_dir, "tokenizer.json"))
    prompt = tokenizer.encode(PROMPT).ids
    stop = (tokenizer.token_to_id(tiny_llm.EOS), tokenizer.token_to_id(tiny_llm.IM_END))  # as the server stops
    tiny_llm.reference_greedy(version_dir, prompt, 8, stop, session=session)  # warm-up
    total, start = 0, time.perf_counter()
    for _ in range(requests):
        total += len(tiny_llm.reference_greedy(version_dir, prompt, tokens, stop, session=session))
    return time.perf_counter() - start, total


def _metrics(http: str) -> str:
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=30) as resp:
        return resp.read().decode()


def _engine_numbers(text: str, model: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    out = {"buckets": {}, "step_s": 0.0, "repad_s": 0.0, "steps": 0.0, "seqs": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model") != model:
                continue
            if s.name == "gateway_generation_step_sequences_bucket":
                out["buckets"][s.labels["le"]] = s.value
            elif s.name == "gateway_generation_step_sequences_count":
                out["steps"] = s.value
            elif s.name == "gateway_generation_step_sequences_sum":
                out["seqs"] = s.value
            elif s.name == "gateway_generation_step_seconds_total":
                out["step_s" if s.labels["part"] == "total" else "repad_s"] = s.value
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64, help="max_tokens per request")
    ap.add_argument("--requests", type=int, default=64, help="requests per concurrency level (at least the concurrency)")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--kv-cache", default="auto", help="generation.kv_cache modes to compare, e.g. host,device")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    modes = args.kv_cache.split(",")
    # (model name, engine kind, kv mode); names keep their old form when one mode is measured.
    models = [(kind if len(modes) == 1 else f"{kind}-{mode}", kind, mode) for mode in modes for kind in ("batched", "serial")]

    machine = describe()
    print(summary_line(machine))
    work = tempfile.mkdtemp(prefix="genbench-")
    repo = os.path.join(work, "models")
    src = tiny_llm.write_tiny_llm(os.path.join(work, "src"))
    for name, kind, mode in models:
        shutil.copytree(src, os.path.join(repo, name))
        with open(os.path.join(repo, name, "model.yaml"), "w") as fh:
            fh.write(YAML.format(max_sequences=32 if kind == "batched" else 1, kv_cache=mode))
    http, grpc = free_port(), free_port()
    server = ServerProcess(
        "gateway",
        [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--http-port", str(http), "--grpc-port", str(grpc),
         "--model-repository", repo],
        log_path=os.path.join(work, "gateway.log"),
    ).start_or_stop([f"http://127.0.0.1:{http}/v2/health/ready"], 60)
    url = f"http://127.0.0.1:{http}/v1/completions"
    rows = []
    try:
        for model, _, _ in models:  # warm-up: sessions, first-call allocations
            asyncio.run(_drive(url, model, 2, 2, 8))
        for c in levels:
            n = max(args.requests, c)
            for model, _, _ in models:
                before_m = _engine_numbers(_metrics(f"127.0.0.1:{http}"), model)
                cpu0, client0 = tree_cpu_by_pid(server.pid), time.process_time()
                seconds, tokens = asyncio.run(_drive(url, model, c, n, args.tokens))
                server_cpu = sum(cpu_split(cpu0, tree_cpu_by_pid(server.pid)))
                client_cpu = time.process_time() - client0
                after_m = _engine_numbers(_metrics(f"127.0.0.1:{http}"), model)
                steps = after_m["steps"] - before_m["steps"]
                seqs = after_m["seqs"] - before_m["seqs"]
                step_s = after_m["step_s"] - before_m["step_s"]
                repad_s = after_m["repad_s"] - before_m["repad_s"]
                rows.append((c, model, tokens / seconds, tokens, seconds, seqs / steps if steps else 0.0,
                             repad_s / step_s if step_s else 0.0, server_cpu / seconds, client_cpu / seconds))
        # The limit, measured after the server's points (it is idle now, not stopped: same memory state).
        raw_seconds, raw_tokens = _raw_greedy(src, max(args.requests, 1), args.tokens)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'streams':>7} {'engine':>14} {'tokens/s':>9} {'tokens':>7} {'s':>6} {'seq/step':>8} {'repad':>6} "
          f"{'srv cpu':>7} {'cli cpu':>7}")
    for c, model, tps, tokens, seconds, per_step, repad, srv, cli in rows:
        print(f"{c:>7} {model:>14} {tps:>9.0f} {tokens:>7} {seconds:>6.2f} {per_step:>8.1f} {repad:>6.1%} {srv:>7.2f} {cli:>7.2f}")
    raw_tps = raw_tokens / raw_seconds
    print(f"{'–':>7} {'raw ORT loop':>14} {raw_tps:>9.0f} {raw_tokens:>7} {raw_seconds:>6.2f}")
    by = {(c, m): tps for c, m, tps, *_ in rows}
    if 1 in levels:
        print("\nratio 1 stream ÷ raw onnxruntime greedy loop (tokens/s): " + ", ".join(
            f"{model} {by[(1, model)] / raw_tps:.2f}" for model, _, _ in models))
    name = {(kind, mode): model for model, kind, mode in models}
    for mode in modes:
        print(f"\nratio batched / serial (tokens/s){'' if len(modes) == 1 else f', kv_cache {mode}'}:")
        for c in levels:
            print(f"  {c:>3} streams: {by[(c, name['batched', mode])] / by[(c, name['serial', mode])]:.2f}x")
    for mode in modes[1:]:
        print(f"\nratio kv_cache {mode} / {modes[0]} (tokens/s):")
        for c in levels:
            pair = " ".join(f"{kind} {by[(c, name[kind, mode])] / by[(c, name[kind, modes[0]])]:.2f}x" for kind in ("batched", "serial"))
            print(f"  {c:>3} streams: {pair}")
    print("\nseq/step: sequences per decode call; repad: share of step time spent re-padding the KV cache as "
          "sequences join/leave; cpu in cores (server process tree, this client process).")


if __name__ == "__main__":
    main()
