"""A well-behaved gRPC client for the attack tests, run as its own process (so an attacker in the test
process cannot slow it down through the GIL): ModelInfer on `simple` over one grpcio channel, in a paced
loop, one JSON line per call ([start on the system-wide monotonic clock, latency in s, status name])
until its stdin closes.

    python good_client.py 127.0.0.1:PORT
"""

from __future__ import annotations

import json
import sys
import threading
import time

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

PACE_S = 0.004  # a steady trickle of calls, not a load test: the daemon's loop is what is measured
CALL_TIMEOUT_S = 5.0


def _request(a: np.ndarray, b: np.ndarray):
    req = pb.ModelInferRequest(model_name="simple")
    for name, arr in (("INPUT0", a), ("INPUT1", b)):
        req.inputs.add(name=name, datatype="INT32", shape=list(arr.shape))
        req.raw_input_contents.append(arr.tobytes())
    return req


def _correct(resp, a: np.ndarray, b: np.ndarray) -> bool:
    outs = {o.name: np.frombuffer(raw, np.int32).reshape(tuple(o.shape))
            for o, raw in zip(resp.outputs, resp.raw_output_contents)}
    return bool(np.array_equal(outs.get("OUTPUT0"), a + b) and np.array_equal(outs.get("OUTPUT1"), a - b))


def main() -> None:
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    rng = np.random.default_rng(0)
    a = rng.integers(-1000, 1000, (1, 16), dtype=np.int32)
    b = rng.integers(-1000, 1000, (1, 16), dtype=np.int32)
    request = _request(a, b)
    with grpc.insecure_channel(sys.argv[1]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        grpc.channel_ready_future(channel).result(timeout=30)
        print(json.dumps({"ready": True}), flush=True)
        while not stop.is_set():
            started = time.monotonic()
            try:
                status = "OK" if _correct(stub.ModelInfer(request, timeout=CALL_TIMEOUT_S), a, b) else "WRONG_ANSWER"
            except grpc.RpcError as err:
                status = err.code().name
            print(json.dumps([started, time.monotonic() - started, status]), flush=True)
            stop.wait(PACE_S)


if __name__ == "__main__":
    main()
