"""The benchmark tool keeps working: `benchmarks/run.py --quick` runs end to end and writes its table.

No timing is asserted (speed is the benchmark's output, not a test's verdict). The run happens
in a subprocess: the benchmark imports gateway._proto, which this test process must not.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_writes_table_json_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "results"
    res = subprocess.run(
        # Shorter points than --quick's own: the tool's path is what is tested, not its numbers.
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--seconds", "1", "--warmup-s", "0.2",
         "--raw-seconds", "0.3", "--out-dir", str(out)],
        capture_output=True, text=True, timeout=600, cwd=str(ROOT),
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    doc = json.loads((out / "latest.json").read_text())
    assert doc["models"] == ["mlp"]
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["cpu_model"]
    assert doc["machine"]["packages"]["onnxruntime"]
    assert doc["unavailable"] == []

    raw = [r for r in doc["rows"] if r["system"] == "onnxruntime"]
    assert {r["batch"] for r in raw} == {1, 32}
    assert all(r["infer_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in raw)
    assert sum(1 for r in raw if r.get("best")) == 1

    gateway = {r["protocol"]: r for r in doc["rows"] if r["system"] == "gateway"}
    assert set(gateway) == {"grpc", "grpc-stream", "http-binary"}
    tools = {"grpc": "h2load", "grpc-stream": "h2load", "http-binary": "wrk"}
    for protocol, row in gateway.items():
        assert row["concurrency"] == 8
        if shutil.which(tools[protocol]) is None:
            # the tool says what is missing instead of failing (CI images without the generators)
            assert f"{tools[protocol]} not found" in row["note"]
            continue
        assert row["infer_per_s"] > 0, row
        assert row["errors"] == 0, row  # every answer was a real inference, checked once against raw ORT
        assert row["p50_ms"] is not None and row["p99_ms"] >= row["p50_ms"]
        assert row["server_cpu_ms_per_infer"] > 0 and row["gen_cpu_cores"] >= 0
        assert row["mean_batch"] >= 1  # read from the gateway's own statistics endpoint

    table = (out / "latest.md").read_text()
    assert "## mlp" in table and "| system | protocol | config |" in table
    assert doc["machine"]["cpu_model"] in table
    for protocol in gateway:
        assert f"| gateway | {protocol} |" in table
    assert "raw onnxruntime" in table
    assert "gateway" in res.stdout and "infer/s" in res.stdout  # the table is printed too

    png = out / "latest.png"
    assert doc["plot"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_system_that_cannot_start_is_listed_with_the_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("the peers' venv cache cannot live under a file")
    out = tmp_path / "results"
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--systems", "fastapi", "--models", "mlp",
         "--concurrency", "1", "--seconds", "1", "--cache-dir", str(blocker / "cache"), "--no-plot",
         "--out-dir", str(out)],
        capture_output=True, text=True, timeout=300, cwd=str(ROOT),
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads((out / "latest.json").read_text())
    assert [u["system"] for u in doc["unavailable"]] == ["fastapi"]
    assert "Not a directory" in doc["unavailable"][0]["reason"]
    assert doc["rows"] == [] and doc["plot"] is None
    table = (out / "latest.md").read_text()
    assert "## Could not run" in table and "naive FastAPI" in table
