"""The Kubernetes manifests of deploy/kubernetes, offline: every built-in object passes
``kubernetes-validate``'s strict schema check (unknown fields rejected) for the oldest and
newest Kubernetes versions we claim; the objects fit together (selectors, probe ports,
the autoscaler's target and metric); the worker drains before its pod is removed. KEDA's
ScaledObject is a custom resource, not in kubernetes-validate's schemas: its fields are
checked here against what KEDA's Prometheus scaler reads."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.conftest import IN_CI
from tests.helpers import ROOT

try:
    import kubernetes_validate
except ImportError:  # the test extra brings it: missing in CI is a failure
    if IN_CI:
        raise
    pytest.skip("kubernetes-validate is not installed (pip install '.[test]')",
                allow_module_level=True)

pytestmark = pytest.mark.sqlite_only

MANIFESTS = ROOT / "deploy" / "kubernetes"
VERSIONS = ["1.30.0", "1.37.0"]
METRICS_SOURCE = (ROOT / "edge_kombu" / "server" / "metrics.py").read_text()


def objects() -> list[dict]:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    found = []
    for name in kustomization["resources"]:
        found += [doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]
    listed = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == set(kustomization["resources"]), "a manifest not in kustomization.yaml"
    return found


def one(kind: str, name: str) -> dict:
    [found] = [o for o in objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize("version", VERSIONS)
def test_built_in_objects_pass_the_strict_schema(version):
    checked = []
    for obj in objects():
        if obj["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(obj, version, strict=True)  # raises on any error
        checked.append(obj["kind"])
    assert sorted(checked) == ["Deployment", "Deployment", "Ingress", "PodDisruptionBudget",
                               "Service"]


def test_the_schema_check_can_fail():
    deployment = one("Deployment", "edge-kombu-api")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"][
        "pathh"] = "/api/v1/health"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)


def test_api_probes_service_and_disruption_budget_fit_the_pods():
    deployment = one("Deployment", "edge-kombu-api")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["replicas"] >= 2
    [container] = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert f"0.0.0.0:{ports['http']}" in container["command"]
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/api/v1/health" and get["port"] in ports, probe
    service = one("Service", "edge-kombu-api")
    assert service["spec"]["selector"] == labels
    assert service["spec"]["ports"][0]["targetPort"] in ports
    budget = one("PodDisruptionBudget", "edge-kombu-api")
    assert budget["spec"]["selector"]["matchLabels"] == labels
    assert 1 <= budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    ingress = one("Ingress", "edge-kombu-api")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    notes = ingress["metadata"]["annotations"]
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 60  # longest wait
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"


def test_worker_drains_before_its_pod_goes():
    deployment = one("Deployment", "edge-kombu-worker")
    spec = deployment["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["command"][:4] == ["celery", "-A", "edge_kombu", "worker"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    pre_stop = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    assert "celery -A edge_kombu edge stop --wait --drain-timeout" in pre_stop
    assert spec["terminationGracePeriodSeconds"] >= int(env["EDGE_KOMBU_DRAIN_TIMEOUT"]) + 30
    assert "EDGE_KOMBU_TOKEN_FILE" in env and "EDGE_KOMBU_TOKEN" not in env


def test_keda_scales_the_worker_on_the_queue_depth_metric():
    scaled = one("ScaledObject", "edge-kombu-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    worker = one("Deployment", "edge-kombu-worker")
    assert (target["kind"], target["name"]) == ("Deployment", worker["metadata"]["name"])
    assert 0 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert set(meta) <= {"serverAddress", "query", "threshold", "activationThreshold",
                         "namespace", "ignoreNullValues", "unsafeSsl"}, meta
    assert meta["serverAddress"].startswith("http")
    float(meta["threshold"])  # KEDA wants a string holding a number
    assert isinstance(meta["threshold"], str)
    # The metrics it reads are the API's (the queue gauges of server/metrics.py), for the
    # queue the workers consume.
    metrics = set(re.findall(r"\b(edge_kombu_\w+)\{", meta["query"]))
    assert metrics and all(f'"{m}"' in METRICS_SOURCE for m in metrics), metrics
    queues = set(re.findall(r'queue="([^"]+)"', meta["query"]))
    command = worker["spec"]["template"]["spec"]["containers"][0]["command"]
    assert queues == {command[command.index("-Q") + 1]}
    # Slots of one worker per replica.
    assert float(meta["threshold"]) == float(command[command.index("-c") + 1])
