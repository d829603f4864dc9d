"""The registry client's parts that need no server: alias assignment, model.yaml writing, backoff,
state-change logging, interval metrics, URI resolution, settings."""

from __future__ import annotations

import asyncio
import logging
import random

import numpy as np
import pytest
import yaml

from gateway.core.errors import ConfigError
from gateway.core.model_config import load_model_config
from gateway.core.registry_config import RegistryModelConfig
from gateway.core.settings import load_settings
from gateway.registry import local_files
from gateway.registry.assignment import assign, managed_doc
from gateway.registry.health import Backoff, RegistryHealth
from gateway.registry.mlflow_client import ArtifactLocation, MlflowClient, RegistryError, safe_join
from gateway.registry.reporting import VersionSnapshot, interval_metrics, metric_key
from gateway.registry.sources import service_source


def reg(**kw) -> RegistryModelConfig:
    return RegistryModelConfig.model_validate(kw)


# -- registry section ------------------------------------------------------------------------------


def test_registry_section_defaults_champion_live_challenger_canary():
    cfg = reg()
    assert cfg.live_alias == "champion"
    assert cfg.aliases["challenger"].role == "canary" and cfg.aliases["challenger"].weight == 10


@pytest.mark.parametrize("raw, message", [
    ({"aliases": {"a": {"role": "live"}, "b": {"role": "live"}}}, "exactly one alias must have role 'live'"),
    ({"aliases": {"a": {"role": "canary"}}}, "exactly one alias must have role 'live'"),
    ({"aliases": {"a": {"role": "live"}, "b": {"role": "canary", "weight": 60}, "c": {"role": "canary", "weight": 40}}},
     "canary weights add up to 100.0%"),
    ({"routing": {"weights": {1: 1}}}, "set from the aliases"),
    ({"routing": {"fallback": 1}}, "set from the aliases"),
    ({"routing": {"shadows": [{"version": 2}]}}, "come from aliases with role 'shadow'"),
    ({"aliases": {"champion": {"role": "live"}}, "routing": {"rollback": {"max_error_rate": 0.1}}}, "guards a canary"),
    ({"aliases": {"champion": {"role": "boss"}}}, "role"),
    ({"model_nam": "x"}, "model_nam"),
])
def test_registry_section_errors_name_the_field(tmp_path, raw, message):
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.yaml").write_text(yaml.safe_dump({"registry": raw}))
    with pytest.raises(ConfigError) as err:
        load_model_config(str(d))
    assert str(err.value).startswith(f"{d}/model.yaml: registry")
    assert message in str(err.value)


# -- assignment ---------------------------------------------------------------------------------


def test_live_only_serves_one_version_without_routing():
    a = assign(reg(), {"champion": 3, "challenger": None})
    assert a.versions == [3]
    doc = managed_doc({"max_batch_size": 8, "version_policy": {"latest": 2}}, None, reg(), a)
    assert doc == {"max_batch_size": 8, "version_policy": {"specific": [3]}}


def test_no_live_alias_changes_nothing():
    assert assign(reg(), {"champion": None, "challenger": 4}) is None


def test_canary_gets_its_weight_and_falls_back_to_live():
    cfg = reg(aliases={"champion": {"role": "live"}, "challenger": {"role": "canary", "weight": 25}},
              routing={"sticky_key_parameter": "user", "rollback": {"max_error_rate": 0.2}})
    a = assign(cfg, {"champion": 2, "challenger": 5})
    doc = managed_doc({}, {"raw": True}, cfg, a)
    assert doc["registry"] == {"raw": True}
    assert doc["version_policy"] == {"specific": [2, 5]}
    r = doc["routing"]
    assert r["weights"] == {2: 75.0, 5: 25.0} and r["champion"] == 2 and r["fallback"] == 2
    assert r["sticky_key_parameter"] == "user" and r["rollback"]["max_error_rate"] == 0.2


def test_rollback_template_dropped_while_no_canary_is_set():
    cfg = reg(routing={"rollback": {"max_error_rate": 0.2}})
    assert "routing" not in managed_doc({}, None, cfg, assign(cfg, {"champion": 2}))
    cfg = reg(routing={"rollback": {"max_error_rate": 0.2}, "sticky_key_parameter": "user"})
    routing = managed_doc({}, None, cfg, assign(cfg, {"champion": 2}))["routing"]
    assert routing == {"sticky_key_parameter": "user", "weights": {2: 100.0}, "champion": 2}


