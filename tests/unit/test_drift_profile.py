"""`gateway drift profile`: the same reference data in every format gives the same profile."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import make_models
from gateway.tools.drift_profile import ProfileError, make_profile

ROOT = Path(__file__).resolve().parents[2]
DRIFT = """drift:
  features:
    - {input: INPUT, columns: [0, 5], names: [age, income]}
    - {input: INPUT, columns: [7], categorical: true}
  outputs:
    - {output: OUTPUT, argmax: true}
    - {output: OUTPUT, columns: [0]}
  reference: {bins: 8}
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    make_models.write_repository(str(root), ["mlp"])
    with open(root / "mlp" / "model.yaml", "a") as fh:
        fh.write(DRIFT)
    return root


@pytest.fixture
def data() -> np.ndarray:
    x = np.random.default_rng(3).standard_normal((600, 64)).astype(np.float32)
    x[:, 7] = np.random.default_rng(4).integers(0, 4, 600)  # a category code
    return x


def streams(path: str) -> dict:
    return json.loads(Path(path).read_text())["streams"]


def test_cli_writes_reference_beside_the_model(repo, data, tmp_path):
    np.save(tmp_path / "ref.npy", data)
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "drift", "profile", "mlp", "--data", str(tmp_path / "ref.npy"), "--repository", str(repo)],
        capture_output=True, text=True, cwd=str(ROOT), timeout=120,
    )
    assert out.returncode == 0, out.stderr
    path = repo / "mlp" / "1" / "reference.json"
    assert f"wrote {path}" in out.stdout
    doc = json.loads(path.read_text())
    assert doc["format"] == "gateway.drift.reference/1" and doc["rows"] == 600 and doc["source"] == "ref.npy"
    s = doc["streams"]
    assert set(s) == {"age", "income", "INPUT_7", "OUTPUT_argmax", "OUTPUT_0"}
    age = s["age"]
    # 8 quantile bins between min and max, plus the open-ended outer bins.
    assert age["kind"] == "numeric" and len(age["edges"]) == 9 and len(age["counts"]) == 10
    assert age["edges"][0] == pytest.approx(float(data[:, 0].min())) and age["edges"][-1] == pytest.approx(float(data[:, 0].max()))
    assert age["counts"][0] == 0 and age["counts"][-1] == 1 and all(70 <= c <= 80 for c in age["counts"][1:-1])
    cat = s["INPUT_7"]
    assert cat["kind"] == "categorical" and cat["categories"] == [0, 1, 2, 3] and cat["counts"][-1] == 0
    assert sum(cat["counts"]) == 600
    assert sum(s["OUTPUT_argmax"]["counts"]) == 600


def test_every_format_gives_the_same_profile(repo, data, tmp_path):
    np.save(tmp_path / "ref.npy", data)
    np.savez(tmp_path / "ref.npz", INPUT=data)
    columns = {f"INPUT_{j}": data[:, j].astype(np.float64) for j in range(64)}
    with open(tmp_path / "ref.csv", "w") as fh:
        fh.write(",".join(columns) + "\n")
        for row in zip(*columns.values()):
            fh.write(",".join(repr(float(v)) for v in row) + "\n")
    pq.write_table(pa.table({k: pa.array(v) for k, v in columns.items()}), tmp_path / "ref.parquet")
    results = {}
    for ext in ("npy", "npz", "csv", "parquet"):
        path, summary = make_profile(str(repo), "mlp", str(tmp_path / f"ref.{ext}"))
        results[ext] = streams(path)
        assert summary["age"] == {"kind": "numeric", "bins": 10, "rows": 600}
    assert results["npy"] == results["npz"] == results["csv"] == results["parquet"]


def test_a_table_with_only_feature_columns_profiles_the_inputs(repo, data, tmp_path):
    Path(repo / "mlp" / "model.yaml").write_text(
        "drift:\n  features:\n    - {input: INPUT, columns: [0, 5], names: [age, income]}\n")
    with open(tmp_path / "ref.csv", "w") as fh:
        fh.write("age,income\n" + "".join(f"{a},{b}\n" for a, b in data[:, [0, 5]]))
    path, _ = make_profile(str(repo), "mlp", str(tmp_path / "ref.csv"))
    assert set(streams(path)) == {"age", "income"}


@pytest.mark.parametrize("case, message", [
    ("no_drift", "drift: missing"),
    ("outputs_need_inputs", "output streams need every input"),
    ("bad_ext", "unknown data format '.txt'"),
    ("text_csv", "every value must be a number"),
    ("bad_version", "no version 7"),
])
def test_errors(repo, data, tmp_path, case, message):
    version = ""
    data_file = tmp_path / "ref.npy"
    np.save(data_file, data)
    if case == "no_drift":
        Path(repo / "mlp" / "model.yaml").write_text("max_batch_size: 32\n")
    elif case == "outputs_need_inputs":
        data_file = tmp_path / "ref.csv"
        data_file.write_text("age,income\n1,2\n")
    elif case == "bad_ext":
        data_file = tmp_path / "ref.txt"
        data_file.write_text("1\n")
    elif case == "text_csv":
        data_file = tmp_path / "ref.csv"
        data_file.write_text("INPUT_0\nred\n")
    elif case == "bad_version":
        version = "7"
    with pytest.raises(ProfileError, match=message):
        make_profile(str(repo), "mlp", str(data_file), version)
