"""Soak: steady load over gRPC and HTTP for a bounded time while models hot-reload (config edits and
new versions) and the response cache churns (short TTL, small in-process bound, Redis behind it).
Zero errors; RSS growth after warm-up below a stated bound. Selected with -m soak:

    GATEWAY_SOAK_S=120 .venv/bin/python -m pytest -m soak -s tests/reliability/test_soak.py
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import aiohttp
import grpc
import numpy as np
import pytest
from reliability_helpers import ADMIN_TOKEN, grpc_stub, quiescent, rss_bytes

import make_models

SOAK_S = float(os.environ.get("GATEWAY_SOAK_S", "90"))
WARMUP_S = min(20.0, SOAK_S / 4)
RSS_GROWTH_BOUND = 48 * 1024 * 1024  # after warm-up; the measured growth is in the README table
CONCURRENCY = 4
MLP_CONFIG = """max_batch_size: 32
dynamic_batching:
  max_queue_delay_us: {delay}
  max_queue_size: 1024
cache:
  exact: true
  ttl_s: 2
  max_bytes: 65536
"""


def _mlp_request(rng: np.random.Generator, pool: int):
    from tritonclient.grpc import service_pb2 as pb

    req = pb.ModelInferRequest(model_name="mlp")
    req.inputs.add(name="INPUT", datatype="FP32", shape=[1, 64])
    # A bounded pool of inputs: repeats hit the cache, the short TTL and small bound keep it churning.
    value = float(rng.integers(pool))
    req.raw_input_contents.append(np.full((1, 64), value / pool, np.float32).tobytes())
    return req


@pytest.mark.soak
def test_soak(tmp_path, start_gateway, redis_server):
    root = tmp_path / "models"
    make_models.write_repository(str(root), ["simple", "mlp"])
    (root / "mlp" / "model.yaml").write_text(MLP_CONFIG.format(delay=500))
    gw = start_gateway(root, "--admin-token", ADMIN_TOKEN, "--cache-url", redis_server.url,
                       "--cache-timeout-ms", "200", "--repository-poll-s", "0.5",
                       process=True)  # its RSS is sampled
    counts = {"ok": 0, "errors": 0, "reloads": 0, "versions": 1}
    errors: list[str] = []
    rss: list[tuple[float, int]] = []
    simple_body = json.dumps({"inputs": [
        {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
        {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16}]}).encode()
    start = time.monotonic()
    end = start + SOAK_S

    async def grpc_user(i: int, stub) -> None:
        rng = np.random.default_rng(i)
        while time.monotonic() < end:
            try:
                await stub.ModelInfer(_mlp_request(rng, 400), timeout=30)
                counts["ok"] += 1
            except grpc.aio.AioRpcError as err:
                counts["errors"] += 1
                errors.append(f"grpc {err.code().name}: {err.details()}")

    async def http_user(session) -> None:
        while time.monotonic() < end:
            async with session.post(f"http://{gw.http_url}/v2/models/simple/infer", data=simple_body,
                                    headers={"Content-Type": "application/json"}) as resp:
                body = await resp.read()
                if resp.status == 200:
                    counts["ok"] += 1
                else:
                    counts["errors"] += 1
                    errors.append(f"http {resp.status}: {body[:200]!r}")

    async def churn() -> None:
        """Every few seconds: an edited mlp config (a reload), and now and then a new simple version."""
        tick = 0
        while time.monotonic() < end - 3:
            await asyncio.sleep(3)
            tick += 1
            path = root / "mlp" / "model.yaml"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(MLP_CONFIG.format(delay=500 + 100 * (tick % 2)))
            os.replace(tmp, path)
            counts["reloads"] += 1
            if tick % 3 == 0:
                counts["versions"] += 1
                staging = tmp_path / "staging"
                make_models.write_repository(str(staging), ["simple"])
                os.replace(staging / "simple" / "1", root / "simple" / str(counts["versions"]))
                (staging / "simple" / "model.yaml").unlink()

    async def sample_rss() -> None:
        while time.monotonic() < end:
            rss.append((time.monotonic() - start, rss_bytes(gw.proc.pid)))
            await asyncio.sleep(1)

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(gw.grpc_url) as channel, aiohttp.ClientSession() as session:
            stub = grpc_stub(channel)
            await asyncio.gather(
                *(grpc_user(i, stub) for i in range(CONCURRENCY)), *(http_user(session) for _ in range(CONCURRENCY)),
                churn(), sample_rss(),
            )

    asyncio.run(scenario())
    state = quiescent(gw)
    cache = json.loads(gw.http("GET", "/v2/cache/stats")[2])
    mlp_tiers = cache["models"]["mlp"]["tiers"]
    baseline = next(b for t, b in rss if t >= WARMUP_S)
    final = max(b for t, b in rss[-5:])
    growth = final - baseline
    print(f"\n[soak] {SOAK_S:.0f}s: ok={counts['ok']} errors={counts['errors']} rate={counts['ok'] / SOAK_S:.0f}/s "
          f"mlp reloads={counts['reloads']} simple versions={counts['versions']} "
          f"cache memory hits={mlp_tiers['memory']['hits']} evictions={mlp_tiers['memory']['evictions']} "
          f"redis hits={mlp_tiers['redis']['hits']} rss start={rss[0][1] / 2**20:.1f}MiB "
          f"after warm-up={baseline / 2**20:.1f}MiB end={final / 2**20:.1f}MiB growth={growth / 2**20:.1f}MiB "
          f"tasks={state['asyncio_tasks']} threads={state['threads']}")
    assert counts["errors"] == 0, errors[:10]
    assert counts["reloads"] >= 3 and mlp_tiers["memory"]["evictions"] > 0 and mlp_tiers["memory"]["hits"] > 0
    assert growth < RSS_GROWTH_BOUND, f"RSS grew {growth / 2**20:.1f} MiB after warm-up"
    assert "Traceback" not in gw.log() and "unexpected error" not in gw.log()
