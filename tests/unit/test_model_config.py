"""Per-model configuration (models/<name>/model.yaml): defaults, validation, version policy."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.core.errors import ConfigError
from gateway.core.model_config import (
    CONFIG_FILENAME,
    ModelConfig,
    VersionPolicy,
    all_errors,
    cross_field_problems,
    load_model_config,
    parse_model_config,
)

FILE = "models/resnet/model.yaml"


def parse(raw, name: str = "resnet") -> ModelConfig:
    return parse_model_config(raw, file=FILE, default_name=name)


def parse_error(raw, name: str = "resnet") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(raw, name)
    err = info.value
    assert err.file == FILE
    assert str(err) == f"{FILE}: {err.field}: {err.reason}"
    return err


def model_dir(tmp_path: Path, text: str | None, name: str = "resnet") -> Path:
    directory = tmp_path / name
    directory.mkdir()
    if text is not None:
        (directory / CONFIG_FILENAME).write_text(text, encoding="utf-8")
    return directory


TENSOR = {"name": "x", "datatype": "FP32", "shape": [-1, 3]}


# ---------------------------------------------------------------- defaults


def _assert_defaults(cfg: ModelConfig, name: str) -> None:
    assert cfg.name == name
    assert cfg.backend == "onnxruntime"
    assert cfg.providers == ("cpu",)
    assert cfg.inputs == () and cfg.outputs == ()
    assert cfg.max_batch_size is None
    assert cfg.instances == 1
    assert cfg.intra_op_threads == 1
    assert cfg.default_model_filename == "model.onnx"
    db = cfg.dynamic_batching
    assert db.preferred_batch_sizes == ()
    assert db.max_queue_delay_us == 0
    assert db.max_queue_size == 1024
    assert db.priority_levels == 1 and db.default_priority == 1
    assert db.default_timeout_us == 0
    assert db.timeout_action == "reject"
    assert db.allow_timeout_override is True
    assert cfg.version_policy == VersionPolicy()
    assert cross_field_problems(cfg) == []


@pytest.mark.parametrize("raw", [None, {}], ids=["empty-document", "empty-mapping"])
def test_empty_document_serves_defaults(raw):
    _assert_defaults(parse(raw), "resnet")


@pytest.mark.parametrize("text", [None, "", "# only a comment\n"], ids=["missing", "empty", "comment"])
def test_missing_or_empty_file_serves_defaults(tmp_path, text):
    _assert_defaults(load_model_config(str(model_dir(tmp_path, text))), "resnet")


def test_model_dir_with_trailing_slash_takes_its_name(tmp_path):
    directory = model_dir(tmp_path, None, name="text-embed")
    assert load_model_config(str(directory) + "/").name == "text-embed"


def test_full_file_round_trips(tmp_path):
    doc = {
        "name": "resnet",
        "backend": "tensorrt",
        "providers": ["tensorrt", "cuda"],
        "inputs": [TENSOR, {"name": "y", "datatype": "BYTES", "shape": [1], "ragged": True, "pad_value": 2}],
        "outputs": [{"name": "z", "datatype": "INT64", "shape": [-1]}],
        "max_batch_size": 16,
        "dynamic_batching": {
            "preferred_batch_sizes": [8, 4, 8],
            "max_queue_delay_us": 500,
            "max_queue_size": 10,
            "priority_levels": 3,
            "default_priority": 2,
            "default_timeout_us": 1000,
            "timeout_action": "delay",
            "allow_timeout_override": False,
        },
        "instances": 2,
        "intra_op_threads": 4,
        "version_policy": {"specific": [1, 3]},
        "default_model_filename": "model.plan",
    }
    cfg = load_model_config(str(model_dir(tmp_path, yaml.safe_dump(doc))))
    assert cfg.backend == "tensorrt"
    assert cfg.providers == ("tensorrt", "cuda")
    assert [t.name for t in cfg.inputs] == ["x", "y"]
    assert cfg.inputs[0].shape == (-1, 3)
    assert cfg.inputs[1].ragged is True and cfg.inputs[1].pad_value == 2.0
    assert cfg.outputs[0].datatype == "INT64"
    assert cfg.max_batch_size == 16
    # preferred sizes are de-duplicated and sorted
    assert cfg.dynamic_batching.preferred_batch_sizes == (4, 8)
    assert cfg.dynamic_batching.timeout_action == "delay"
    assert cfg.dynamic_batching.default_priority == 2
    assert cfg.version_policy.specific == (1, 3)
    assert cfg.default_model_filename == "model.plan"
    assert all_errors(str(tmp_path / "resnet")) == []


# ---------------------------------------------------------------- one error: file, field path, reason


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        ({"dynamic_batching": {"max_queue_size": 0}}, "dynamic_batching.max_queue_size", "greater than or equal to 1"),
        ({"dynamic_batching": {"max_queue_delay_us": -1}}, "dynamic_batching.max_queue_delay_us", "greater than or equal to 0"),
        ({"dynamic_batching": {"priority_levels": 17}}, "dynamic_batching.priority_levels", "less than or equal to 16"),
        ({"dynamic_batching": {"timeout_action": "drop"}}, "dynamic_batching.timeout_action", "'reject' or 'delay'"),
        ({"dynamic_batching": {"preferred_batch_sizes": [4, 0]}}, "dynamic_batching.preferred_batch_sizes", "batch sizes must be >= 1"),
        ({"dynamic_batching": {"default_priority": 3}}, "dynamic_batching", "default_priority 3 exceeds priority_levels 1"),
        ({"inputs": [TENSOR, {"name": "y", "datatype": "FLOAT", "shape": [1]}]}, "inputs[1].datatype", "unknown datatype 'FLOAT'"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 0]}]}, "inputs[0].shape", "dimension 0 is invalid"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, -2]}]}, "inputs[0].shape", "dimension -2 is invalid"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, "a"]}]}, "inputs[0].shape[1]", "valid integer"),
        ({"inputs": [{"name": "", "datatype": "FP32", "shape": [1]}]}, "inputs[0].name", "at least 1 character"),
        ({"outputs": [{"name": "z", "shape": [1]}]}, "outputs[0].datatype", "Field required"),
        ({"version_policy": {"latest": 1, "all": True}}, "version_policy", "set only one of latest, all, specific"),
        ({"version_policy": {"all": True, "specific": [1]}}, "version_policy", "set only one of latest, all, specific"),
        ({"version_policy": {"latest": 0}}, "version_policy.latest", "greater than or equal to 1"),
        ({"backend": "tensorflow"}, "backend", "'onnxruntime' or 'tensorrt'"),
        ({"providers": []}, "providers", "at least one provider is required"),
        ({"providers": ["cpu", "rocm"]}, "providers[1]", "'cpu', 'cuda' or 'tensorrt'"),
        ({"max_batch_size": -1}, "max_batch_size", "greater than or equal to 0"),
        ({"instances": 0}, "instances", "greater than or equal to 1"),
        ({"intra_op_threads": 257}, "intra_op_threads", "less than or equal to 256"),
        ({"cache": {"ttl_s": 0}}, "cache.ttl_s", "greater than 0"),
        ({"cache": {"max_bytes": -1}}, "cache.max_bytes", "greater than or equal to 0"),
        ({"cache": {"exact": "sometimes"}}, "cache.exact", "valid boolean"),
        ({"cache": {"semantic": {"threshold": 1.5}}}, "cache.semantic.threshold", "less than or equal to 1"),
        ({"cache": {"semantic": {"max_entries": 0}}}, "cache.semantic.max_entries", "greater than or equal to 1"),
        ({"generation": {"kv_cache": "gpu"}}, "generation.kv_cache", "'auto', 'host' or 'device'"),
    ],
)
def test_invalid_field_names_file_field_and_reason(raw, field, reason):
    err = parse_error(raw)
    assert err.field == field
    assert reason in err.reason
    assert not err.reason.startswith("Value error"), err.reason


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"max_batch_sise": 8}, "max_batch_sise"),
        ({"dynamic_batching": {"max_queue_delay_ms": 5}}, "dynamic_batching.max_queue_delay_ms"),
        ({"inputs": [TENSOR, {**TENSOR, "name": "y", "dims": [1]}]}, "inputs[1].dims"),
        ({"version_policy": {"newest": 2}}, "version_policy.newest"),
        ({"cache": {"exact": True, "ttl": 5}}, "cache.ttl"),
        ({"cache": {"semantic": {"treshold": 0.9}}}, "cache.semantic.treshold"),
    ],
)
def test_unknown_field_is_rejected(raw, field):
    err = parse_error(raw)
    assert err.field == field
    assert err.reason == "unknown field"


def test_name_must_match_directory():
    err = parse_error({"name": "resnet50"}, name="resnet")
    assert err.field == "name"
    assert "'resnet50'" in err.reason and "'resnet'" in err.reason
    assert parse({"name": "resnet"}).name == "resnet"


@pytest.mark.parametrize(
    ("raw", "kind"), [([1, 2], "list"), ("just text", "str"), (3, "int")]
)
def test_top_level_must_be_a_mapping(raw, kind):
    err = parse_error(raw)
    assert err.field == "(file)"
    assert "mapping" in err.reason and kind in err.reason


def test_cross_field_problems_are_reported():
    err = parse_error({"max_batch_size": 4, "dynamic_batching": {"preferred_batch_sizes": [2, 8, 16]}})
    assert err.field == "dynamic_batching.preferred_batch_sizes"
    assert err.reason == "sizes [8, 16] exceed max_batch_size 4"

    err = parse_error({"inputs": [TENSOR, {**TENSOR, "name": "y"}, TENSOR]})
    assert err.field == "inputs[2].name"
    assert err.reason == "duplicate name 'x'"


def test_kv_cache_on_the_device_needs_onnxruntime():
    assert parse({"generation": {"kv_cache": "device"}}).generation.kv_cache == "device"
    err = parse_error({"backend": "tensorrt", "generation": {"kv_cache": "device"}})
    assert err.field == "generation.kv_cache"
    assert err.reason == "'device' needs backend onnxruntime (this model's is tensorrt)"
    assert parse({"backend": "tensorrt", "generation": {}}).generation.kv_cache == "auto"


def test_cross_field_problems_direct():
    ok = ModelConfig(name="m", max_batch_size=0, dynamic_batching={"preferred_batch_sizes": [64]})
    assert cross_field_problems(ok) == []  # max_batch_size 0: no batching, sizes are not compared
    unset = ModelConfig(name="m", dynamic_batching={"preferred_batch_sizes": [64]})
    assert cross_field_problems(unset) == []
    bad = ModelConfig(
        name="m",
        max_batch_size=8,
        dynamic_batching={"preferred_batch_sizes": [4, 16]},
        outputs=[{**TENSOR, "name": "o"}, {**TENSOR, "name": "o"}],
    )
    assert cross_field_problems(bad) == [
        ("dynamic_batching.preferred_batch_sizes", "sizes [16] exceed max_batch_size 8"),
        ("outputs[1].name", "duplicate name 'o'"),
    ]


def test_load_invalid_yaml_names_the_file(tmp_path):
    directory = model_dir(tmp_path, "inputs: [unclosed\n  name: x\n")
    with pytest.raises(ConfigError) as info:
        load_model_config(str(directory))
    err = info.value
    assert err.file == str(directory / CONFIG_FILENAME)
    assert err.field == "(file)"
    assert err.reason.startswith("not valid YAML")


def test_load_error_names_the_file_and_field(tmp_path):
    directory = model_dir(tmp_path, "dynamic_batching:\n  max_queue_size: 0\n")
    with pytest.raises(ConfigError) as info:
        load_model_config(str(directory))
    assert info.value.file == str(directory / CONFIG_FILENAME)
    assert info.value.field == "dynamic_batching.max_queue_size"
    assert str(directory / CONFIG_FILENAME) in str(info.value)
    assert "dynamic_batching.max_queue_size" in str(info.value)


def test_load_rejects_a_list_document(tmp_path):
    directory = model_dir(tmp_path, "- name: resnet\n")
    with pytest.raises(ConfigError, match=r"\(file\): expected a mapping at the top level, got list"):
        load_model_config(str(directory))


def test_config_objects_are_frozen():
    cfg = parse({})
    with pytest.raises(Exception):  # pydantic ValidationError on a frozen model
        cfg.instances = 3  # type: ignore[misc]


# ---------------------------------------------------------------- all_errors


def test_all_errors_lists_every_problem_at_once(tmp_path):
    doc = {
        "name": "other",
        "instances": 0,
        "colour": "blue",
        "inputs": [TENSOR, {"name": "y", "datatype": "FLOAT", "shape": [1]}],
        "dynamic_batching": {"max_queue_size": 0, "timeout_action": "drop"},
    }
    directory = model_dir(tmp_path, yaml.safe_dump(doc))
    path = str(directory / CONFIG_FILENAME)
    errors = all_errors(str(directory))
    assert all(isinstance(e, ConfigError) and e.file == path for e in errors)
    by_field = {e.field: e.reason for e in errors}
    assert set(by_field) == {
        "name",
        "instances",
        "colour",
        "inputs[1].datatype",
        "dynamic_batching.max_queue_size",
        "dynamic_batching.timeout_action",
    }
    assert by_field["colour"] == "unknown field"
    assert "must match the model's directory 'resnet'" in by_field["name"]
    assert by_field["inputs[1].datatype"].startswith("unknown datatype 'FLOAT'")


def test_all_errors_includes_cross_field_problems(tmp_path):
    doc = {"max_batch_size": 2, "dynamic_batching": {"preferred_batch_sizes": [4]}, "outputs": [TENSOR, TENSOR]}
    errors = all_errors(str(model_dir(tmp_path, yaml.safe_dump(doc))))
    assert [(e.field, e.reason) for e in errors] == [
        ("dynamic_batching.preferred_batch_sizes", "sizes [4] exceed max_batch_size 2"),
        ("outputs[1].name", "duplicate name 'x'"),
    ]


def test_all_errors_agrees_with_load_on_the_first_problem(tmp_path):
    directory = model_dir(tmp_path, "instances: 0\nbogus: 1\n")
    with pytest.raises(ConfigError) as info:
        load_model_config(str(directory))
    errors = all_errors(str(directory))
    assert len(errors) == 2
    assert (errors[0].file, errors[0].field, errors[0].reason) == (
        info.value.file, info.value.field, info.value.reason,
    )


@pytest.mark.parametrize("text", ["", "{}\n"], ids=["empty", "empty-mapping"])
def test_all_errors_on_a_good_file_is_empty(tmp_path, text):
    assert all_errors(str(model_dir(tmp_path, text))) == []


def test_all_errors_invalid_yaml(tmp_path):
    directory = model_dir(tmp_path, "a: [1, 2\n")
    (err,) = all_errors(str(directory))
    assert err.file == str(directory / CONFIG_FILENAME)
    assert err.field == "(file)"
    assert err.reason.startswith("not valid YAML")


def test_all_errors_non_mapping(tmp_path):
    (err,) = all_errors(str(model_dir(tmp_path, "- 1\n- 2\n")))
    assert err.field == "(file)"
    assert "mapping" in err.reason


def test_all_errors_missing_file_is_not_an_error(tmp_path):
    directory = model_dir(tmp_path, None)
    load_model_config(str(directory))  # serves defaults
    assert all_errors(str(directory)) == []


# ---------------------------------------------------------------- VersionPolicy


@pytest.mark.parametrize(
    ("policy", "available", "selected"),
    [
        ({}, [3, 1, 2], [3]),
        ({}, [], []),
        ({"latest": 1}, [1, 2, 10], [10]),
        ({"latest": 2}, [5, 1, 3, 4], [4, 5]),
        ({"latest": 5}, [2, 1], [1, 2]),
        ({"all": True}, [3, 1, 2], [1, 2, 3]),
        ({"all": True}, [], []),
        ({"all": False, "latest": 2}, [1, 2, 3], [2, 3]),
        ({"specific": [1, 3]}, [3, 2, 1], [1, 3]),
        ({"specific": [4, 2]}, [1, 2, 3], [2]),
        ({"specific": [7]}, [1, 2], []),
    ],
)
def test_version_policy_select(policy, available, selected):
    vp = VersionPolicy.model_validate(policy)
    assert vp.select(list(available)) == selected


def test_version_policy_select_does_not_mutate_its_argument():
    available = [3, 1, 2]
    VersionPolicy(all=True).select(available)
    assert available == [3, 1, 2]


def test_version_policy_from_model_yaml(tmp_path):
    cfg = load_model_config(str(model_dir(tmp_path, "version_policy:\n  latest: 2\n")))
    assert cfg.version_policy.select([1, 2, 3]) == [2, 3]


def test_cache_section_defaults_and_values():
    cfg = parse_model_config({}, file="m/model.yaml", default_name="m")
    assert cfg.cache.exact is False and cfg.cache.semantic.enabled is False
    assert cfg.cache.ttl_s == 300 and cfg.cache.max_bytes == 64 * 1024 * 1024
    assert cfg.cache.semantic.threshold == 0.92 and cfg.cache.semantic.allow_sampling is False
    cfg = parse_model_config(
        {"cache": {"exact": True, "ttl_s": 2.5, "max_bytes": 0, "semantic": {"enabled": True, "threshold": 0.97}}},
        file="m/model.yaml",
        default_name="m",
    )
    assert cfg.cache.exact and cfg.cache.ttl_s == 2.5 and cfg.cache.max_bytes == 0
    assert cfg.cache.semantic.enabled and cfg.cache.semantic.threshold == 0.97