def test_shadow_alias_and_same_version_under_two_aliases():
    cfg = reg(aliases={"champion": {"role": "live"}, "challenger": {"role": "canary", "weight": 10},
                       "candidate": {"role": "shadow", "fraction": 0.5}},
              routing={"shadows": [{"model": "other", "fraction": 0.1}]})
    # challenger == champion: no canary; candidate is a shadow
    a = assign(cfg, {"champion": 4, "challenger": 4, "candidate": 6})
    assert a.canaries == {} and a.shadows == {6: 0.5}
    routing = managed_doc({}, None, cfg, a)["routing"]
    assert routing["weights"] == {4: 100.0} and "fallback" not in routing
    assert routing["shadows"] == [{"model": "other", "fraction": 0.1}, {"version": 6, "fraction": 0.5}]
    # a version that is both canary and shadow is a canary
    a = assign(cfg, {"champion": 4, "challenger": 6, "candidate": 6})
    assert a.canaries == {6: 10.0} and a.shadows == {}


def test_written_model_yaml_is_a_valid_config(tmp_path):
    """What the client writes loads through the same validation as an operator's file."""
    d = tmp_path / "mlp"
    for v in (2, 5, 6):
        (d / str(v)).mkdir(parents=True)
        (d / str(v) / "model.onnx").write_bytes(b"")
    cfg = reg(aliases={"champion": {"role": "live"}, "challenger": {"role": "canary", "weight": 30},
                       "candidate": {"role": "shadow"}}, routing={"rollback": {"max_error_rate": 0.5}})
    raw = cfg.model_dump(mode="json", exclude_defaults=True)
    doc = managed_doc({"max_batch_size": 4}, raw, cfg, assign(cfg, {"champion": 2, "challenger": 5, "candidate": 6}))
    local_files.write_doc(str(d / "model.yaml"), doc)
    loaded = load_model_config(str(d))
    assert loaded.version_policy.select([1, 2, 5, 6]) == [2, 5, 6]
    assert loaded.routing.weights == {2: 70.0, 5: 30.0}
    assert loaded.registry == cfg
    assert (d / "model.yaml").read_text().startswith("# version_policy and routing are written")


# -- backoff and state-change logging ------------------------------------------------------------


def test_backoff_doubles_to_the_cap_with_jitter_below_nominal():
    b = Backoff(0.5, 4.0, 0.2, random.Random(1))
    nominal = []
    for _ in range(6):
        b.failed()
        nominal.append(b.nominal_s())
    assert nominal == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    waits = [b.next_wait_s() for _ in range(200)]
    assert 4.0 * 0.8 <= min(waits) < max(waits) <= 4.0
    b.succeeded()
    assert b.nominal_s() == 0.5


def test_outage_logged_once_per_state_change_and_counted_every_time(caplog):
    h = RegistryHealth()
    caplog.set_level(logging.INFO, logger="gateway.registry")
    h.polls += 1
    h.reached()
    for _ in range(5):
        h.polls += 1
        h.failed("poll", "connection refused")
    h.polls += 1
    h.reached()
    h.polls += 1
    h.reached()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("registry unavailable" in m for m in messages) == 1
    assert sum("reachable again after 5 failed poll(s)" in m for m in messages) == 1
    assert h.failures == {"poll": 5} and h.up is True


def test_model_problem_logged_when_it_changes(caplog):
    h = RegistryHealth()
    caplog.set_level(logging.INFO, logger="gateway.registry")
    for reason in ("no model.onnx", "no model.onnx", "other"):
        h.problem("m", "download", reason)
    assert h.failures == {"download": 3}
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        "registry: model m: no model.onnx", "registry: model m: other"]


# -- reporting -------------------------------------------------------------------------------------


def test_interval_metrics_are_deltas_and_restart_after_a_reload():
    a = VersionSnapshot("m", "1", success_count=10, success_ns=20_000_000, fail_count=0, queue_count=10,
                        queue_ns=5_000_000, compute_ns=8_000_000, inference_count=10, execution_count=4)
    b = VersionSnapshot("m", "1", success_count=28, success_ns=56_000_000, fail_count=2, queue_count=30,
                        queue_ns=15_000_000, compute_ns=16_000_000, inference_count=30, execution_count=8,
                        drift={"drift.age.psi": 0.25, "drift.a b/c:d.ks": 0.1})
    m = interval_metrics(b, a, seconds=2.0)
    assert m["serving.requests"] == 20 and m["serving.failures"] == 2
    assert m["serving.error_rate"] == pytest.approx(0.1)
    assert m["serving.requests_per_s"] == pytest.approx(10)
    assert m["serving.mean_request_ms"] == pytest.approx(2.0)
    assert m["serving.mean_queue_ms"] == pytest.approx(0.5)
    assert m["serving.mean_batch_size"] == pytest.approx(5)
    assert m["drift.age.psi"] == 0.25 and m["drift.a b/c_d.ks"] == 0.1
    reloaded = VersionSnapshot("m", "1", success_count=3, success_ns=3_000_000)
    assert interval_metrics(reloaded, b, seconds=1.0)["serving.requests"] == 3


