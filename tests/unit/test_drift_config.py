"""The drift: section of model.yaml: defaults, and errors that name the file and the field."""

from __future__ import annotations

import pytest

from gateway.core.drift_config import DriftConfig
from gateway.core.errors import ConfigError
from gateway.core.model_config import parse_model_config
from gateway.core.types import TensorSpec
from gateway.monitoring.drift.streams import resolve_streams

FILE = "models/mlp/model.yaml"
FEATURE = {"features": [{"input": "INPUT", "columns": [0]}]}


def parse(drift):
    return parse_model_config({"drift": drift}, file=FILE, default_name="mlp")


def error(drift) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(drift)
    assert info.value.file == FILE
    return info.value


def test_defaults_serve():
    cfg = parse(FEATURE).drift
    assert cfg.enabled and cfg.window.kind == "tumbling" and cfg.window.rows == 1000 and cfg.window.panes == 1
    assert cfg.window.judged_rows == 500
    assert parse({**FEATURE, "window": {"size_rows": 200}}).drift.window.judged_rows == 200
    t = cfg.thresholds
    assert (t.psi.warning, t.psi.critical) == (0.1, 0.2)
    assert cfg.epsilon == 1e-4 and cfg.reference.file == "reference.json" and cfg.reference.capture_rows == 0
    assert parse_model_config({}, file=FILE, default_name="mlp").drift is None


def test_full_section():
    cfg = parse({
        **FEATURE,
        "outputs": [{"output": "OUTPUT", "argmax": True}, {"output": "OUTPUT", "columns": [0, 1], "names": ["p0", "p1"]}],
        "window": {"kind": "sliding", "size_s": 60, "step_s": 10, "min_rows": 50},
        "thresholds": {"psi": {"warning": 0.05, "critical": 0.3}, "chi2_pvalue": {"warning": 0.05, "critical": None}},
        "epsilon": 1e-6,
        "page_hinkley": {"output": "OUTPUT", "column": 1, "threshold": 10},
        "reference": {"capture_rows": 500, "bins": 20},
    }).drift
    assert cfg.window.by_time and cfg.window.panes == 6
    assert cfg.thresholds.chi2_pvalue.critical is None and cfg.page_hinkley.delta == 0.005


@pytest.mark.parametrize("drift, field, reason", [
    ({}, "drift", "list features, outputs or page_hinkley"),
    ({**FEATURE, "windw": {}}, "drift.windw", "unknown field"),
    ({"features": [{"input": "INPUT", "columns": [-1]}]}, "drift.features[0].columns", ">= 0"),
    ({"features": [{"input": "INPUT", "columns": [0, 0]}]}, "drift.features[0].columns", "unique"),
    ({"features": [{"input": "INPUT", "names": ["a"]}]}, "drift.features[0]", "names needs columns"),
    ({"features": [{"input": "INPUT", "columns": [0, 1], "names": ["a"]}]}, "drift.features[0]", "1 names for 2 columns"),
    ({"features": [{"input": "INPUT", "columns": [0], "names": ["a b"]}]}, "drift.features[0].names", "not a valid stream name"),
    ({"outputs": [{"output": "OUTPUT", "argmax": True, "columns": [0]}]}, "drift.outputs[0]", "argmax"),
    ({**FEATURE, "window": {"size_rows": 10, "size_s": 5}}, "drift.window", "not both"),
    ({**FEATURE, "window": {"size_rows": 100, "step_rows": 10}}, "drift.window", "no step"),
    ({**FEATURE, "window": {"kind": "sliding", "size_rows": 100}}, "drift.window", "needs step_rows"),
    ({**FEATURE, "window": {"kind": "sliding", "size_s": 60, "step_rows": 10}}, "drift.window", "use step_s"),
    ({**FEATURE, "window": {"kind": "sliding", "size_rows": 100, "step_rows": 30}}, "drift.window", "whole multiple"),
    ({**FEATURE, "window": {"kind": "sliding", "size_rows": 100000, "step_rows": 1}}, "drift.window", "at most 1000"),
    ({**FEATURE, "window": {"size_rows": 0}}, "drift.window.size_rows", "greater than or equal to 1"),
    ({**FEATURE, "window": {"size_rows": 200, "min_rows": 300}}, "drift.window", "no window would be judged"),
    ({**FEATURE, "thresholds": {"psi": {"warning": 0.3, "critical": 0.2}}}, "drift.thresholds.psi", "must not exceed"),
    ({**FEATURE, "thresholds": {"chi2_pvalue": {"warning": 0.01, "critical": 0.05}}}, "drift.thresholds.chi2_pvalue", "must not exceed"),
    ({**FEATURE, "epsilon": 0}, "drift.epsilon", "greater than 0"),
    ({**FEATURE, "reference": {"file": "../x.json"}}, "drift.reference.file", "without directories"),
    ({**FEATURE, "reference": {"bins": 1}}, "drift.reference.bins", "greater than or equal to 2"),
    ({**FEATURE, "page_hinkley": {"output": "OUTPUT", "threshold": 0}}, "drift.page_hinkley.threshold", "greater than 0"),
    ({"features": [{"input": "INPUT", "columns": [1]}, {"input": "INPUT", "columns": [1]}]}, "drift.features[1].names", "INPUT_1"),
])
def test_invalid_fields_are_named(drift, field, reason):
    err = error(drift)
    assert err.field == field
    assert reason in err.reason


