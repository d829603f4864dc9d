"""The one v2 parameter policy, the shared-memory registry and top-k classification, in process."""

from __future__ import annotations

import mmap
import os
import uuid

import numpy as np
import pytest

from gateway.api.classification import top_k
from gateway.api.shared_memory import SharedMemoryRegistry, ShmRef
from gateway.api.v2_request_policy import (
    OutputContext,
    OutputPlan,
    apply_output_plans,
    check_request_parameters,
    input_shm_ref,
    output_plan,
    output_plans,
)
from gateway.core.errors import (
    AlreadyExistsError,
    InvalidInputError,
    PermissionDeniedError,
    SharedMemoryNotFoundError,
    TooManyRequestsError,
)
from gateway.core.types import InferResponse, RequestedOutput


# --- parameters -----------------------------------------------------------------------------


@pytest.mark.parametrize("params, message", [
    ({"priority": -1}, "'priority' must be a non-negative integer"),
    ({"priority": True}, "'priority' must be a non-negative integer"),
    ({"timeout": 1.5}, "'timeout' must be a non-negative integer"),
    ({"timeout": "10"}, "'timeout' must be a non-negative integer"),
])
def test_request_parameters_rejected(params, message):
    with pytest.raises(InvalidInputError, match=message):
        check_request_parameters(params)


def test_request_parameters_kept():
    check_request_parameters({"priority": 2, "timeout": 0, "custom": "x", "binary_data_output": True})


@pytest.mark.parametrize("params, message", [
    ({"shared_memory_region": "r"}, "'shared_memory_byte_size' is required"),
    ({"shared_memory_byte_size": 8}, "'shared_memory_region' is required"),
    ({"shared_memory_offset": 8}, "'shared_memory_region' is required"),
    ({"shared_memory_region": "", "shared_memory_byte_size": 8}, "'shared_memory_region' must be a non-empty string"),
    ({"shared_memory_region": 3, "shared_memory_byte_size": 8}, "'shared_memory_region' must be a non-empty string"),
    ({"shared_memory_region": "r", "shared_memory_byte_size": -1}, "'shared_memory_byte_size' must be a non-negative"),
    ({"shared_memory_region": "r", "shared_memory_byte_size": 8, "shared_memory_offset": 1.0}, "'shared_memory_offset'"),
])
def test_shm_parameters_rejected(params, message):
    with pytest.raises(InvalidInputError, match=message) as err:
        input_shm_ref("x", params)
    assert err.value.message.startswith("input 'x': ")
    with pytest.raises(InvalidInputError, match=message) as err:
        output_plan("y", params)
    assert err.value.message.startswith("output 'y': ")


def test_shm_parameters_accepted():
    assert input_shm_ref("x", {}) is None
    assert input_shm_ref("x", {"binary_data_size": 3}) is None
    assert input_shm_ref("x", {"shared_memory_region": "r", "shared_memory_byte_size": 8}) == ShmRef("r", 8, 0)
    ref = input_shm_ref("x", {"shared_memory_region": "r", "shared_memory_byte_size": 8, "shared_memory_offset": 4})
    assert ref == ShmRef("r", 8, 4)


@pytest.mark.parametrize("value", [0, -2, 1.5, "3", True])
def test_classification_must_be_a_positive_integer(value):
    with pytest.raises(InvalidInputError, match="output 'y': parameter 'classification' must be an integer >= 1"):
        output_plan("y", {"classification": value})


def test_output_plans_only_for_outputs_that_need_one():
    outs = [RequestedOutput("a", {"binary_data": True}), RequestedOutput("b", {"classification": 2}),
            RequestedOutput("c", {"shared_memory_region": "r", "shared_memory_byte_size": 8})]
    assert output_plans(outs) == {"b": OutputPlan("b", 2), "c": OutputPlan("c", 0, ShmRef("r", 8))}
    assert output_plans(None) == {}


# --- classification -----------------------------------------------------------------------------


def test_top_k_matches_argsort_and_formats_like_triton():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((3, 10)).astype(np.float32)
    got = top_k(scores, "FP32", 4, True, ("l0", "l1", "l2"), "output 'o'")
    assert got.shape == (3, 4)
    for row, want in zip(got, np.argsort(-scores, axis=1)[:, :4]):
        indices = [int(s.split(b":")[1]) for s in row]
        assert indices == want.tolist()
    first = got[0, 0].decode().split(":")
    assert first[0] == "%f" % scores[0].max()
    if int(first[1]) < 3:
        assert first[2] == f"l{first[1]}"


def test_top_k_ties_keep_index_order_and_ints_print_plainly():
    got = top_k(np.array([[5, 5, 3, 9]], np.int32), "INT32", 3, True, (), "o")
    assert got.tolist() == [[b"9:3", b"5:0", b"5:1"]]
    unsigned = top_k(np.array([[0, 255, 1]], np.uint8), "UINT8", 9, True, (), "o")
    assert unsigned.tolist() == [[b"255:1", b"1:2", b"0:0"]]  # k above the class count: all of them


