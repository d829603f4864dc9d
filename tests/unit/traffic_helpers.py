"""A routed service over fake executors, for the routing tests (tests/unit/test_traffic.py and
test_fleet_state.py): versions of one model "m", y = x * scale."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from gateway.core.model_config import ModelConfig
from gateway.core.stats import ModelStats
from gateway.core.types import InferRequest, TensorSpec
from gateway.scheduler.policy import BatchingPolicy
from gateway.scheduler.runner import ModelScheduler, SchedulerSpec
from gateway.service import InferenceService
from gateway.service.models import LoadedVersion, ModelManager

WAIT_S = 20  # bound on every wait


class FakeExecutor:
    """y = x * scale; optionally gated on an event the test opens, or always failing."""

    inputs = (TensorSpec("x", "FP32", (-1, 2)),)
    outputs = (TensorSpec("y", "FP32", (-1, 2)),)

    def __init__(self, scale: float = 1.0, *, gated: bool = False, fails: bool = False) -> None:
        self.scale = scale
        self.fails = fails
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.runs = 0

    def run(self, feeds, output_names):
        assert self.gate.wait(WAIT_S)
        self.runs += 1
        if self.fails:
            raise RuntimeError("this version is broken")
        return [feeds["x"] * self.scale]

    def close(self):
        self.gate.set()


def make_service(executors: dict[str, FakeExecutor], routing: dict | None) -> InferenceService:
    cfg = ModelConfig.model_validate({"name": "m", "version_policy": {"all": True}, "routing": routing})
    manager = ModelManager("/nonexistent")
    versions = {}
    for v, ex in executors.items():
        stats = ModelStats()
        spec = SchedulerSpec(name="m", version=v, batching=True, output_names=("y",))
        lv = LoadedVersion(
            name="m", version=v, config=cfg, max_batch_size=8,
            inputs=(TensorSpec("x", "FP32", (2,)),), outputs=(TensorSpec("y", "FP32", (2,)),),
            scheduler=ModelScheduler(spec, BatchingPolicy(max_batch_size=8), [ex], stats),
            stats=stats, fingerprint=(0, 0), config_digest="",
        )
        lv.input_index = {s.name: s for s in lv.inputs}
        lv.output_index = {s.name: s for s in lv.outputs}
        versions[v] = lv
    manager.serving["m"] = versions
    manager.loaded_once = True
    return InferenceService(manager)


def req(values=(1.0, 2.0), *, key: str = "", version: str = "") -> InferRequest:
    x = np.array([values], dtype=np.float32)
    return InferRequest(model="m", version=version, inputs={"x": x}, datatypes={"x": "FP32"}, route_key=key)


async def until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def close(service: InferenceService) -> None:
    for lv in service.models.serving["m"].values():
        await lv.scheduler.drain(1)


def pair(service: InferenceService, live: str, shadow: str) -> dict:
    for p in service.routing.status("m")["shadows"]:
        if p["live_version"] == live and p["version"] == shadow:
            return p
    return {}
