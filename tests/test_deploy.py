"""deploy/: the Kubernetes manifests parse and carry the fields the design relies on."""

from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def load(name):
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()))
    assert len(docs) == 1 and docs[0]["apiVersion"] and docs[0]["kind"] and docs[0]["metadata"]["name"]
    return docs[0]


def test_deployment_gpu_probes_secret():
    d = load("deployment.yaml")
    assert d["kind"] == "Deployment" and d["apiVersion"] == "apps/v1"
    labels = d["spec"]["template"]["metadata"]["labels"]
    assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [c] = d["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and c["resources"]["requests"]["nvidia.com/gpu"] == 1
    port = c["ports"][0]
    assert port["containerPort"] == 8000
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] == port["name"]
    [env] = [e for e in c["env"] if e["name"] == "GHOST_LSP_SERVE_TOKEN"]
    ref = env["valueFrom"]["secretKeyRef"]
    secret = load("secret.yaml")
    assert secret["kind"] == "Secret" and ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    annotations = d["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics" and annotations["prometheus.io/port"] == "8000"
    assert not any("token" in a.lower() and "=" in a for a in c.get("args", []))  # never on the command line


def test_service_hpa_servicemonitor_point_at_the_deployment():
    d, svc, hpa, sm = (load(n) for n in ("deployment.yaml", "service.yaml", "hpa.yaml", "servicemonitor.yaml"))
    labels = d["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": d["metadata"]["name"]}
    [m] = hpa["spec"]["metrics"]
    assert m["pods"]["metric"]["name"] == "ghost_serve_utilisation"  # exported by ghost_lsp/serving/metrics.py
    target = m["pods"]["target"]["averageValue"]
    assert target.endswith("m") and 700 <= int(target[:-1]) <= 800  # the 70-80 % target
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"


def test_dockerfile_serves_with_cuda_and_no_token_on_the_command_line():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "onnxruntime-gpu" in text and ".[serve]" in text
    entry = next(line for line in text.splitlines() if line.startswith("ENTRYPOINT"))
    assert "serve-model" in entry and "--provider" in text and "cuda" in text
    assert "GHOST_LSP_SERVE_TOKEN=" not in text and "--token " not in text