def test_metric_keys_are_what_mlflow_accepts():
    assert metric_key("drift.feature[3].psi") == "drift.feature_3_.psi"
    assert metric_key("x" * 300) == "x" * 250


async def _snapshots(service):
    return await service_source(service)()


def test_service_source_reads_counters_and_drift_when_the_service_has_it(model_repo):
    """A real InferenceService on the example repository; drift_metrics as the drift branch adds it."""
    from gateway.core.types import InferRequest
    from gateway.service import InferenceService
    from gateway.service.models import ModelManager

    async def run():
        manager = ModelManager(str(model_repo))
        await manager.reconcile()
        service = InferenceService(manager)
        x = np.zeros((1, 64), np.float32)
        await service.infer(InferRequest(model="mlp", version="", inputs={"INPUT": x}, datatypes={"INPUT": "FP32"}))
        plain = {(s.model, s.version): s for s in await service_source(service)()}
        service.drift_metrics = lambda model, version: {"drift.INPUT.psi": 0.01} if model == "mlp" else {}
        with_drift = {(s.model, s.version): s for s in await service_source(service)()}
        await manager.close(5)
        return plain, with_drift

    plain, with_drift = asyncio.run(run())
    assert plain[("mlp", "1")].success_count == 1 and plain[("mlp", "1")].drift == {}
    assert with_drift[("mlp", "1")].drift == {"drift.INPUT.psi": 0.01}
    assert with_drift[("simple", "1")].drift == {}


# -- MLflow URIs and paths -------------------------------------------------------------------------


@pytest.mark.parametrize("uri, route, path", [
    ("mlflow-artifacts:/0/abc/artifacts/model", "http://reg:5000/api/2.0/mlflow-artifacts/artifacts", "0/abc/artifacts/model"),
    ("mlflow-artifacts://other:7000/1/x", "http://other:7000/api/2.0/mlflow-artifacts/artifacts", "1/x"),
    ("https://h/prefix/api/2.0/mlflow-artifacts/artifacts/2/y/", "https://h/prefix/api/2.0/mlflow-artifacts/artifacts", "2/y"),
])
def test_proxied_artifact_uris_resolve_without_a_call(uri, route, path):
    client = MlflowClient("http://reg:5000/", timeout_s=1)
    assert asyncio.run(client.resolve(uri)) == ArtifactLocation(route, path)


def test_unproxied_artifact_store_is_a_clear_error():
    client = MlflowClient("http://reg:5000", timeout_s=1)
    with pytest.raises(RegistryError, match="not served by the tracking server"):
        asyncio.run(client.resolve("s3://bucket/models/1"))


def test_artifact_paths_cannot_leave_the_version_folder(tmp_path):
    assert safe_join(str(tmp_path), "a/b.txt") == str(tmp_path / "a" / "b.txt")
    with pytest.raises(RegistryError, match="leaves"):
        safe_join(str(tmp_path), "../escape")


def test_client_repr_and_settings_never_show_the_token():
    client = MlflowClient("http://reg", timeout_s=1, token="s3cret")
    assert "s3cret" not in repr(client)
    settings = load_settings(None, {"registry_url": "http://reg/", "registry_token": "s3cret"})
    assert "s3cret" not in repr(settings) and settings.registry_url == "http://reg"


# -- settings ----------------------------------------------------------------------------------------


def test_registry_models_setting_forms(tmp_path):
    assert load_settings(None, {"registry_models": "a, b=fraud-detector"}).registry_model_names == {
        "a": "a", "b": "fraud-detector"}
    f = tmp_path / "gateway.yaml"
    f.write_text(yaml.safe_dump({"registry_models": {"mlp": "Fraud Model"}}))
    assert load_settings(str(f)).registry_model_names == {"mlp": "Fraud Model"}
    with pytest.raises(ConfigError, match="registry_models"):
        load_settings(None, {"registry_models": "=x"})


def test_registry_needs_repository_polling():
    with pytest.raises(ConfigError, match="repository_poll_s > 0"):
        load_settings(None, {"registry_url": "http://reg", "repository_poll_s": 0})
    with pytest.raises(ConfigError, match="registry_url"):
        load_settings(None, {"registry_url": "ftp://reg"})
