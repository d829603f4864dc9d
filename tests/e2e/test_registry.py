"""The registry client against a real ``mlflow server``: aliases decide what the gateway serves.

One MLflow server for the module (it takes 10-30 s to start). The outage test
stops it and starts it again on the same port and store, so it runs last.
"""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import helper

from daemons import ROOT, Gateway
import mlflow_server
from mlflow_server import MlflowServer, free_port, mlflow_binary

import make_models

pytestmark = [
    pytest.mark.mlflow,
    pytest.mark.skipif(mlflow_binary() is None, reason="mlflow is not installed (scripts/setup.sh test installs it)"),
]

POLL = ["--registry-poll-s", "0.3", "--registry-backoff-max-s", "1", "--registry-timeout-s", "5"]
WAIT_S = 60


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory):
    server = mlflow_server.take_early()
    if server is None:
        server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
        server.start()
    yield server
    server.stop()


def mlp_onnx(seed: int) -> bytes:
    model = helper.make_model(make_models.mlp_graph(seed), opset_imports=make_models.OPSET)
    model.ir_version = make_models.IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def mlp_files(seed: int) -> dict[str, bytes]:
    reference = json.dumps({"note": f"reference profile of seed {seed}"}).encode()
    return {"model.onnx": mlp_onnx(seed), "reference.json": reference}


def infer(gw: Gateway, model: str, key: str = "", x: np.ndarray | None = None) -> tuple[str, np.ndarray]:
    if x is None:
        x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
    rows = x.shape[0]
    body = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [rows, 64], "data": x.ravel().tolist()}]}
    headers = {"Content-Type": "application/json"}
    if key:
        headers["x-route-key"] = key
    status, _, raw = gw.http("POST", f"/v2/models/{model}/infer", json.dumps(body).encode(), headers)
    assert status == 200, raw
    doc = json.loads(raw)
    return doc["model_version"], np.array(doc["outputs"][0]["data"])


def served_version(gw: Gateway, model: str) -> str | None:
    status, _, _ = gw.http("GET", f"/v2/models/{model}/ready")
    return infer(gw, model)[0] if status == 200 else None


def metric_value(gw: Gateway, name: str, labels: str = "") -> float:
    status, _, raw = gw.http("GET", "/metrics")
    assert status == 200
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", raw.decode(), re.M)
    return float(m.group(1)) if m else 0.0


def serving_run(mlflow: MlflowServer, name: str, version: int) -> str | None:
    return mlflow.version_tags(name, version).get("gateway.serving_run_id")


def reported_requests(mlflow: MlflowServer, name: str, version: int) -> float:
    run_id = serving_run(mlflow, name, version)
    if run_id is None:
        return 0.0
    return sum(m["value"] for m in mlflow.metric_history(run_id, "serving.requests"))


