"""Server settings: flag (overrides) > environment (GATEWAY_*) > file > default."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.core.errors import ConfigError
from gateway.core.settings import ENV_PREFIX, FIELDS, ServerSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No GATEWAY_* variable from the outer environment leaks into a test."""
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str, name: str = "gateway.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def config_error(*args, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(*args, **kwargs)
    err = info.value
    assert str(err) == f"{err.file}: {err.field}: {err.reason}"
    return err


# ---------------------------------------------------------------- precedence


def test_defaults():
    s = load_settings()
    assert s == ServerSettings()
    assert s.host == "0.0.0.0"
    assert (s.http_port, s.grpc_port) == (8000, 8001)
    assert s.model_repository == "examples/models"
    assert s.repository_poll_s == 2.0
    assert s.max_request_bytes == 64 * 1024 * 1024
    assert s.grace_period_s == 30.0
    assert s.log_level == "info"


def test_file_beats_default(tmp_path):
    path = write(tmp_path, "http_port: 9000\nlog_level: debug\nrepository_poll_s: 0.5\n")
    s = load_settings(path)
    assert s.http_port == 9000
    assert s.log_level == "debug"
    assert s.repository_poll_s == 0.5
    assert s.grpc_port == 8001  # untouched fields keep their default


@pytest.mark.parametrize("text", ["", "# nothing\n"])
def test_empty_file_serves_defaults(tmp_path, text):
    assert load_settings(write(tmp_path, text)) == ServerSettings()


def test_env_beats_file(tmp_path, monkeypatch):
    path = write(tmp_path, "http_port: 9000\ngrpc_port: 9001\n")
    monkeypatch.setenv("GATEWAY_HTTP_PORT", "9100")
    s = load_settings(path)
    assert s.http_port == 9100
    assert s.grpc_port == 9001


def test_env_beats_default_and_is_coerced(monkeypatch):
    monkeypatch.setenv("GATEWAY_GRACE_PERIOD_S", "1.5")
    monkeypatch.setenv("GATEWAY_MODEL_REPOSITORY", "/srv/models")
    monkeypatch.setenv("GATEWAY_LOG_LEVEL", "warning")
    s = load_settings()
    assert s.grace_period_s == 1.5
    assert s.model_repository == "/srv/models"
    assert s.log_level == "warning"


def test_flag_beats_env_and_file(tmp_path, monkeypatch):
    path = write(tmp_path, "http_port: 9000\ngrpc_port: 9001\nhost: 10.0.0.1\n")
    monkeypatch.setenv("GATEWAY_HTTP_PORT", "9100")
    monkeypatch.setenv("GATEWAY_GRPC_PORT", "9101")
    s = load_settings(path, {"http_port": 9200, "grpc_port": None})
    assert s.http_port == 9200  # flag
    assert s.grpc_port == 9101  # flag not given (None): environment
    assert s.host == "10.0.0.1"  # file
    assert s.log_level == "info"  # default


