"""onnxruntime's abort against the real slow model (a Loop whose trip count is an input): an abort
that arrives before its run starts still stops it, and never reaches the run after."""

from __future__ import annotations

import time

import numpy as np
import pytest
from reliability_helpers import write_slow_model

from gateway.executors.onnxruntime import OnnxRuntimeExecutor

LONG = 20_000_000  # about a minute of loop iterations if nothing stops it


def feeds(iters: int) -> dict[str, np.ndarray]:
    return {"X": np.ones((1, 1), np.float32), "ITERS": np.full((1, 1), iters, np.int64)}


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    root = tmp_path_factory.mktemp("abort")
    write_slow_model(root, "max_batch_size: 1\n")
    executor = OnnxRuntimeExecutor(str(root / "slow" / "1" / "model.onnx"), providers=("cpu",), intra_op_threads=1)
    yield executor
    executor.close()


def test_an_abort_before_the_run_starts_stops_that_run_and_not_the_next(slow):
    assert slow.data_dependent_cost  # a Loop: never run on the event loop
    slow.abort()
    started = time.monotonic()
    with pytest.raises(Exception, match="(?i)terminat"):
        slow.run(feeds(LONG), ["Y"])
    assert time.monotonic() - started < 5
    slow.rearm()
    assert slow.run(feeds(3), ["Y"])[0].shape == (1, 1)


def test_a_model_without_control_flow_may_run_inline(tmp_path):
    import make_models  # tests/make_models.py

    make_models.write_repository(str(tmp_path), ["simple"])
    path = next(tmp_path.glob("simple/*/model.onnx"))
    executor = OnnxRuntimeExecutor(str(path), providers=("cpu",), intra_op_threads=1)
    assert executor.data_dependent_cost is False
