"""locust: KServe v2 REST inference (JSON or the binary tensor extension).

    locust -f loadtests/v2_http.py --host http://127.0.0.1:8000 --headless -u 32 -r 8 -t 60s \
        --csv reports/v2_http --html reports/v2_http.html [--model mlp] [--rows 1] [--binary]

The model's first input gets random data of shape [rows, *dims] from the model's metadata,
so any FP32/INT model of the repository works; latency percentiles and failures land in
locust's CSV/HTML report.
"""

from __future__ import annotations

import json

import numpy as np
from common import random_input, refresh_gevent_clock
from locust import FastHttpUser, events, task


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--model", default="mlp", help="model to infer")
    parser.add_argument("--rows", type=int, default=1, help="batch rows per request")
    parser.add_argument("--binary", action="store_true", help="use the binary tensor extension instead of JSON")


class V2HttpUser(FastHttpUser):
    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.model = opts.model
        with self.client.get(f"/v2/models/{self.model}", name="metadata", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"metadata: {resp.status_code} {resp.text}")
                raise RuntimeError(f"model '{self.model}' is not served: {resp.text}")
            md = resp.json()
        rng = np.random.default_rng(0)
        inputs, blobs = [], []
        for spec in md["inputs"]:
            arr = random_input(spec["name"], spec["datatype"], spec["shape"], opts.rows, rng)
            dims = list(arr.shape)
            if opts.binary:
                blobs.append(arr.tobytes())
                inputs.append({"name": spec["name"], "datatype": spec["datatype"], "shape": dims,
                               "parameters": {"binary_data_size": len(blobs[-1])}})
            else:
                inputs.append({"name": spec["name"], "datatype": spec["datatype"], "shape": dims, "data": arr.ravel().tolist()})
        header = json.dumps({"inputs": inputs}).encode()
        if opts.binary:
            self.body = header + b"".join(blobs)
            self.headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
        else:
            self.body, self.headers = header, {"Content-Type": "application/json"}

    @task
    def infer(self) -> None:
        with self.client.post(f"/v2/models/{self.model}/infer", data=self.body, headers=self.headers,
                              name=f"infer {self.model}", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")


refresh_gevent_clock()