def test_aliases_drive_the_served_version(mlflow, tmp_path, start_gateway, record_property):
    name = "fraud-detector"
    v1 = mlflow.register_version(name, mlp_files(seed=0))
    mlflow.set_alias(name, "champion", v1)

    repo = tmp_path / "models"
    (repo / "fraud").mkdir(parents=True)
    (repo / "fraud" / "model.yaml").write_text(yaml.safe_dump({
        "max_batch_size": 8,
        "registry": {
            "model_name": name,
            "aliases": {"champion": {"role": "live"}, "challenger": {"role": "canary", "weight": 30}},
        },
    }))
    gw = start_gateway(repo, "--registry-url", mlflow.url, "--registry-report-s", "0.5", *POLL,
                       process=True)  # asserts the pid never changes

    # Champion v1 downloaded (atomically, with its reference profile) before the first load:
    # a fresh gateway starts on the registry's champion.
    assert re.search(r"ready: .*fraud:1", gw.log()), gw.log()
    assert served_version(gw, "fraud") == str(v1)
    assert (repo / "fraud" / str(v1) / "reference.json").exists()
    marker = json.loads((repo / "fraud" / str(v1) / ".registry.json").read_text())
    assert marker["registered_model"] == name and marker["version"] == v1
    written = yaml.safe_load((repo / "fraud" / "model.yaml").read_text())
    assert written["version_policy"] == {"specific": [v1]}
    assert written["max_batch_size"] == 8 and written["registry"]["model_name"] == name
    _, out_v1 = infer(gw, "fraud")
    pid = gw.proc.pid

    # Version 2, carrying its own model.yaml, registered and champion moved: served without a restart.
    v2_config = {"max_batch_size": 4, "dynamic_batching": {"max_queue_delay_us": 100}}
    v2 = mlflow.register_version(name, {**mlp_files(seed=1), "model.yaml": yaml.safe_dump(v2_config).encode()})
    moved = time.monotonic()
    mlflow.set_alias(name, "champion", v2)
    gw.wait_until(lambda: infer(gw, "fraud")[0] == str(v2), timeout=WAIT_S, what="champion move to version 2")
    round_trip_s = time.monotonic() - moved
    record_property("registry_round_trip_s", round(round_trip_s, 3))
    print(f"\nregistry round trip (alias moved -> new version answers): {round_trip_s:.2f} s")
    assert gw.proc.poll() is None and gw.proc.pid == pid
    assert gw.log().count("listening grpc=") == 1  # the same process, never restarted
    _, out_v2 = infer(gw, "fraud")
    assert not np.allclose(out_v1, out_v2), "version 2 has other weights: its answers differ"
    gw.wait_until(lambda: gw.http("GET", f"/v2/models/fraud/versions/{v1}/ready")[0] != 200,
                  timeout=WAIT_S, what="version 1 retired")
    # The champion's model.yaml is the model's config now; the local registry section stays.
    written = yaml.safe_load((repo / "fraud" / "model.yaml").read_text())
    assert written["max_batch_size"] == 4 and written["dynamic_batching"] == v2_config["dynamic_batching"]
    assert written["registry"]["model_name"] == name
    assert gw.http_json("GET", "/v2/models/fraud/config")[1]["max_batch_size"] == 4

    # Challenger: a canary with the configured 30 % share of sticky keys.
    v3 = mlflow.register_version(name, mlp_files(seed=2))
    mlflow.set_alias(name, "challenger", v3)

    def canary_in_force():
        status, doc = gw.http_json("GET", "/v2/models/fraud/routing")
        return status == 200 and doc["config"]["weights"] == {str(v2): 70.0, str(v3): 30.0} and \
            gw.http("GET", f"/v2/models/fraud/versions/{v3}/ready")[0] == 200

    gw.wait_until(canary_in_force, timeout=WAIT_S, what="challenger as a 30 % canary")
    counts = Counter(infer(gw, "fraud", key=f"user-{i}")[0] for i in range(400))
    share = counts[str(v3)] / 400
    assert set(counts) == {str(v2), str(v3)}
    assert 0.22 <= share <= 0.38, counts  # 30 % +- 8 points; sticky hashing of 400 keys

    # Serving metrics of each version reach MLflow as metrics of a run tied to the version.
    gw.wait_until(lambda: reported_requests(mlflow, name, v3) >= counts[str(v3)],
                  timeout=WAIT_S, what="v3 requests reported to MLflow")
    run_id = serving_run(mlflow, name, v3)
    keys = mlflow.metric_keys(run_id)
    assert {"serving.requests", "serving.error_rate", "serving.requests_per_s", "serving.mean_request_ms"} <= keys
    run = mlflow.api("GET", "runs/get", params={"run_id": run_id})["run"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["gateway.registered_model"] == name and tags["gateway.model_version"] == str(v3)
    assert metric_value(gw, "gateway_registry_reports_total") > 0
    assert metric_value(gw, "gateway_registry_alias_version", '{alias="challenger",model="fraud"}') == v3

    # Promotion: champion -> v3 (challenger still names it): v3 alone serves, v2 is retired.
    mlflow.set_alias(name, "champion", v3)
    gw.wait_until(lambda: gw.http("GET", f"/v2/models/fraud/versions/{v2}/ready")[0] != 200,
                  timeout=WAIT_S, what="version 2 retired after the promotion")
    assert {infer(gw, "fraud", key=f"user-{i}")[0] for i in range(50)} == {str(v3)}
    assert yaml.safe_load((repo / "fraud" / "model.yaml").read_text())["version_policy"] == {"specific": [v3]}


def champion_and_empty_repo(mlflow: MlflowServer, name: str, seed: int, tmp_path: Path,
                            files: dict[str, bytes] | None = None) -> tuple[int, Path]:
    """Version 1 of ``name`` registered as champion, and an empty model repository."""
    v1 = mlflow.register_version(name, files or mlp_files(seed=seed))
    mlflow.set_alias(name, "champion", v1)
    repo = tmp_path / "models"
    repo.mkdir()
    return v1, repo


def test_registry_sync_as_a_separate_process(mlflow, tmp_path, start_gateway):
    name = "sidecar-mlp"
    v1, repo = champion_and_empty_repo(mlflow, name, 3, tmp_path)

    def sync(*extra: str, models: str = f"mlp={name}") -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "registry-sync", "--once", "--registry-url", mlflow.url,
             "--model-repository", str(repo), "--registry-models", models, *extra],
            capture_output=True, text=True, timeout=120, cwd=str(ROOT),
        )

    done = sync()
    assert done.returncode == 0, done.stderr
    assert (repo / "mlp" / str(v1) / "model.onnx").read_bytes() == mlp_onnx(seed=3)
    assert yaml.safe_load((repo / "mlp" / "model.yaml").read_text())["version_policy"] == {"specific": [v1]}

    # A daemon without registry_url serves what the sidecar wrote; the sidecar reports its counters.
    gw = start_gateway(repo)
    for _ in range(5):
        assert infer(gw, "mlp")[0] == str(v1)
    done = sync("--gateway-url", f"http://{gw.http_url}", "--registry-report-s", "1")
    assert done.returncode == 0, done.stderr
    assert reported_requests(mlflow, name, v1) == 5

    # The sidecar left running: an alias move reaches the daemon by hot reload; SIGTERM ends it cleanly.
    metrics_port = free_port()
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "gateway", "registry-sync", "--registry-url", mlflow.url, "--model-repository",
         str(repo), "--registry-models", f"mlp={name}", "--registry-poll-s", "0.3", "--metrics-port", str(metrics_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
    )
    try:
        v2 = mlflow.register_version(name, mlp_files(seed=4))
        mlflow.set_alias(name, "champion", v2)
        gw.wait_until(lambda: infer(gw, "mlp")[0] == str(v2), timeout=WAIT_S, what="the daemon serving version 2")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert re.search(r'^gateway_registry_alias_version\{alias="champion",model="mlp"\} 2\.0$', text, re.M), text
        assert re.search(r"^gateway_registry_downloads_total 1\.0$", text, re.M), text  # v2 only: v1 was on disk
    finally:
        sidecar.send_signal(signal.SIGTERM)
        _, err = sidecar.communicate(timeout=60)
    assert sidecar.returncode == 0, err
    assert "registry-sync: stopped" in err

    # No such registered model: the sidecar says so and exits 1; nothing is written.
    done = sync(models="ghost")
    assert done.returncode == 1
    assert "ghost" in done.stderr and "not set" in done.stderr
    assert not (repo / "ghost").exists()