def test_top_k_without_batching_and_with_extra_dims():
    assert top_k(np.array([0.1, 0.7, 0.2]), "FP64", 2, False, ("a", "b", "c"), "o").tolist() == [
        b"0.700000:1:b", b"0.200000:2:c"]
    got = top_k(np.arange(12, dtype=np.float32).reshape(2, 2, 3), "FP32", 1, True, (), "o")
    assert got.tolist() == [[b"5.000000:5"], [b"11.000000:5"]]


@pytest.mark.parametrize("datatype", ["BYTES", "BOOL"])
def test_top_k_needs_numbers(datatype):
    with pytest.raises(InvalidInputError, match=f"output 'o': classification needs a numeric output, not {datatype}"):
        top_k(np.array([[True]]), datatype, 1, True, (), "output 'o'")


def test_apply_leaves_the_cached_response_untouched():
    scores = np.array([[0.1, 0.9]], np.float32)
    cached = InferResponse("m", "1", {"o": scores, "p": scores}, {"o": "FP32", "p": "FP32"})
    shaped, placed = apply_output_plans(
        cached, {"o": OutputPlan("o", 1)}, lambda m, v: OutputContext(True, {"o": ("cat", "dog")}))
    assert shaped.outputs["o"].tolist() == [[b"0.900000:1:dog"]] and shaped.datatypes["o"] == "BYTES"
    assert shaped.outputs["p"] is scores and placed == frozenset()
    assert cached.outputs["o"] is scores and cached.datatypes["o"] == "FP32"


# --- registry -------------------------------------------------------------------------------------


@pytest.fixture
def shm_object():
    made = []

    def make(size: int, data: bytes = b""):
        key = f"/gw_unit_{uuid.uuid4().hex[:12]}"
        path = "/dev/shm/" + key[1:]
        with open(path, "wb") as fh:
            fh.truncate(size)
            fh.write(data)
        made.append(path)
        return key, path

    yield make
    for path in made:
        if os.path.exists(path):
            os.unlink(path)


def test_registry_round_trip_and_zero_copy(shm_object):
    data = np.arange(8, dtype=np.float32)
    key, path = shm_object(4096 + 64, b"\0" * 4096 + data.tobytes())
    reg = SharedMemoryRegistry(allowed=True)
    reg.register("r", key, 4096, 64)  # an offset that is not page aligned is mapped from the page below
    array = reg.read(ShmRef("r", 32), "FP32", (8,), "input 'x'")
    np.testing.assert_array_equal(array, data)
    assert not array.flags.writeable and not array.flags.owndata
    with open(path, "r+b") as fh:  # the client writes again: the view sees it (no copy was made)
        fh.seek(4096)
        fh.write(np.float32(42).tobytes())
    assert array[0] == 42
    written = reg.output_window(ShmRef("r", 32, 32), "output 'y'").write(np.array([7, 8], np.int64), "output 'y'")
    assert written == 16
    with open(path, "rb") as fh:
        fh.seek(4096 + 32)
        assert np.frombuffer(fh.read(16), np.int64).tolist() == [7, 8]
    reg.close()


def test_unregister_under_a_request_in_flight_keeps_its_view_valid(shm_object):
    data = np.arange(16, dtype=np.int32)
    key, _ = shm_object(64, data.tobytes())
    reg = SharedMemoryRegistry(allowed=True)
    reg.register("r", key, 0, 64)
    in_flight = reg.read(ShmRef("r", 64), "INT32", (16,), "input 'x'")
    reg.unregister("r")  # the mapping cannot close while viewed: it stays until the view is freed
    assert in_flight.sum() == data.sum()
    with pytest.raises(SharedMemoryNotFoundError, match="Unable to find shared memory region: 'r'"):
        reg.read(ShmRef("r", 64), "INT32", (16,), "input 'x'")
    reg.register("r", key, 0, 64)  # the name is free again
    reg.close()


def test_unregister_under_an_output_in_flight_still_delivers_it(shm_object):
    key, path = shm_object(64)
    reg = SharedMemoryRegistry(allowed=True)
    reg.register("out", key, 0, 64)
    (plan,) = output_plans([RequestedOutput("y", {"shared_memory_region": "out", "shared_memory_byte_size": 64})],
                           reg).values()
    reg.unregister("out")  # the request holds its window: the region is set aside, still mapped
    assert reg.status() == [] and len(reg._retired) == 1
    response = InferResponse("m", "1", {"y": np.arange(16, dtype=np.int32)}, {"y": "INT32"})
    _, placed = apply_output_plans(response, {"y": plan}, lambda m, v: OutputContext(True, {}))
    assert placed == frozenset({"y"})
    with open(path, "rb") as fh:
        assert np.frombuffer(fh.read(), np.int32).tolist() == list(range(16))
    del plan
    reg.unregister()  # any later call closes what is no longer viewed
    assert reg._retired == []


