"""gateway tune against a running daemon: it tries settings live and writes the best one back."""

from __future__ import annotations

import subprocess
import sys

import tritonclient.grpc as grpcclient
import yaml

import make_models
from daemons import ROOT


def test_tune_writes_best_setting_with_backup(tmp_path, start_gateway):
    root = tmp_path / "models"
    make_models.write_repository(str(root), ["mlp"])
    before = (root / "mlp" / "model.yaml").read_text()
    gw = start_gateway(root)
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "tune", "mlp", "--p99-ms", "60000", "--model-repository", str(root),
         "--url", gw.grpc_url, "--concurrency", "2", "--seconds", "0.3", "--warmup-s", "0.1"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    table = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    # Header + one row per trial: the baseline and every other value of each setting.
    assert len(table) == 1 + 1 + 4 + 3 + 1 + 1
    backups = list((root / "mlp").glob("model.yaml.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == before
    written = yaml.safe_load((root / "mlp" / "model.yaml").read_text())
    assert {"max_batch_size", "instances", "intra_op_threads"} <= set(written)
    assert written["dynamic_batching"]["max_queue_size"] == 1024  # untouched keys survive
    # The running daemon follows the written file.
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    gw.wait_until(lambda: client.get_model_config("mlp").config.max_batch_size == written["max_batch_size"],
                  what="the tuned max_batch_size to be served")
    client.close()


def test_tune_refuses_an_invalid_model_file(tmp_path):
    root = tmp_path / "models"
    make_models.write_repository(str(root), ["mlp"])
    (root / "mlp" / "model.yaml").write_text("instances: 0\n")
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "tune", "mlp", "--p99-ms", "10", "--model-repository", str(root)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert out.returncode != 0 and "instances" in out.stderr
    assert (root / "mlp" / "model.yaml").read_text() == "instances: 0\n"
