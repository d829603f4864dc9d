"""What routing and shadowing cost in throughput, and what shadow comparison shows on real disagreements.

    .venv/bin/python benchmarks/routing_bench.py [--seconds 5] [--rounds 3] [--concurrency 1,32] [--compare-requests 2000]

One gateway serves the same MLP under five names, measured one after the other in
the same run with h2load replaying a batch-1 gRPC ModelInfer (see grpc_unary.py):

- plain:      version 1, no routing section (the baseline)
- routed:     routing with one weighted version: the router's own cost per request
- canary:     50/50 split of versions 1 and 2 (keyless: random by weight)
- shadow_50:  version 1 live, half of the requests copied to version 2
- shadow_100: version 1 live, every request copied to version 2

Then real disagreements: distinct random inputs over HTTP to models whose shadow is
(a) the MLP with other random weights (seed 1) and (b) the same MLP with its weights
perturbed by 2 % noise (a "retrained" model), and the comparison statistics the
gateway reports at GET /v2/models/{m}/routing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import struct
import sys
import tempfile
import time
import urllib.request

import numpy as np
import onnx
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import grpc_unary  # noqa: E402  (machine, cpu_seconds, start_gateway, h2load; puts examples/ on the path)
import make_models  # noqa: E402
from gateway._proto import grpc_service_pb2 as pb  # noqa: E402

MLP = "max_batch_size: 32\ndynamic_batching:\n  max_queue_delay_us: 0\n  max_queue_size: 4096\n"
ALL = "version_policy: {all: true}\n"
MODELS = {
    "plain": MLP,
    "routed": MLP + ALL + "routing:\n  weights: {1: 1}\n",
    "canary": MLP + ALL + "routing:\n  weights: {1: 50, 2: 50}\n",
    "shadow_50": MLP + ALL + "routing:\n  weights: {1: 1}\n  shadows: [{version: 2, fraction: 0.5}]\n"
                 "  shadow_queue_size: 1024\n",
    "shadow_100": MLP + ALL + "routing:\n  weights: {1: 1}\n  shadows: [{version: 2}]\n  shadow_queue_size: 1024\n",
    "disagree_seed": MLP + ALL + "routing:\n  weights: {1: 1}\n  shadows: [{version: 2}]\n",
    "disagree_noise": MLP + ALL + "routing:\n  weights: {1: 1}\n  shadows: [{version: 2}]\n",
}


def perturbed_mlp(seed: int, noise: float) -> onnx.GraphProto:
    graph = make_models.mlp_graph(seed)
    rng = np.random.default_rng(1234)
    for i, init in enumerate(graph.initializer):
        w = numpy_helper.to_array(init)
        w = (w * (1 + noise * rng.standard_normal(w.shape))).astype(np.float32)
        graph.initializer[i].CopyFrom(numpy_helper.from_array(w, init.name))
    return graph


def write_repo(root: str) -> None:
    for name, cfg in MODELS.items():
        second = perturbed_mlp(0, 0.02) if name == "disagree_noise" else make_models.mlp_graph(1)
        make_models._save(make_models.mlp_graph(0), os.path.join(root, name, "1", "model.onnx"))
        if name != "plain":
            make_models._save(second, os.path.join(root, name, "2", "model.onnx"))
        with open(os.path.join(root, name, "model.yaml"), "w") as fh:
            fh.write(cfg)


def grpc_body(path: str, model: str) -> None:
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="INPUT", datatype="FP32", shape=[1, 64])
    req.raw_input_contents.append(x.tobytes())
    payload = req.SerializeToString()
    with open(path, "wb") as fh:
        fh.write(b"\0" + struct.pack(">I", len(payload)) + payload)


def get_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return json.load(r)


def post_infer(port: int, model: str, x: np.ndarray) -> None:
    body = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 64], "data": x.ravel().tolist()}]}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/{model}/infer", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()


def router_cost_us(weights: dict[int, float], key: str | None, n: int = 200_000) -> float:
    """The router's own time per request, in this process: key, plan, outcome."""
    import random

    from gateway.core.routing_config import RoutingConfig
    from gateway.routing.router import Router

    r = Router("mlp", RoutingConfig.model_validate({"weights": weights}), random.Random(0))
    served = {str(v): None for v in weights}
    t0 = time.perf_counter()
    for _ in range(n):
        plan = r.plan(r.key_of(key or "", {}), served, "1")
        r.record_result(plan.version, True, 1000, 0)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compare-requests", type=int, default=2000)
    args = ap.parse_args()
    if shutil.which("h2load") is None:
        print("h2load not found: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    throughput = ["plain", "routed", "canary", "shadow_50", "shadow_100"]
    rows, shadow_rows, comparisons = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        repo = os.path.join(tmp, "models")
        write_repo(repo)
        proc, grpc_port, http_port = grpc_unary.start_gateway(repo)
        try:
            for model in throughput:
                grpc_body(os.path.join(tmp, f"{model}.bin"), model)
            for c in [int(v) for v in args.concurrency.split(",")]:
                runs: dict[str, list] = {m: [] for m in throughput}
                for _ in range(args.rounds):  # interleaved: a burst of load elsewhere hits every model alike
                    for model in throughput:
                        cpu0 = grpc_unary.cpu_seconds(proc.pid)
                        rate, done, gen_cpu = grpc_unary.h2load(grpc_port, os.path.join(tmp, f"{model}.bin"),
                                                                c, args.seconds)
                        runs[model].append((rate, (grpc_unary.cpu_seconds(proc.pid) - cpu0) / max(done, 1), gen_cpu))
                for model in throughput:
                    rates = sorted(r[0] for r in runs[model])
                    median = statistics.median(rates)
                    cpu_ms = statistics.median(r[1] for r in runs[model]) * 1000
                    rows.append((c, model, median, rates, cpu_ms, sum(r[2] for r in runs[model])))
            for model in throughput[3:]:
                for p in get_json(http_port, f"/v2/models/{model}/routing")["shadows"]:
                    shadow_rows.append((model, p))
            rng = np.random.default_rng(42)
            inputs = rng.standard_normal((args.compare_requests, 1, 64)).astype(np.float32)
            for model in ("disagree_seed", "disagree_noise"):
                for x in inputs:
                    post_infer(http_port, model, x)
                want = args.compare_requests
                for _ in range(600):  # shadows finish after the live answers: wait, bounded
                    st = get_json(http_port, f"/v2/models/{model}/routing")
                    p = st["shadows"][0]
                    if p["compared"] + p["failed"] + p["dropped"] >= want:
                        break
                    time.sleep(0.05)
                comparisons[model] = st
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)

    print(f"machine: {grpc_unary.machine()}")
    print("router's own cost per request (in process, Router.plan + record_result): "
          f"one version {router_cost_us({1: 1}, None):.2f} us, "
          f"50/50 keyless {router_cost_us({1: 50, 2: 50}, None):.2f} us, "
          f"50/50 sticky {router_cost_us({1: 50, 2: 50}, 'user-42'):.2f} us")
    print(f"model: mlp [-1,64] -> [-1,8], max_batch_size 32, max_queue_delay_us 0, 1 instance per version; "
          f"h2load gRPC batch 1, {args.seconds:g} s per point, one gateway process\n")
    print(f"{args.rounds} interleaved rounds per point; median infer/s (all rounds), median server CPU per infer\n")
    print("| concurrency | model | infer/s median | rounds | / plain | server CPU ms per infer | / plain | h2load CPU s |")
    print("|---:|---|---:|---|---:|---:|---:|---:|")
    base = {c: (rate, cpu_ms) for c, m, rate, _, cpu_ms, _ in rows if m == "plain"}
    for c, model, rate, rates, cpu_ms, gen_cpu in rows:
        print(f"| {c} | {model} | {rate:,.0f} | {' / '.join(f'{r:,.0f}' for r in rates)} | {rate / base[c][0]:.3f} "
              f"| {cpu_ms:.3f} | {cpu_ms / base[c][1]:.3f} | {gen_cpu:.2f} |")
    print("\nshadow copies during the throughput runs (all concurrencies):")
    for model, p in shadow_rows:
        print(f"  {model}: sent {p['sent']:,}, compared {p['compared']:,}, dropped {p['dropped']:,}, failed {p['failed']:,}")
    print(f"\nreal disagreements, {args.compare_requests} distinct random inputs (N(0,1)^64), live version 1 vs shadow version 2:")
    names = {"disagree_seed": "other random weights (seed 1)", "disagree_noise": "same weights x (1 + 2 % noise)"}
    for model, st in comparisons.items():
        p = st["shadows"][0]
        print(f"- {names[model]}: compared {p['compared']:,}, argmax agreement {p['agreement_argmax']:.3f}, "
              f"exact agreement {p['agreement_exact']:.3f}, mean |diff| {p['mean_abs_diff']:.4f}")
        for key, d in st["predictions"].items():
            print(f"    predictions {key}: " + " ".join(f"{s:.3f}" for s in d["share"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
