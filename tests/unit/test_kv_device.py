"""The device-resident KV cache (gateway/executors/kv_device.py, kv_ops.py): the same decoder
with its past kept as OrtValues on the session's device must give exactly what the numpy
(host) decoder gives, token for token, as sequences join and leave at different steps."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tiny_llm

from gateway.core.model_config import TensorRTConfig
from gateway.executors.decoder import HostKv, KvCacheDecoder
from gateway.executors.kv_device import DeviceKv, kv_on_device, make_decoder
from gateway.executors.kv_ops import KvRowOps
from gateway.executors.onnxruntime import OnnxRuntimeExecutor

# step -> (slot, prompt) joining after that step's decode; prompts of equal length join in one prefill.
JOINS = {
    0: [(1, [5, 6, 7, 8, 9]), (2, [11, 12, 13, 14, 15]), (3, [21, 22])],
    2: [(4, [31, 32, 33, 34, 35, 36, 37, 38])],
    4: [(5, [41]), (6, [42])],
    7: [(7, [51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62])],
}
# step -> slots leaving before that step's decode (the longest first, then from the middle, then several).
LEAVES = {3: [4], 5: [1, 5], 8: [2], 10: [3, 6], 12: [7]}
STEPS = 13


def _drive(decoder: KvCacheDecoder) -> dict[int, list[tuple[int, np.ndarray]]]:
    """Greedy tokens and the logits that chose them, per slot, under JOINS / LEAVES."""
    out: dict[int, list[tuple[int, np.ndarray]]] = {}
    last: dict[int, int] = {}

    def take(logits: dict[int, np.ndarray]) -> None:
        for slot, row in logits.items():
            last[slot] = int(np.argmax(row))
            out.setdefault(slot, []).append((last[slot], row.copy()))

    for step in range(STEPS):
        if step in LEAVES:
            decoder.release(LEAVES[step])
        if decoder.rows:
            take(decoder.decode({s: last[s] for s in decoder._slots}))  # noqa: SLF001 - every row
        by_length: dict[int, list[tuple[int, list[int]]]] = {}
        for slot, prompt in JOINS.get(step, []):
            by_length.setdefault(len(prompt), []).append((slot, prompt))
        for group in by_length.values():
            take(decoder.prefill([s for s, _ in group], np.array([p for _, p in group])))
    assert decoder.rows == 0
    return out


@pytest.fixture(scope="module")
def executor(tiny_llm_model):
    return OnnxRuntimeExecutor(str(tiny_llm_model / "1" / "model.onnx"))


def test_device_decoder_equals_the_host_decoder_token_for_token(executor, tiny_llm_model):
    host = make_decoder(executor, "host")
    device = make_decoder(executor, "device")
    assert isinstance(host.store, HostKv) and isinstance(device.store, DeviceKv)
    want, got = _drive(host), _drive(device)
    assert sorted(got) == sorted(want) == [1, 2, 3, 4, 5, 6, 7]
    for slot in want:
        assert [t for t, _ in got[slot]] == [t for t, _ in want[slot]]
        for (_, a), (_, b) in zip(got[slot], want[slot]):
            np.testing.assert_array_equal(a, b)  # same kernels, same zeros: bit for bit on CPU
    # And both are what each sequence gets alone, step by step at batch 1.
    prompts = {slot: prompt for group in JOINS.values() for slot, prompt in group}
    for slot, steps in got.items():
        tokens = [t for t, _ in steps]
        assert tokens == tiny_llm.reference_greedy(tiny_llm_model / "1", prompts[slot], len(tokens))


def test_the_device_cache_stays_ortvalues_across_joins_and_leaves(executor):
    decoder = make_decoder(executor, "device")
    decoder.prefill([1], np.array([[5, 6, 7, 8]]))
    decoder.prefill([2, 3], np.array([[9, 10], [11, 12]]))
    assert decoder.length == 4
    decoder.decode({1: 1, 2: 2, 3: 3})
    decoder.release([1])  # the longest leaves: its two leading columns are trimmed
    assert (decoder.rows, decoder.length) == (2, 3)
    lay = decoder.layout
    for value in decoder._past:  # noqa: SLF001 - the store's values
        assert isinstance(value, ort.OrtValue)
        assert value.device_name().lower() == "cpu"
        assert value.shape() == [2, lay.heads, 3, lay.head_dim]
    decoder.reset()
    assert (decoder.rows, decoder.length, decoder._past) == (0, 0, [])  # noqa: SLF001
    # Usable again after a reset.
    assert set(decoder.prefill([4], np.array([[1, 2, 3]]))) == {4}


@pytest.mark.parametrize(("old_by", "new_by"), [(0, 0), (3, 0), (0, 2)])
def test_row_ops_equal_numpy(old_by, new_by):
    rng = np.random.default_rng(old_by * 10 + new_by)
    ops = KvRowOps(4, np.dtype(np.float32), 2, 3, "cpu", 0)
    old = [rng.standard_normal((2, 2, 5, 3)).astype(np.float32) for _ in range(4)]
    new = [rng.standard_normal((3, 2, 5 + old_by - new_by, 3)).astype(np.float32) for _ in range(4)]
    host = HostKv.__new__(HostKv)  # join/keep use no executor
    pad = lambda a, by: np.pad(a, [(0, 0), (0, 0), (by, 0), (0, 0)])  # noqa: E731
    want = [np.concatenate([pad(o, old_by), pad(n, new_by)]) for o, n in zip(old, new)]
    joined = ops.join([ort.OrtValue.ortvalue_from_numpy(a) for a in old], old_by,
                      [ort.OrtValue.ortvalue_from_numpy(a) for a in new], new_by)
    for got, on_host, w in zip(joined, host.join(old, old_by, new, new_by), want):
        np.testing.assert_array_equal(got.numpy(), w)
        np.testing.assert_array_equal(on_host, w)
    kept = ops.keep(joined, [4, 0, 2], 2)
    for got, on_host, w in zip(kept, host.keep(want, [4, 0, 2], 2), want):
        np.testing.assert_array_equal(got.numpy(), w[[4, 0, 2]][:, :, 2:])
        np.testing.assert_array_equal(on_host, w[[4, 0, 2]][:, :, 2:])
        assert on_host.flags.c_contiguous
    # Every column trimmed: a zero-length past, as after a row with an empty mask leaves.
    assert ops.keep(joined, [1], joined[0].shape()[2])[0].shape() == [1, 2, 0, 3]


def test_where_the_cache_lives(executor):
    assert not kv_on_device(executor, "auto")  # CPU: the host path (README "Text generation")
    assert kv_on_device(executor, "device")
    assert not kv_on_device(executor, "host")

    class NotOnnxRuntime:  # e.g. the native TensorRT executor: no IO binding to keep it with
        inputs, outputs = executor.inputs, executor.outputs

        def run(self, feeds, output_names):
            return executor.run(feeds, output_names)

    other = NotOnnxRuntime()
    assert not kv_on_device(other, "device")
    assert isinstance(make_decoder(other, "auto").store, HostKv)


def _has_cuda() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers() and ort.get_device() == "GPU"


@pytest.mark.skipif(not _has_cuda(), reason="needs onnxruntime-gpu with the CUDA provider and a GPU (none on this host)")
def test_on_cuda_the_cache_stays_on_the_device_and_matches_the_cpu(executor, tiny_llm_model):
    from gateway.executors.onnxruntime_gpu import OnnxRuntimeGpuExecutor

    gpu = OnnxRuntimeGpuExecutor(str(tiny_llm_model / "1" / "model.onnx"), providers=("cuda",), intra_op_threads=1,
                                 device_id=0, trt=TensorRTConfig())
    decoder = make_decoder(gpu, "auto")
    assert isinstance(decoder.store, DeviceKv)
    decoder.prefill([1, 2], np.array([[5, 6, 7], [8, 9, 10]]))
    decoder.prefill([3], np.array([[11]]))
    assert all(v.device_name().lower() == "cuda" for v in decoder._past)  # noqa: SLF001
    decoder.reset()

    want, got = _drive(make_decoder(executor, "host")), _drive(decoder)
    for slot in want:
        assert [t for t, _ in got[slot]] == [t for t, _ in want[slot]]
        for (_, a), (_, b) in zip(got[slot], want[slot]):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)  # TF32/other kernels: close, not equal


def test_run_options_carry_the_entry_every_bound_run_reads():
    from gateway.executors.onnxruntime import new_run_options

    # Unset, onnxruntime's run_with_iobinding pays a C++ exception per call to learn it is unset.
    assert new_run_options().get_run_config_entry("gpu_graph_id") == "0"
