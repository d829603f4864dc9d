"""Hot reload: the daemon follows the repository and keeps serving through bad files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import tritonclient.grpc as grpcclient

import make_models
from daemons import ROOT


def mlp_infer(client, version: str = ""):
    inp = grpcclient.InferInput("INPUT", [1, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 64), np.float32))
    return client.infer("mlp", [inp], model_version=version)


def write_atomically(path, text: str) -> None:
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def test_follows_versions_config_edits_and_survives_invalid_files(tmp_path, start_gateway):
    root = tmp_path / "models"
    make_models.write_repository(str(root), ["mlp", "simple"])
    gw = start_gateway(root)
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    assert mlp_infer(client).get_response().model_version == "1"

    # A new version: served by default once loaded (latest: 1).
    shutil.copytree(root / "mlp" / "1", root / "mlp" / "2")
    gw.wait_until(lambda: client.get_model_metadata("mlp").versions == ["2"], what="version 2")
    assert mlp_infer(client).get_response().model_version == "2"

    # An edited config: serve both versions, new batch settings.
    write_atomically(root / "mlp" / "model.yaml", "max_batch_size: 4\nversion_policy: {all: true}\n")
    gw.wait_until(lambda: client.get_model_config("mlp").config.max_batch_size == 4, what="max_batch_size 4")
    assert client.get_model_metadata("mlp").versions == ["1", "2"]
    assert mlp_infer(client, "1").get_response().model_version == "1"

    # An invalid config: reported with file and field, the previous good one keeps serving.
    write_atomically(root / "mlp" / "model.yaml", "max_batch_size: -3\n")
    index = lambda: {(m.name, m.version): m for m in client.get_model_repository_index().models}  # noqa: E731
    reported = gw.wait_for_log(re.compile(r"invalid model config.*"), timeout=30).group(0)
    assert "mlp/model.yaml: max_batch_size:" in reported
    assert client.is_server_live()
    assert client.get_model_config("mlp").config.max_batch_size == 4
    assert mlp_infer(client).as_numpy("OUTPUT").shape == (1, 8)

    # A corrupt model file for a new version: the good versions keep serving.
    (root / "mlp" / "model.yaml").write_text("version_policy: {all: true}\n")
    os.makedirs(root / "mlp" / "3")
    write_atomically(root / "mlp" / "3" / "model.onnx", "this is not an onnx file")
    gw.wait_until(lambda: ("mlp", "3") in index() and index()[("mlp", "3")].state == "UNAVAILABLE", what="v3 failing")
    assert "failed to load" in index()[("mlp", "3")].reason
    assert mlp_infer(client, "2").get_response().model_version == "2"

    # A new model appears, a model is removed.
    make_models.write_repository(str(root), ["identity"])
    gw.wait_until(lambda: client.is_model_ready("identity"), what="identity to load")
    shutil.rmtree(root / "simple")
    gw.wait_until(lambda: not client.is_model_ready("simple"), what="simple to go")
    assert client.is_server_ready()
    client.close()


def test_explicit_unload_and_load(tmp_path, start_gateway):
    root = tmp_path / "models"
    make_models.write_repository(str(root), ["mlp", "simple"])
    gw = start_gateway(root)
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    client.unload_model("simple")
    assert not client.is_model_ready("simple")
    states = {m.name: m.state for m in client.get_model_repository_index().models}
    assert states["simple"] == "UNAVAILABLE"
    client.load_model("simple")
    assert client.is_model_ready("simple")
    status, _ = gw.http_json("POST", "/v2/repository/models/simple/unload")
    assert status == 200 and not client.is_model_ready("simple")
    status, _ = gw.http_json("POST", "/v2/repository/models/simple/load")
    assert status == 200 and client.is_model_ready("simple")
    status, doc = gw.http_json("POST", "/v2/repository/models/nope/load")
    assert status == 404 and "nope" in doc["error"]
    client.close()


def test_check_command_lists_every_problem(tmp_path):
    root = tmp_path / "models"
    make_models.write_repository(str(root), ["mlp", "simple"])
    (root / "mlp" / "model.yaml").write_text(
        "max_batch_size: 4\ninstances: 0\ndynamic_batching:\n  preferred_batch_sizes: [2, 8]\n  max_queue_sizee: 3\n"
    )
    (root / "empty").mkdir()
    out = subprocess.run([sys.executable, "-m", "gateway", "check", str(root)], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 1
    text = out.stdout
    assert f"{root}/mlp/model.yaml: instances:" in text
    assert "dynamic_batching.max_queue_sizee: unknown field" in text
    assert "no version directory" in text
    assert f"{root}/simple: ok" in text