def test_every_field_follows_the_precedence(tmp_path, monkeypatch):
    values = {
        "host": ("file.example", "env.example", "flag.example"),
        "http_port": (1001, 1002, 1003),
        "grpc_port": (2001, 2002, 2003),
        "model_repository": ("/file", "/env", "/flag"),
        "repository_poll_s": (1.25, 2.5, 3.75),
        "max_request_bytes": (4096, 8192, 16384),
        "grace_period_s": (4.0, 5.0, 6.0),
        "log_level": ("debug", "warning", "error"),
        "workers": (2, 3, 4),
        "gil_switch_interval_us": (500, 1000, 2000),
        "gc_threshold": (0, 5000, 50000),
        "grpc_transport": ("grpcio", "native", "grpcio"),
        "log_format": ("json", "text", "json"),
        "log_levels": ("gateway.a=debug", "gateway.b=info", "gateway.c=error"),
        "tracing": ("on", "off", "auto"),
        "trace_sample_ratio": (0.25, 0.5, 0.75),
        "admin_token": ("file-token", "env-token", "flag-token"),
        "api_keys": ("file-key", "env-key,sha256:abababababababababababababababababababababababababababababababab", "flag-key"),
        "cache_url": ("redis://file:6379/0", "redis://env:6379/1", "unix:///flag.sock"),
        "state_url": ("redis://file:6379/2", "rediss://env:6380/0", "unix:///state.sock"),
        "cache_timeout_ms": (1.5, 2.5, 3.5),
        "registry_url": ("http://file:5000", "http://env:5000", "https://flag"),
        "registry_models": ("a", "b=c", "d,e"),
        "registry_poll_s": (1.5, 2.5, 3.5),
        "registry_backoff_max_s": (10.0, 20.0, 30.0),
        "registry_jitter": (0.1, 0.2, 0.3),
        "registry_timeout_s": (1.0, 2.0, 3.0),
        "registry_report_s": (0.0, 5.0, 6.0),
        "registry_experiment": ("file-exp", "env-exp", "flag-exp"),
        "registry_token": ("file-token", "env-token", "flag-token"),
        "max_tensor_elements": (1000, 2000, 3000),
        "max_request_rows": (10, 20, 30),
        "max_concurrent_requests": (0, 5, 6),
        "max_header_bytes": (1024, 2048, 4096),
        "header_timeout_s": (1.0, 2.0, 3.0),
        "idle_timeout_s": (10.0, 20.0, 30.0),
        "tls_handshake_timeout_s": (4.0, 5.0, 6.0),
        "allow_client_shm": (True, False, True),
    }
    pem = {}
    for field in ("tls_cert_file", "tls_key_file", "tls_ca_file"):  # must exist; contents are read by the daemon
        files = tuple(tmp_path / f"{field}-{source}.pem" for source in ("file", "env", "flag"))
        for f in files:
            f.write_text("-")
        pem[field] = tuple(str(f) for f in files)
    values.update(pem)
    assert set(values) == set(FIELDS), "a new settings field needs a row here"
    path = write(tmp_path, "".join(f"{k}: {v[0]}\n" for k, v in values.items()))
    assert load_settings(path).model_dump() == {k: v[0] for k, v in values.items()}
    for k, v in values.items():
        monkeypatch.setenv(ENV_PREFIX + k.upper(), str(v[1]))
    assert load_settings(path).model_dump() == {k: v[1] for k, v in values.items()}
    assert load_settings(path, {k: v[2] for k, v in values.items()}).model_dump() == {
        k: v[2] for k, v in values.items()
    }


def test_config_file_from_env(tmp_path, monkeypatch):
    path = write(tmp_path, "grpc_port: 7001\n")
    monkeypatch.setenv("GATEWAY_CONFIG", path)
    assert load_settings().grpc_port == 7001
    # An explicit --config wins over GATEWAY_CONFIG.
    other = write(tmp_path, "grpc_port: 7002\n", name="other.yaml")
    assert load_settings(other).grpc_port == 7002


def test_settings_are_frozen():
    s = load_settings()
    with pytest.raises(Exception):  # pydantic ValidationError on a frozen model
        s.http_port = 1  # type: ignore[misc]


# ---------------------------------------------------------------- errors name source and field


def test_invalid_value_in_file_names_the_file(tmp_path):
    path = write(tmp_path, "http_port: 70000\n")
    err = config_error(path)
    assert err.file == path
    assert err.field == "http_port"
    assert "less than or equal to 65535" in err.reason


def test_invalid_literal_in_file(tmp_path):
    path = write(tmp_path, "log_level: verbose\n")
    err = config_error(path)
    assert (err.file, err.field) == (path, "log_level")
    assert "'debug', 'info', 'warning' or 'error'" in err.reason


def test_unknown_field_in_file_is_rejected(tmp_path):
    path = write(tmp_path, "http_port: 9000\nhttp_prot: 9001\n")
    err = config_error(path)
    assert (err.file, err.field, err.reason) == (path, "http_prot", "unknown field")


def test_invalid_env_value_names_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GATEWAY_GRPC_PORT", "not-a-port")
    err = config_error()
    assert (err.file, err.field) == ("environment", "grpc_port")
    assert "valid integer" in err.reason

    # Still the environment's fault when a file is in use too.
    path = write(tmp_path, "http_port: 9000\n")
    err = config_error(path)
    assert (err.file, err.field) == ("environment", "grpc_port")


