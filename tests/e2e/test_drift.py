"""Drift monitoring against the real daemon: reference traffic raises nothing; one feature shifted
by +3 standard deviations raises an alert for that feature only, seen in /drift, /metrics and the log."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import make_models

ROOT = Path(__file__).resolve().parents[2]
FEATURES = ["INPUT_0", "INPUT_1", "INPUT_2", "INPUT_3"]
DRIFT = """drift:
  features:
    - {input: INPUT, columns: [0, 1, 2, 3]}
  outputs:
    - {output: OUTPUT, argmax: true}
  window: {size_rows: 500}
"""


def write_repo(root: Path, drift: str = DRIFT, reference: bool = True) -> Path:
    make_models.write_repository(str(root), ["mlp", "simple"])
    with open(root / "mlp" / "model.yaml", "a") as fh:
        fh.write(drift)
    if reference:
        data = root.parent / "reference.npy"
        np.save(data, np.random.default_rng(100).standard_normal((4000, 64)).astype(np.float32))
        out = subprocess.run(
            [sys.executable, "-m", "gateway", "drift", "profile", "mlp", "--data", str(data), "--repository", str(root)],
            capture_output=True, text=True, cwd=str(ROOT), timeout=120,
        )
        assert out.returncode == 0, out.stderr
    return root


def send(gw, rng, rows: int, shift: float = 0.0, column: int = 2) -> None:
    x = rng.standard_normal((rows, 64)).astype(np.float32)
    x[:, column] += shift
    body = json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [rows, 64], "data": x.ravel().tolist()}]})
    status, _, raw = gw.http("POST", "/v2/models/mlp/infer", body.encode(), {"Content-Type": "application/json"})
    assert status == 200, raw


def drift_after(gw, windows: int) -> dict:
    def ready():
        status, doc = gw.http_json("GET", "/v2/models/mlp/versions/1/drift")
        assert status == 200, doc
        return doc if doc["windows_closed"] >= windows else None

    return gw.wait_until(ready, timeout=60, what=f"{windows} drift windows")


def scrape(gw) -> dict[tuple, float]:
    status, _, body = gw.http("GET", "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def drift_log(gw) -> list[dict]:
    lines = []
    for line in gw.log().splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            if doc.get("logger") == "gateway.drift" and "statistic" in doc:
                lines.append(doc)
    return lines


def test_reference_traffic_is_quiet_and_a_shifted_feature_alerts_alone(tmp_path, start_gateway):
    gw = start_gateway(write_repo(tmp_path / "models"), "--log-format", "json")
    rng = np.random.default_rng(7)
    for _ in range(40):  # 1000 rows: two windows from the reference distribution
        send(gw, rng, 25)
    doc = drift_after(gw, 2)
    assert doc["state"] == "monitoring" and doc["reference"]["rows"] == 4000 and doc["dropped_batches"] == 0
    latest = doc["latest"]
    assert latest["rows"] == 500 and latest["severity"] == "none"
    assert set(latest["streams"]) == {*FEATURES, "OUTPUT_argmax"}
    for name, s in latest["streams"].items():
        assert s["severity"] == "none" and s["alerts"] == {}, (name, s)
        assert s["psi"] < 0.1 and s["jsd"] < 0.1
    assert drift_log(gw) == []

    for _ in range(20):  # 500 rows with INPUT_2 moved by +3 standard deviations
        send(gw, rng, 25, shift=3.0)
    doc = drift_after(gw, 3)
    streams = doc["latest"]["streams"]
    assert streams["INPUT_2"]["severity"] == "critical"
    assert streams["INPUT_2"]["psi"] > 0.2 and streams["INPUT_2"]["ks"] > 0.5 and streams["INPUT_2"]["ks_pvalue"] < 1e-6
    assert set(streams["INPUT_2"]["alerts"]) == {"psi", "ks", "jsd"}
    for name in ("INPUT_0", "INPUT_1", "INPUT_3"):
        assert streams[name]["severity"] == "none", (name, streams[name])

    # The model-level route lists every served version.
    status, all_versions = gw.http_json("GET", "/v2/models/mlp/drift")
    assert status == 200 and [v["version"] for v in all_versions["versions"]] == ["1"]
    assert all_versions["versions"][0]["windows_closed"] >= 3

    samples = scrape(gw)

    def metric(name, **labels):
        return samples.get((name, tuple(sorted({"model": "mlp", "version": "1", **labels}.items()))))

    assert metric("gateway_drift_severity", feature="INPUT_2") == 2
    for name in ("INPUT_0", "INPUT_1", "INPUT_3"):
        assert metric("gateway_drift_severity", feature=name) == 0
    assert metric("gateway_drift_statistic", feature="INPUT_2", statistic="psi") == pytest.approx(streams["INPUT_2"]["psi"])
    assert metric("gateway_drift_windows_total") >= 3 and metric("gateway_drift_rows_total") == 1500

    alerts = gw.wait_until(lambda: drift_log(gw), what="drift alert log lines")
    input_alerts = [a for a in alerts if a["feature"].startswith("INPUT_")]
    assert {a["feature"] for a in input_alerts} == {"INPUT_2"}
    assert {a["statistic"] for a in input_alerts} == {"psi", "ks", "jsd"}
    psi = next(a for a in input_alerts if a["statistic"] == "psi")
    assert psi["model"] == "mlp" and psi["version"] == "1" and psi["severity"] == "critical" and psi["level"] == "ERROR"
    assert psi["value"] == pytest.approx(streams["INPUT_2"]["psi"])


def test_reference_captured_from_the_first_rows(tmp_path, start_gateway):
    drift = DRIFT.replace("  window: {size_rows: 500}\n", "  window: {size_rows: 200}\n  reference: {capture_rows: 300}\n")
    repo = write_repo(tmp_path / "models", drift, reference=False)
    gw = start_gateway(repo)
    status, doc = gw.http_json("GET", "/v2/models/mlp/versions/1/drift")
    assert status == 200 and doc["state"] == "capturing" and doc["reference"] == {"captured_rows": 0, "capture_rows": 300}
    rng = np.random.default_rng(1)
    for _ in range(20):
        send(gw, rng, 25)  # 300 rows of reference, then 200 rows: one window
    doc = drift_after(gw, 1)
    assert doc["state"] == "monitoring" and doc["reference"]["rows"] == 300
    assert "captured from the first 300 rows" in doc["reference"]["source"]
    saved = json.loads((repo / "mlp" / "1" / "reference.json").read_text())
    assert saved["rows"] == 300 and set(saved["streams"]) == {*FEATURES, "OUTPUT_argmax"}


def test_drift_routes_for_models_without_drift_and_unknown_models(tmp_path, start_gateway):
    gw = start_gateway(write_repo(tmp_path / "models"))
    status, doc = gw.http_json("GET", "/v2/models/simple/drift")
    assert status == 200 and doc == {"model": "simple", "versions": [{"model": "simple", "version": "1", "state": "off"}]}
    status, doc = gw.http_json("GET", "/v2/models/nope/drift")
    assert status == 404 and "nope" in doc["error"]
    status, doc = gw.http_json("GET", "/v2/models/mlp/versions/9/drift")
    assert status == 404


def test_a_drift_column_the_model_lacks_is_a_load_error_naming_the_field(tmp_path, start_gateway):
    drift = "drift:\n  features:\n    - {input: INPUT, columns: [64]}\n"
    repo = write_repo(tmp_path / "models", drift, reference=False)
    gw = start_gateway(repo)
    status, rows = gw.http_json("POST", "/v2/repository/index", {})
    mlp = next(r for r in rows if r["name"] == "mlp")
    assert mlp["state"] == "UNAVAILABLE"
    assert f"{repo / 'mlp'}/model.yaml: drift.features[0].columns: column 64 is outside the 64 values" in mlp["reason"]
    assert gw.http_json("GET", "/v2/models/simple/ready")[0] == 200  # the others serve


def test_gateway_check_names_the_drift_field(tmp_path):
    repo = write_repo(tmp_path / "models", "drift:\n  features: [{input: INPUT}]\n  window: {kind: sliding, size_rows: 100}\n", reference=False)
    out = subprocess.run([sys.executable, "-m", "gateway", "check", str(repo)], capture_output=True, text=True, cwd=str(ROOT), timeout=60)
    assert out.returncode == 1
    assert f"{repo / 'mlp'}/model.yaml: drift.window: a sliding window needs step_rows" in out.stdout


def test_drift_metrics_of_the_service_facade(tmp_path):
    """The flat metric names the registry client reports (in-process: InferenceService.drift_metrics)."""
    from gateway.core.types import InferRequest
    from gateway.service import InferenceService
    from gateway.service.models import ModelManager

    repo = write_repo(tmp_path / "models")

    async def main():
        manager = ModelManager(str(repo))
        await manager.reconcile()
        service = InferenceService(manager)
        try:
            assert service.drift_metrics("mlp", "1") == {}
            assert service.drift_metrics("simple", "1") == {}
            rng = np.random.default_rng(3)
            for _ in range(20):
                x = rng.standard_normal((25, 64)).astype(np.float32)
                x[:, 1] += 3
                await service.infer(InferRequest("mlp", "", {"INPUT": x}, {"INPUT": "FP32"}))
            for _ in range(600):  # the drift thread judges the window off the response path
                metrics = service.drift_metrics("mlp", "1")
                if metrics:
                    break
                await asyncio.sleep(0.05)
            return metrics
        finally:
            await manager.close(5)

    metrics = asyncio.run(main())
    assert metrics["drift.INPUT_1.severity"] == 2.0 and metrics["drift.INPUT_0.severity"] == 0.0
    for stat in ("psi", "ks", "ks_pvalue", "jsd"):
        assert isinstance(metrics[f"drift.INPUT_1.{stat}"], float)
    assert {"drift.OUTPUT_argmax.chi2", "drift.OUTPUT_argmax.chi2_pvalue", "drift.OUTPUT_argmax.severity"} <= set(metrics)
    assert all(isinstance(v, float) for v in metrics.values())