def test_declared_tensors_are_checked_at_parse():
    with pytest.raises(ConfigError) as info:
        parse_model_config({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [4]}],
                            "drift": {"features": [{"input": "INPT"}]}}, file=FILE, default_name="mlp")
    assert info.value.field == "drift.features[0].input" and "INPT" in info.value.reason


SPECS_IN = (TensorSpec("INPUT", "FP32", (4,)), TensorSpec("TEXT", "BYTES", (1,)), TensorSpec("SEQ", "FP32", (-1,)))
SPECS_OUT = (TensorSpec("OUTPUT", "FP32", (3,)),)


@pytest.mark.parametrize("drift, field, reason", [
    ({"features": [{"input": "NOPE"}]}, "drift.features[0].input", "is not an input of the model"),
    ({"features": [{"input": "TEXT"}]}, "drift.features[0].input", "BYTES"),
    ({"features": [{"input": "SEQ"}]}, "drift.features[0].columns", "dynamic shape"),
    ({"features": [{"input": "INPUT", "columns": [4]}]}, "drift.features[0].columns", "outside the 4 values"),
    ({"outputs": [{"output": "INPUT"}]}, "drift.outputs[0].output", "not an output"),
    ({"page_hinkley": {"output": "OUTPUT", "column": 3}}, "drift.page_hinkley.column", "outside the 3 values"),
])
def test_streams_are_checked_against_the_model_at_load(drift, field, reason):
    with pytest.raises(ConfigError) as info:
        resolve_streams(DriftConfig.model_validate(drift), SPECS_IN, SPECS_OUT, FILE)
    assert (info.value.file, info.value.field) == (FILE, field)
    assert reason in info.value.reason


def test_stream_names():
    cfg = DriftConfig.model_validate({
        "features": [{"input": "INPUT"}, {"input": "SEQ", "columns": [2], "names": ["length"], "categorical": True}],
        "outputs": [{"output": "OUTPUT", "argmax": True}],
    })
    streams = resolve_streams(cfg, SPECS_IN, SPECS_OUT, FILE)
    assert [(s.name, s.column, s.categorical) for s in streams] == [
        ("INPUT_0", 0, False), ("INPUT_1", 1, False), ("INPUT_2", 2, False), ("INPUT_3", 3, False),
        ("length", 2, True), ("OUTPUT_argmax", -1, True),
    ]