@pytest.mark.skipif(importlib.util.find_spec("gateway.core.drift_config") is None,
                    reason="this build has no drift statistics (InferenceService.drift_metrics)")
def test_drift_statistics_reach_mlflow(mlflow, tmp_path, start_gateway):
    name = "drift-mlp"
    v1, repo = champion_and_empty_repo(mlflow, name, 6, tmp_path, files={"model.onnx": mlp_onnx(seed=6)})
    (repo / "dm").mkdir()
    (repo / "dm" / "model.yaml").write_text(yaml.safe_dump({
        "registry": {"model_name": name},
        "drift": {"features": [{"input": "INPUT", "columns": [0, 1]}], "window": {"size_rows": 100},
                  "reference": {"capture_rows": 100}},
    }))
    gw = start_gateway(repo, "--registry-url", mlflow.url, "--registry-report-s", "0.5", *POLL)
    gw.wait_until(lambda: served_version(gw, "dm") == str(v1), timeout=WAIT_S, what="version 1 served")
    rng = np.random.default_rng(0)
    for _ in range(12):  # 100 rows captured as the reference, then two windows of 100
        assert infer(gw, "dm", x=rng.standard_normal((25, 64)).astype(np.float32))[0] == str(v1)

    def drift_keys():
        run_id = serving_run(mlflow, name, v1)
        return run_id and {k for k in mlflow.metric_keys(run_id) if k.startswith("drift.")}

    keys = gw.wait_until(drift_keys, timeout=WAIT_S, what="drift metrics in the MLflow run")
    assert any(k.endswith(".severity") for k in keys), keys
    assert any(k.endswith(".psi") for k in keys), keys


def test_registry_outage_keeps_serving(mlflow, tmp_path, start_gateway):
    """Runs last in this module: it hangs the shared server, lets it go, then kills it."""
    name = "outage-mlp"
    v1, repo = champion_and_empty_repo(mlflow, name, 5, tmp_path)
    gw = start_gateway(repo, "--registry-url", mlflow.url, "--registry-models", name,
                       "--registry-poll-s", "0.3", "--registry-backoff-max-s", "1", "--registry-timeout-s", "1")
    gw.wait_until(lambda: served_version(gw, name) == str(v1), timeout=WAIT_S, what="version 1 served")
    assert metric_value(gw, "gateway_registry_up") == 1.0

    def failed_polls() -> float:
        return metric_value(gw, "gateway_registry_failures_total", '{operation="poll"}')

    def outage(start_failures: float, what: str) -> None:
        gw.wait_until(lambda: failed_polls() >= start_failures + 3,
                      timeout=WAIT_S, what=f"three failed polls counted ({what})")
        assert metric_value(gw, "gateway_registry_up") == 0.0
        for _ in range(20):
            assert infer(gw, name)[0] == str(v1)  # serving goes on with the version loaded

    # Slow: the server hangs (SIGSTOP); every poll times out after registry_timeout_s.
    mlflow.pause()
    try:
        outage(failed_polls(), "hung registry")
        assert gw.log().count("registry unavailable") == 1  # logged once per change of state, not per poll
    finally:
        mlflow.resume()
    gw.wait_for_log(re.compile(r"registry reachable again after \d+ failed poll"), timeout=WAIT_S)
    assert metric_value(gw, "gateway_registry_up") == 1.0

    # Down: the server is gone (connection refused).
    mlflow.kill()
    outage(failed_polls(), "registry down")
    assert gw.log().count("registry unavailable") == 2
    assert gw.proc.poll() is None
