"""benchmarks/report.py: issue 21's target ratios from a run's rows (pure arithmetic on dicts)."""

from __future__ import annotations

import pytest

from benchmarks import report


def gw(c, rate, protocol="grpc", workers=1, window="adaptive", model="mlp", p50=None, cores=1.0, threads=1):
    return {"model": model, "system": "gateway", "protocol": protocol, "workers": workers, "threads": threads, "window": window,
            "batching": window is not None, "concurrency": c, "infer_per_s": rate, "p50_ms": p50,
            "server_cpu_cores": cores}


def other(system, c, rate, model="mlp", protocol="grpc", cores=1.0, **extra):
    return {"model": model, "system": system, "protocol": protocol, "concurrency": c, "infer_per_s": rate,
            "server_cpu_cores": cores, **extra}


ROWS = [
    other("onnxruntime", "–", 60_000, protocol="in-process", threads=1, batch=1, p50_ms=0.015),
    gw(1, 2_500, p50=0.365),
    other("fastapi", 1, 1_000, protocol="http-json"),
    gw(32, 9_000), gw(32, 10_000, window="fixed"),
    gw(128, 10_000), gw(128, 16_000, workers=2),
    gw(32, 7_000, protocol="pa-grpc"), gw(32, 6_300, protocol="pa-grpc-stream"),
    other("nghttpd", 32, 90_000, cores=0.9),
]


def by_what(items):
    return {(i["what"], i["concurrency"]): i for i in items}


def test_each_target_is_the_ratio_of_its_rows_and_says_whether_it_is_met():
    found = by_what(report.ratios(ROWS))
    p50 = found[("p50 gateway gRPC (h2load, default batching) − raw ORT batch 1, ms", 1)]
    assert p50["value"] == pytest.approx(0.35) and p50["met"] is False and p50["target"] == "≤ 0.15"
    fastapi = found[("gateway gRPC (h2load, default batching) ÷ naive FastAPI", 1)]
    assert fastapi["value"] == pytest.approx(2.5) and fastapi["met"] is True
    window = found[("adaptive ÷ fixed window, gRPC (h2load), 1 worker", 32)]
    assert window["value"] == pytest.approx(0.9) and window["met"] is False
    workers = found[("2 workers ÷ 1 worker, gRPC (h2load)", 128)]
    assert workers["value"] == pytest.approx(1.6) and workers["target"] == "≥ 1.8" and workers["met"] is False
    stream = found[("ModelStreamInfer ÷ unary (perf_analyzer, 1 worker)", 32)]
    assert stream["value"] == pytest.approx(0.9) and stream["met"] is False


def test_the_ceiling_has_no_target_and_a_missing_row_leaves_its_target_out():
    items = report.ratios(ROWS)
    (ceiling,) = [i for i in items if "nghttpd" in i["what"]]
    assert ceiling["value"] == pytest.approx((9_000 / 1.0) / (90_000 / 0.9)) and ceiling["met"] is None
    assert "| – |" in report.ratios_markdown([ceiling])
    assert not any("PyTriton" in i["what"] or i["model"] == "cnn" for i in items)  # no such rows in this run


def test_cnn_is_compared_with_the_raw_loop_on_as_many_threads_as_the_gateway_uses():
    raw = [other("onnxruntime", "–", rate, model="cnn", protocol="in-process", threads=t, batch=32)
           for t, rate in ((1, 3_000), (2, 6_000), (4, 8_000))]
    # A run with --intra-op-threads 2: one worker uses 2 threads, two workers 4.
    rows = [*raw, gw(32, 3_600, model="cnn", threads=2), gw(32, 4_000, model="cnn", workers=2, threads=2)]
    found = sorted((i["what"], i["value"]) for i in report.ratios(rows) if "raw ORT best" in i["what"])
    assert [w for w, _ in found] == [
        "gRPC (h2load), 1 worker(s) × 2 intra-op thread(s) ÷ raw ORT best (2 thread(s), batch 32)",
        "gRPC (h2load), 2 worker(s) × 2 intra-op thread(s) ÷ raw ORT best (4 thread(s), batch 32)",
    ]
    assert [v for _, v in found] == [pytest.approx(0.6), pytest.approx(0.5)]
