"""Rank, sign and element limits of a requested shape: one rule (core.tensors.element_count), the
same answer from the HTTP decoder, the gRPC decoder's raw path and the per-request limits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gateway.api.http_codec import decode_infer_request
from gateway.api.limits import RequestLimits, check_request
from gateway.core.errors import InvalidInputError, PayloadTooLargeError
from gateway.core.tensors import MAX_ELEMENTS, MAX_RANK, element_count, from_raw
from gateway.core.types import InferRequest

TOO_MANY = "input 'x': shape [2, 64] has 128 elements, more than the limit of 100 (max_tensor_elements)"


def _http(shape, limit=100):
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": []}]}).encode()
    return decode_infer_request(body, content_type="application/json", header_length=None, model="m", version="",
                                max_tensor_elements=limit)


def test_over_the_setting_is_the_same_413_from_the_decoder_and_the_request_limits():
    with pytest.raises(PayloadTooLargeError) as http:
        _http([2, 64])
    req = InferRequest("m", "", {"x": np.zeros((2, 64), np.float32)}, {"x": "FP32"})
    with pytest.raises(PayloadTooLargeError) as limits:
        check_request(req, RequestLimits(max_tensor_elements=100))
    assert str(http.value) == str(limits.value) == TOO_MANY
    check_request(req, RequestLimits(max_tensor_elements=128))  # at the limit is allowed


def test_an_empty_tensor_counts_its_non_zero_dims():
    # numpy cannot make (0, 2**40) even though it holds nothing: the size rule ignores zeros, not the dims.
    assert element_count((0, 50), "input 'x'", 100) == 0
    with pytest.raises(PayloadTooLargeError, match="has 0 elements, more than the limit of 100"):
        element_count((0, 200), "input 'x'", 100)
    with pytest.raises(InvalidInputError, match=f"more than the limit of {MAX_ELEMENTS}$"):
        from_raw(b"", "FP32", (0, 1 << 40), "input 'x'")


def test_rank_and_sign_have_one_message_whatever_the_protocol():
    deep = [1] * (MAX_RANK + 1)
    with pytest.raises(InvalidInputError) as http:
        _http(deep)
    with pytest.raises(InvalidInputError) as raw:
        from_raw(b"", "FP32", tuple(deep), "input 'x'")
    assert str(http.value) == str(raw.value) == f"input 'x': shape has {MAX_RANK + 1} dimensions, more than the limit of {MAX_RANK}"
    with pytest.raises(InvalidInputError) as http:
        _http([-1, 2])
    with pytest.raises(InvalidInputError) as raw:
        from_raw(b"", "FP32", (-1, 2), "input 'x'")
    assert str(http.value) == str(raw.value) == "input 'x': shape [-1, 2] has a negative dimension"
