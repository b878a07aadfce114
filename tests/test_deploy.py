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


def test_vllm_manifest_serves_a_model_with_the_token_from_a_secret():
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "vllm" / "vllm.yaml").read_text())}
    assert set(docs) == {"Secret", "Deployment", "Service"}
    d, secret, svc = docs["Deployment"], docs["Secret"], docs["Service"]
    labels = d["spec"]["template"]["metadata"]["labels"]
    assert d["spec"]["selector"]["matchLabels"].items() <= labels.items() and svc["spec"]["selector"].items() <= labels.items()
    [c] = d["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["vllm", "serve"]
    args = c["args"]
    opt = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}
    assert not args[0].startswith("--")  # the model folder
    assert opt["--served-model-name"] and int(opt["--max-model-len"]) > 0
    assert int(opt["--tensor-parallel-size"]) == c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"]
    [env] = [e for e in c["env"] if e["name"] == "VLLM_API_KEY"]  # vLLM's --api-key, from the environment
    ref = env["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    assert "--api-key" not in args and not any("token" in str(a).lower() for a in args)  # never on the command line
    port = c["ports"][0]
    assert port["containerPort"] == int(opt["--port"]) and svc["spec"]["ports"][0]["targetPort"] == port["name"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": port["name"]}
    readme = (DEPLOY / "README.md").read_text()
    assert opt["--served-model-name"] in readme and "remote_model_dir" in readme and "remote_context" in readme


# vLLM's OpenAI-compatible Completions request (vllm/entrypoints/openai/protocol.py,
# CompletionRequest: the OpenAI fields and vLLM's extra sampling parameters), the fields ghost-lsp
# may send, with their types and the values vLLM accepts.
VLLM_COMPLETIONS = {
    "model": (str, None), "prompt": (str, None), "max_tokens": (int, lambda v: v >= 1),
    "temperature": (float, lambda v: v >= 0), "top_p": (float, lambda v: 0 < v <= 1), "stream": (bool, None),
    "logprobs": (int, lambda v: v >= 0), "frequency_penalty": (float, lambda v: -2 <= v <= 2),
    "presence_penalty": (float, lambda v: -2 <= v <= 2), "stop": (list, lambda v: all(isinstance(s, str) for s in v)),
    "seed": (int, None), "top_k": (int, lambda v: v == -1 or v >= 1), "min_p": (float, lambda v: 0 <= v <= 1),
    "repetition_penalty": (float, lambda v: v > 0), "truncate_prompt_tokens": (int, lambda v: v >= 1),
}


def _check_vllm_body(body):
    for key, value in body.items():
        assert key in VLLM_COMPLETIONS, f"{key} is not a vLLM completions field"
        typ, ok = VLLM_COMPLETIONS[key]
        assert isinstance(value, typ) and not (typ is not bool and isinstance(value, bool)), (key, value)
        assert ok is None or ok(value), (key, value)


def test_language_server_requests_to_vllm_use_only_its_documented_fields(tiny_model_dir_fp32, tmp_path):
    """The completer's requests (greedy + sampled candidates, stops, penalties, log-probs), as
    the remote engine sends them to a server that lists itself as vLLM, or is named vLLM."""
    import asyncio

    from test_remote_engine import CaptureServer

    from ghost_lsp.completion.completer import Completer
    from ghost_lsp.engine.loading import make_remote_engine
    from ghost_lsp.settings.core import Settings
    from ghost_lsp.types import CompletionRequest

    text = "def add(a, b):\n    return \n\nprint(add(1, 2))\n"
    req = CompletionRequest(uri="file:///m.py", version=1, path="/m.py", language="python", line=1, character=11)
    for owner, dialect, folder in (("vllm", "auto", str(tiny_model_dir_fp32)), ("someone", "vllm", "")):
        fake = CaptureServer([{"id": "ghost-code", "object": "model", "owned_by": owner, "max_model_len": 4096}],
                             texts=("a + b",))
        try:
            s = Settings(remote_url=fake.url, remote_model="ghost-code", remote_model_dir=folder, remote_dialect=dialect,
                         n=3, frequency_penalty=0.2, presence_penalty=0.1, debounce_ms=0, remote_fallback=False)
            eng = make_remote_engine(s, tmp_path / "no-local-model")
            assert eng.dialect == "vllm"
            assert asyncio.run(Completer(eng, s).complete(req, text)) is not None
            assert len(fake.bodies) == 3
            for body in fake.bodies:
                _check_vllm_body(body)
                assert body["model"] == "ghost-code" and body["repetition_penalty"] == 1.0 and "suffix" not in body
            assert fake.bodies[0]["temperature"] == 0.0 and fake.bodies[1]["temperature"] > 0
            assert ("truncate_prompt_tokens" in fake.bodies[0]) == (not folder)  # only when counts are estimates
            assert fake.bodies[0]["prompt"].startswith("<fim_prefix>") == bool(folder)
        finally:
            fake.close()
