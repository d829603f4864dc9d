"""execute_timeout_s with an executor that cannot abort (a native call that ignores every flag).

onnxruntime honours its terminate flag, so the daemon tests never see this case; a gated
executor plays the runtime that does not. The instance stays out until its thread returns;
with every instance out the version refuses work (not ready) instead of queueing it forever.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from gateway.core.errors import ExecuteTimeoutError, ModelNotReadyError
from gateway.core.stats import ModelStats
from gateway.core.types import InferRequest, TensorSpec
from gateway.scheduler.policy import BatchingPolicy
from gateway.scheduler.runner import ModelScheduler, SchedulerSpec

WAIT_S = 30


class UnabortableExecutor:
    inputs = (TensorSpec("x", "FP32", (-1, 1)),)
    outputs = (TensorSpec("y", "FP32", (-1, 1)),)

    def __init__(self) -> None:
        self.release = threading.Event()
        self.runs = 0

    def run(self, feeds, output_names):
        self.runs += 1
        if feeds["x"][0, 0] < 0:  # the poisoned input hangs until the test releases it
            assert self.release.wait(WAIT_S)
        return [feeds["x"] * 2]

    def close(self) -> None:
        pass


def _request(value: float) -> InferRequest:
    return InferRequest(model="m", version="", inputs={"x": np.full((1, 1), value, np.float32)}, datatypes={"x": "FP32"})


def test_all_instances_stuck_makes_the_version_unready_until_they_return():
    async def scenario():
        executor = UnabortableExecutor()
        spec = SchedulerSpec(name="m", version="1", batching=True, output_names=("y",), execute_timeout_s=0.2)
        sched = ModelScheduler(spec, BatchingPolicy(max_batch_size=1, max_queue_size=4), [executor], ModelStats())
        stuck = sched.submit(_request(-1.0), 1, (), 0)
        queued = sched.submit(_request(3.0), 1, (), 0)
        with pytest.raises(ExecuteTimeoutError):
            await asyncio.wait_for(stuck, WAIT_S)
        # The only instance is out: the queued request is failed, new ones refused at once.
        assert sched.wedged and sched.stuck_instances == 1
        with pytest.raises(ModelNotReadyError):
            await asyncio.wait_for(queued, WAIT_S)
        with pytest.raises(ModelNotReadyError, match="stuck past execute_timeout_s"):
            sched.submit(_request(4.0), 1, (), 0)
        executor.release.set()  # the native call finally returns
        async with asyncio.timeout(WAIT_S):
            while sched.wedged:
                await asyncio.sleep(0.01)
        out = await asyncio.wait_for(sched.submit(_request(5.0), 1, (), 0), WAIT_S)
        assert out["y"][0, 0] == 10.0
        assert sched.stats.execute_timeouts == 1
        await sched.drain(WAIT_S)

    asyncio.run(scenario())