def test_registry_errors(shm_object):
    key, path = shm_object(64)
    reg = SharedMemoryRegistry(allowed=True, max_regions=2)
    reg.register("a", key, 0, 64)
    with pytest.raises(AlreadyExistsError, match="'a' already in manager"):
        reg.register("a", key, 0, 64)
    reg.register("b", key, 0, 8)
    with pytest.raises(TooManyRequestsError, match="2 regions are registered"):
        reg.register("c", key, 0, 8)
    with pytest.raises(SharedMemoryNotFoundError, match="Unable to find system shared memory region: 'zz'"):
        reg.status("zz")
    assert [r["name"] for r in reg.status()] == ["a", "b"]
    os.truncate(path, 32)
    with pytest.raises(InvalidInputError, match="shrank to 32 bytes"):
        reg.read(ShmRef("a", 64), "INT32", (16,), "input 'x'")
    reg.unregister()
    assert reg.status() == []
    os.symlink(path, path + "_link")
    try:
        with pytest.raises(InvalidInputError, match="unable to open"):
            reg.register("l", key + "_link", 0, 8)  # O_NOFOLLOW: a link does not lead out of /dev/shm
    finally:
        os.unlink(path + "_link")


def test_registry_off_refuses_everything(shm_object):
    key, _ = shm_object(64)
    reg = SharedMemoryRegistry()
    with pytest.raises(PermissionDeniedError, match="allow_client_shm"):
        reg.register("a", key, 0, 64)
    with pytest.raises(PermissionDeniedError):
        reg.read(ShmRef("a", 64), "INT32", (16,), "input 'x'")
    assert reg.status() == []
    assert mmap.ALLOCATIONGRANULARITY > 0


# --- label files (model.yaml outputs[].label_filename) ----------------------------------------------


def _model_dir(tmp_path, outputs: str, labels: bytes | None = b"cat\ndog\n"):
    from gateway.core.model_config import CONFIG_FILENAME

    d = tmp_path / "m"
    d.mkdir()
    (d / CONFIG_FILENAME).write_text(outputs)
    if labels is not None:
        (d / "labels.txt").write_bytes(labels)
    return d


def test_labels_are_read_with_the_config(tmp_path):
    from gateway.core.model_config import load_model_config

    d = _model_dir(tmp_path, "outputs:\n  - {name: y, datatype: FP32, shape: [2], label_filename: labels.txt}\n",
                   b"cat\r\ndog\n")
    cfg = load_model_config(str(d))
    assert cfg.outputs[0].labels == ("cat", "dog")


@pytest.mark.parametrize("yaml_text, labels, field, reason", [
    ("outputs:\n  - {name: y, datatype: FP32, shape: [2], label_filename: missing.txt}\n", b"x", "outputs[0].label_filename",
     "cannot read 'missing.txt'"),
    ("outputs:\n  - {name: y, datatype: FP32, shape: [2], label_filename: ../labels.txt}\n", b"x", "outputs[0].label_filename",
     "must be a file name in the model's directory"),
    ("outputs:\n  - {name: y, datatype: FP32, shape: [2], label_filename: labels.txt}\n", b"", "outputs[0].label_filename",
     "'labels.txt' is empty"),
    ("outputs:\n  - {name: y, datatype: FP32, shape: [2], label_filename: labels.txt}\n", b"\xff\xfe", "outputs[0].label_filename",
     "not UTF-8"),
    ("inputs:\n  - {name: x, datatype: FP32, shape: [2], label_filename: labels.txt}\n", b"x", "inputs[0].label_filename",
     "labels belong to outputs"),
])
def test_bad_label_files_name_the_field(tmp_path, yaml_text, labels, field, reason):
    from gateway.core.errors import ConfigError
    from gateway.core.model_config import all_errors, load_model_config

    d = _model_dir(tmp_path, yaml_text, labels)
    with pytest.raises(ConfigError) as err:
        load_model_config(str(d))
    assert err.value.field == field and reason in err.value.reason
    assert [(e.field, reason in e.reason) for e in all_errors(str(d))] == [(field, True)]


# --- the HTTP codec reads inputs from regions (JSON and msgpack alike) ------------------------------


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_http_codec_reads_inputs_from_a_region(shm_object, encoding):
    import json

    import msgpack

    from gateway.api.http_codec import decode_infer_request

    data = np.arange(6, dtype=np.float32)
    key, _ = shm_object(64, b"\0" * 8 + data.tobytes())
    reg = SharedMemoryRegistry(allowed=True)
    reg.register("r", key, 0, 64)
    params = {"shared_memory_region": "r", "shared_memory_byte_size": 24, "shared_memory_offset": 8}
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "parameters": params}]}
    if encoding == "json":
        body, content_type = json.dumps(doc).encode(), "application/json"
    else:
        body, content_type = msgpack.packb(doc, use_bin_type=True), "application/msgpack"
    req, _ = decode_infer_request(body, content_type=content_type, header_length=None, model="m", version="",
                                  shared_memory=reg)
    np.testing.assert_array_equal(req.inputs["x"], data.reshape(2, 3))
    with pytest.raises(PermissionDeniedError):
        decode_infer_request(body, content_type=content_type, header_length=None, model="m", version="",
                             shared_memory=SharedMemoryRegistry())
    del req
    reg.close()
