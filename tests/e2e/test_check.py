"""`gateway check` loads a repository as `gateway serve` does: what the daemon refuses at load (a
drift stream naming a tensor the graph lacks, a declared tensor of the wrong type, a decoder
without a tokenizer), check reports too, with the same words, and every problem of a file at once."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import make_models
from daemons import ROOT

MLP_YAML = "max_batch_size: 32\n"


def check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "check", str(root)], capture_output=True, text=True,
                          cwd=str(ROOT), timeout=120)


def repo_with_mlp(tmp_path: Path, yaml: str) -> Path:
    root = tmp_path / "models"
    make_models.write_repository(str(root), ["mlp", "simple"])
    (root / "mlp" / "model.yaml").write_text(yaml)
    return root


def test_a_drift_feature_on_an_input_the_model_lacks_is_reported_as_serve_refuses_it(tmp_path, start_gateway):
    root = repo_with_mlp(tmp_path, MLP_YAML + "drift:\n  features: [{input: NOPE}]\n")
    out = check(root)
    assert out.returncode == 1, out.stdout
    line = f"{root}/mlp/model.yaml: drift.features[0].input: 'NOPE' is not an input of the model (it has ['INPUT'])"
    assert line in out.stdout.splitlines(), out.stdout
    assert f"{root}/simple: ok" in out.stdout and "1 problem(s) found" in out.stdout
    # The daemon refuses the version with the same words.
    gw = start_gateway(root)
    status, rows = gw.http_json("POST", "/v2/repository/index", {})
    (row,) = [r for r in rows if r["name"] == "mlp"]
    assert row["state"] == "UNAVAILABLE" and row["reason"] == line, row


def test_every_problem_of_one_file_is_printed(tmp_path):
    root = repo_with_mlp(tmp_path, MLP_YAML + (
        "inputs: [{name: INPUT, datatype: FP64, shape: [64]}]\n"
        "drift:\n"
        "  features: [{input: INPUT, columns: [0]}]\n"
        "  outputs: [{output: OUTPUT, columns: [99]}, {output: SCORES}]\n"
        "  page_hinkley: {output: PROBS}\n"
    ))
    out = check(root)
    assert out.returncode == 1, out.stdout
    yaml = f"{root}/mlp/model.yaml"
    for problem in (
        f"{yaml}: inputs[0].datatype: FP64 but the model says FP32",
        f"{yaml}: drift.outputs[0].columns: column 99 is outside the 8 values of a 'OUTPUT' row",
        f"{yaml}: drift.outputs[1].output: 'SCORES' is not an output of the model",
        f"{yaml}: drift.page_hinkley.output: 'PROBS' is not an output of the model",
    ):
        assert any(line.startswith(problem) for line in out.stdout.splitlines()), (problem, out.stdout)
    assert "4 problem(s) found" in out.stdout


def test_config_problems_are_all_listed_and_each_names_file_and_field(tmp_path):
    root = repo_with_mlp(tmp_path, "max_batch_size: 4\ninstances: 0\ndynamic_batching: {max_queue_sizee: 3}\n")
    out = check(root)
    yaml = f"{root}/mlp/model.yaml"
    fields = {line.split(": ")[1] for line in out.stdout.splitlines() if line.startswith(yaml)}
    assert out.returncode == 1 and fields == {"instances", "dynamic_batching.max_queue_sizee"}, out.stdout
    # Rules across fields, all of them too.
    (root / "mlp" / "model.yaml").write_text(
        "max_batch_size: 4\ndynamic_batching: {preferred_batch_sizes: [8]}\n"
        "outputs: [{name: OUTPUT, datatype: FP32, shape: [8]}, {name: OUTPUT, datatype: FP32, shape: [8]}]\n")
    out = check(root)
    fields = {line.split(": ")[1] for line in out.stdout.splitlines() if line.startswith(yaml)}
    assert out.returncode == 1 and fields == {"dynamic_batching.preferred_batch_sizes", "outputs[1].name"}, out.stdout


def test_a_generation_model_without_its_tokenizer(tmp_path, tiny_llm_model):
    root = tmp_path / "models"
    shutil.copytree(tiny_llm_model, root / "tiny-gpt")
    out = check(root)
    assert out.returncode == 0 and f"{root}/tiny-gpt: ok" in out.stdout, out.stdout
    (root / "tiny-gpt" / "1" / "tokenizer.json").unlink()
    out = check(root)
    assert out.returncode == 1 and "generation:" in out.stdout and "tokenizer" in out.stdout, out.stdout


def test_an_embedding_model_without_its_tokenizer(tmp_path, minilm_model):
    root = tmp_path / "models"
    shutil.copytree(minilm_model, root / "minilm")
    (root / "minilm" / "1" / "tokenizer.json").unlink()
    out = check(root)
    assert out.returncode == 1 and "embedding: cannot load the tokenizer" in out.stdout, out.stdout


def test_a_corrupt_model_file_and_a_policy_selecting_nothing(tmp_path):
    root = repo_with_mlp(tmp_path, MLP_YAML + "version_policy: {specific: [1, 2]}\n")
    make_models._save(make_models.mlp_graph(1), str(root / "mlp" / "2" / "model.onnx"))
    (root / "mlp" / "2" / "model.onnx").write_bytes(b"not onnx")
    (root / "simple" / "model.yaml").write_text("max_batch_size: 8\nversion_policy: {specific: [5]}\n")
    out = check(root)
    assert out.returncode == 1
    assert f"{root}/mlp/2/model.onnx: failed to load:" in out.stdout and "(version 2)" in out.stdout, out.stdout
    assert f"{root}/simple/model.yaml: version_policy: selects none" in out.stdout


def test_the_example_repository_is_clean():
    out = check(ROOT / "examples" / "models")
    assert out.returncode == 0 and "0 problem(s) found" in out.stdout, out.stdout
