"""The locustfiles of loadtests/ run headless against a real gateway and write their reports."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, copy_model

LOCUST = [sys.executable, "-m", "locust"]
pytestmark = pytest.mark.slow  # each run pays locust's ~4 s start-up


@pytest.fixture(scope="module")
def gw(shared_gateway):
    return shared_gateway


def run_locust(locustfile: str, host: str, out: Path, *extra: str) -> dict[str, dict]:
    cmd = [*LOCUST, "-f", str(ROOT / "loadtests" / locustfile), "--host", host, "--headless",
           "-u", "2", "-r", "2", "-t", "3s", "--csv", str(out / "report"), "--html", str(out / "report.html"),
           "--only-summary", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "report.html").stat().st_size > 0
    with open(out / "report_stats.csv", newline="") as fh:
        return {row["Name"]: row for row in csv.DictReader(fh)}


@pytest.mark.parametrize("binary", [False, True])
def test_v2_http_locustfile(gw, tmp_path, binary):
    stats = run_locust("v2_http.py", f"http://{gw.http_url}", tmp_path, "--model", "mlp", "--rows", "2",
                       *(["--binary"] if binary else []))
    row = stats["infer mlp"]
    assert int(row["Request Count"]) > 0 and int(row["Failure Count"]) == 0


def test_v2_grpc_locustfile(gw, tmp_path):
    stats = run_locust("v2_grpc.py", gw.grpc_url, tmp_path, "--model", "simple")
    row = stats["ModelInfer simple"]
    assert int(row["Request Count"]) > 0 and int(row["Failure Count"]) == 0


def test_locust_counts_server_errors_as_failures(gw, tmp_path):
    cmd = [*LOCUST, "-f", str(ROOT / "loadtests" / "v2_http.py"), "--host", f"http://{gw.http_url}", "--headless",
           "-u", "1", "-r", "1", "-t", "2s", "--only-summary", "--model", "no_such_model"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode != 0  # locust exits non-zero when any request failed
    assert "no_such_model" in proc.stdout + proc.stderr


def test_openai_chat_locustfile(start_gateway, tiny_llm_model, tmp_path):
    # GET /v1/models may exist (embeddings) before chat does: probe the chat route itself. An
    # absent route is aiohttp's 404 ({"error": "Not Found"}), not an OpenAI-shaped error object.
    copy_model(tiny_llm_model.parent, tmp_path / "models", tiny_llm_model.name)
    gw = start_gateway(tmp_path / "models")
    status, body = gw.http_json("POST", "/v1/chat/completions", {
        "model": tiny_llm_model.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    if status == 404 and not isinstance((body or {}).get("error"), dict):
        pytest.skip("this build has no POST /v1/chat/completions route")
    stats = run_locust("openai_chat.py", f"http://{gw.http_url}", tmp_path, "--max-tokens", "4",
                       "--chat-model", tiny_llm_model.name)
    for name in ("chat", "chat stream"):
        assert int(stats[name]["Request Count"]) > 0 and int(stats[name]["Failure Count"]) == 0