def test_invalid_env_range(monkeypatch):
    monkeypatch.setenv("GATEWAY_MAX_REQUEST_BYTES", "10")
    err = config_error()
    assert (err.file, err.field) == ("environment", "max_request_bytes")
    assert "greater than or equal to 1024" in err.reason


def test_env_fixes_a_bad_file_value(tmp_path, monkeypatch):
    path = write(tmp_path, "http_port: 70000\n")
    monkeypatch.setenv("GATEWAY_HTTP_PORT", "9000")
    assert load_settings(path).http_port == 9000


def test_unrelated_env_variables_are_ignored(monkeypatch):
    monkeypatch.setenv("GATEWAY_HTTP_PROT", "1")
    assert load_settings() == ServerSettings()


def test_missing_file_names_the_file(tmp_path):
    path = str(tmp_path / "absent.yaml")
    err = config_error(path)
    assert (err.file, err.field) == (path, "(file)")
    assert "No such file" in err.reason


def test_invalid_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "http_port: [1, 2\n")
    err = config_error(path)
    assert (err.file, err.field) == (path, "(file)")


def test_non_mapping_file(tmp_path):
    path = write(tmp_path, "- http_port\n- 9000\n")
    err = config_error(path)
    assert (err.file, err.field, err.reason) == (path, "(file)", "expected a mapping at the top level")


def test_invalid_flag_is_not_blamed_on_env_or_file(tmp_path, monkeypatch):
    path = write(tmp_path, "http_port: 9000\n")
    err = config_error(path, {"http_port": 70000})
    assert err.field == "http_port"
    assert err.file == "command line (--http-port)"
    monkeypatch.setenv("GATEWAY_HTTP_PORT", "9100")
    err = config_error(path, {"http_port": 70000})
    assert err.file not in (path, "environment", "defaults")


# ---------------------------------------------------------------- CLI help


def test_serve_help_lists_every_field_with_its_env_variable():
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env["COLUMNS"] = "100"
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--help"],
        cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    # Split the options section into one entry per flag.
    entries: dict[str, str] = {}
    for m in re.finditer(r"^\s{2}(--[a-z-]+)(.*?)(?=^\s{2}-|\Z)", text, flags=re.M | re.S):
        entries[m.group(1)] = " ".join(m.group(2).split())
    assert "--config" in entries and "GATEWAY_CONFIG" in entries["--config"]
    for name, field in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        assert flag in entries, f"{flag} missing from serve --help:\n{text}"
        assert f"env {ENV_PREFIX}{name.upper()}" in entries[flag], entries[flag]
        assert f"default {field.default!r}" in entries[flag], entries[flag]
    assert set(entries) >= {"--config"} | {"--" + n.replace("_", "-") for n in FIELDS}


def test_cache_url_must_name_a_redis_scheme(tmp_path):
    assert load_settings().cache_url == ""
    assert load_settings(overrides={"cache_url": "redis://127.0.0.1:6379/0"}).cache_url.startswith("redis://")
    with pytest.raises(ConfigError) as err:
        load_settings(overrides={"cache_url": "http://127.0.0.1:6379"})
    assert err.value.field == "cache_url" and "--cache-url" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_settings(overrides={"cache_timeout_ms": 0})
    assert err.value.field == "cache_timeout_ms"


def test_state_url_must_name_a_redis_scheme(monkeypatch):
    assert load_settings().state_url == ""
    monkeypatch.setenv("GATEWAY_STATE_URL", "redis://:pw@redis:6379/0")
    assert load_settings().state_url == "redis://:pw@redis:6379/0"
    monkeypatch.setenv("GATEWAY_STATE_URL", "memcached://redis:11211")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert err.value.field == "state_url" and "environment" in str(err.value)


def test_gil_switch_interval_is_applied_to_the_interpreter():
    import sys

    before = sys.getswitchinterval()
    try:
        ServerSettings(gil_switch_interval_us=500).apply_to_interpreter()
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(before)
    with pytest.raises(ValueError):
        ServerSettings(gil_switch_interval_us=10)
