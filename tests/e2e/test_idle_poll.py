"""--idle-poll-us: a daemon that polls after traffic serves gRPC and HTTP as usual, and goes quiet
once the traffic stops (its CPU use follows the load again)."""

from __future__ import annotations

import os
import re
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

import make_models

QUIET_S = 1.0


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_idle_polling_serves_both_protocols_and_stops_after_the_traffic(tmp_path, start_gateway):
    root = tmp_path / "models"
    make_models.write_repository(str(root))
    # A process: its CPU time is what is measured. Repository polling off: it would use CPU too.
    gw = start_gateway(root, "--idle-poll-us", "500", "--repository-poll-s", "0", process=True)
    assert re.search(r"idle polling: 500 us after traffic \(HTTP and gRPC\)", gw.log())
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)

    g = grpcclient.InferenceServerClient(gw.grpc_url)
    h = httpclient.InferenceServerClient(gw.http_url)
    try:
        outputs = []
        for client, module in ((g, grpcclient), (h, httpclient)):
            for _ in range(50):
                inp = module.InferInput("INPUT", [1, 64], "FP32")
                inp.set_data_from_numpy(x)
                outputs.append(client.infer("mlp", [inp]).as_numpy("OUTPUT"))
    finally:
        g.close()
        h.close()
    assert all(o.shape == (1, 8) for o in outputs)
    assert all(np.array_equal(o, outputs[0]) for o in outputs)

    # A poller that never stopped would use about a core here.
    before = _cpu_seconds(gw.proc.pid)
    start = time.monotonic()
    time.sleep(QUIET_S)  # a measurement interval, not a synchronisation
    used = _cpu_seconds(gw.proc.pid) - before
    elapsed = time.monotonic() - start
    assert used < 0.25 * elapsed, f"{used:.2f} s of CPU in {elapsed:.2f} s with no traffic"
