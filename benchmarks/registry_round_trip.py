"""Registry round trip: an MLflow alias moves -> the gateway answers with the new version, no restart.

    .venv/bin/python benchmarks/registry_round_trip.py [--moves 8] [--settings 0.3:0.2,1:1,5:2]

A real ``mlflow server`` (sqlite, proxied artifacts in a temp dir) and a gateway following it.
Each move registers a new version of the 64-256-256-8 MLP (~340 KB of ONNX) and points
``champion`` at it; the clock runs from the alias write until an HTTP infer answers with that
version. Each setting is ``registry_poll_s:repository_poll_s``; the round trip is bounded by
one registry poll + the download + two repository scans (a new file is loaded once it is
stable across two scans) + the load itself. Prints a Markdown table and the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "examples"))

import machine  # noqa: E402
import make_models  # noqa: E402
import onnx  # noqa: E402
from daemons import Gateway  # noqa: E402  (the daemon subprocess the e2e tests use)
from mlflow_server import MlflowServer  # noqa: E402


def mlp_bytes(seed: int) -> bytes:
    model = onnx.helper.make_model(make_models.mlp_graph(seed), opset_imports=make_models.OPSET)
    model.ir_version = make_models.IR_VERSION
    return model.SerializeToString()


def answered_version(gw: Gateway, model: str) -> str | None:
    body = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}
    status, _, raw = gw.http("POST", f"/v2/models/{model}/infer", json.dumps(body).encode(),
                             {"Content-Type": "application/json"})
    return json.loads(raw)["model_version"] if status == 200 else None


def measure(server: MlflowServer, registry_poll_s: float, repository_poll_s: float, moves: int, seed0: int) -> list[float]:
    name = f"bench-{registry_poll_s}-{repository_poll_s}".replace(".", "_")
    v = server.register_version(name, {"model.onnx": mlp_bytes(seed0)})
    server.set_alias(name, "champion", v)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        repo.mkdir()
        gw = Gateway(repo, "--registry-url", server.url, "--registry-models", f"m={name}",
                     "--registry-poll-s", str(registry_poll_s), "--repository-poll-s", str(repository_poll_s),
                     "--registry-report-s", "0")
        try:
            deadline = time.monotonic() + 120
            while answered_version(gw, "m") != str(v):
                assert time.monotonic() < deadline, "first version never served"
                time.sleep(0.02)
            out = []
            for i in range(moves):
                v = server.register_version(name, {"model.onnx": mlp_bytes(seed0 + 1 + i)})
                start = time.monotonic()
                server.set_alias(name, "champion", v)
                while answered_version(gw, "m") != str(v):
                    assert time.monotonic() - start < 120, f"version {v} never served"
                    time.sleep(0.01)
                out.append(time.monotonic() - start)
            assert gw.proc.poll() is None
            return out
        finally:
            gw.terminate()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moves", type=int, default=8)
    ap.add_argument("--settings", default="0.3:0.2,1:1,5:2", help="registry_poll_s:repository_poll_s,...")
    args = ap.parse_args()
    info = machine.describe()
    with tempfile.TemporaryDirectory() as tmp:
        server = MlflowServer(Path(tmp))
        t0 = time.monotonic()
        server.start()
        started_s = time.monotonic() - t0
        try:
            rows = []
            for i, pair in enumerate(args.settings.split(",")):
                reg_s, repo_s = (float(x) for x in pair.split(":"))
                times = measure(server, reg_s, repo_s, args.moves, seed0=100 * i)
                rows.append((reg_s, repo_s, times))
        finally:
            server.stop()
    print(f"machine: {machine.summary_line(info)}")
    print(f"mlflow server ready after {started_s:.1f} s; {args.moves} alias moves per setting, each to a newly "
          "registered version (download included)\n")
    print("| registry_poll_s | repository_poll_s | median s | p90 s | min s | max s | poll + 2 scans s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for reg_s, repo_s, times in rows:
        ordered = sorted(times)
        p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
        print(f"| {reg_s:g} | {repo_s:g} | {statistics.median(times):.2f} | {p90:.2f} | {ordered[0]:.2f} | "
              f"{ordered[-1]:.2f} | {reg_s + 2 * repo_s:.1f} |")


if __name__ == "__main__":
    main()
