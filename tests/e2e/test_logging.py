"""Structured logs: JSON lines carrying request ids; per-module levels from settings."""

from __future__ import annotations

import json

import pytest


def body(request_id: str, name: str = "INPUT0") -> bytes:
    return json.dumps({
        "id": request_id,
        "inputs": [
            {"name": name, "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
        ],
    }).encode()


def json_lines(gw) -> list[dict]:
    return [json.loads(line) for line in gw.log().splitlines() if line.strip()]


def test_json_lines_carry_request_ids(model_repo, start_gateway):
    gw = start_gateway(model_repo, "--log-format", "json", "--log-levels", "gateway.requests=debug")
    headers = {"Content-Type": "application/json"}
    assert gw.http("POST", "/v2/models/simple/infer", body("req-ok"), headers)[0] == 200
    assert gw.http("POST", "/v2/models/simple/infer", body("req-bad", "WRONG"), headers)[0] == 400
    # Without a v2 id, the X-Request-ID header names the request.
    assert gw.http("POST", "/v2/models/simple/infer", body(""), {**headers, "X-Request-ID": "hdr-7"})[0] == 200
    gw.wait_for_log(__import__("re").compile(r'"request_id": "hdr-7"'), timeout=30)
    lines = json_lines(gw)  # every line is a JSON object
    assert all({"time", "level", "logger", "message"} <= set(doc) for doc in lines)
    startup = next(doc for doc in lines if doc["message"].startswith("ready: "))
    assert "request_id" not in startup
    by_id = {doc.get("request_id"): doc for doc in lines if doc["logger"] == "gateway.requests"}
    assert by_id["req-ok"]["level"] == "DEBUG" and " ok " in by_id["req-ok"]["message"]
    assert "invalid_argument" in by_id["req-bad"]["message"] and "WRONG" in by_id["req-bad"]["message"]
    assert "hdr-7" in by_id


def test_module_level_silences_only_that_module(model_repo, start_gateway):
    gw = start_gateway(model_repo, "--log-levels", "gateway.service=warning")
    assert gw.http("POST", "/v2/models/simple/infer", body("r1"), {"Content-Type": "application/json"})[0] == 200
    log = gw.log()
    assert "listening grpc=" in log  # gateway at info still logs
    assert "model simple version 1 loaded" not in log  # gateway.service.models at warning does not
    assert "gateway.requests" not in log  # debug request lines are off by default


@pytest.mark.parametrize("value", ["gateway.http", "gateway.http=loud"])
def test_bad_module_levels_are_rejected_at_start(model_repo, value):
    import subprocess
    import sys

    from daemons import ROOT

    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--model-repository", str(model_repo), "--log-levels", value],
        capture_output=True, text=True, timeout=60, cwd=str(ROOT),
    )
    assert proc.returncode == 2
    assert "--log-levels" in proc.stderr and value in proc.stderr
