"""The Kubernetes manifests: valid against real API schemas (offline), and consistent with the bot.

A manifest that validates but names the wrong env var or port is the bug that only shows up in
a cluster at 2 am, so the second half checks the manifests against the code: Settings aliases,
BotConfig.http_port, and the configuration parser itself.
"""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from unittest import mock

import pytest
import yaml

from flytegpt.ingest.config import BotConfig, Settings, parse_config
from flytegpt.ingest.onnx_export import default_cache_root
from support.tools import find_executable, missing_tool

from support.paths import ROOT
MANIFESTS = ROOT / "manifests"
K8S_VERSION = "1.32.0"  # schemas shipped by kubernetes-validate; a version clusters run today


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.rglob("*.yaml"))


def _resources(path: Path) -> list[dict]:
    return [d for d in _docs(path) if d.get("kind") != "Kustomization"]


def _base(kind: str, name: str | None = None) -> dict:
    for path in (MANIFESTS / "base").glob("*.yaml"):
        for doc in _resources(path):
            if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name):
                return doc
    raise AssertionError(f"no {kind} {name or ''} in manifests/base")


def _container() -> dict:
    deployment = _base("Deployment", "flytegpt")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _validate(doc: dict, where: str) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        raise AssertionError(f"{where}: {doc['kind']}/{doc['metadata']['name']}: {path}: {e.message}") from None


def test_layout_has_every_part() -> None:
    names = {p.name for p in (MANIFESTS / "base").glob("*.yaml")}
    for needed in ("kustomization.yaml", "deployment.yaml", "serviceaccount.yaml", "secret.example.yaml",
                   "configmap.yaml", "service.yaml"):
        assert needed in names


@pytest.mark.parametrize("path", _all_files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_every_manifest_validates_against_kubernetes_schemas(path: Path) -> None:
    docs = _docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        if doc.get("kind") == "Kustomization":
            # Every file a kustomization names must exist (kustomize would fail in the cluster).
            for entry in doc.get("resources", []) + [p["path"] for p in doc.get("patches", [])]:
                assert (path.parent / entry).exists(), f"{path}: missing {entry}"
            continue
        _validate(doc, str(path.relative_to(MANIFESTS)))


def _kustomizations() -> list[Path]:
    return sorted(p.parent for p in MANIFESTS.rglob("kustomization.yaml"))


@pytest.mark.parametrize("folder", _kustomizations(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_kustomize_renders_valid_resources(folder: Path) -> None:
    """What `kubectl apply -k` would send: patches applied, images and namespace set."""
    kubectl = find_executable("kubectl")
    if kubectl is None:
        missing_tool("kubectl (with built-in kustomize) is not installed")
    out = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "ServiceAccount", "ConfigMap", "Service"} <= kinds
    assert "Secret" not in kinds, "applying a placeholder Secret would overwrite the real tokens"
    for doc in docs:
        _validate(doc, f"kustomize {folder.relative_to(MANIFESTS)}")
        if doc["kind"] == "ConfigMap" and "flytegpt.toml" in doc["data"]:
            parse_config(tomllib.loads(doc["data"]["flytegpt.toml"]), Path("/"))
        if doc["kind"] == "Deployment":
            (c,) = doc["spec"]["template"]["spec"]["containers"]
            assert "/" in c["image"] and ":" in c["image"], f"image not set by kustomize: {c['image']}"


def test_probes_and_ports_match_the_bot() -> None:
    container = _container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    bot = _configmap_config().bot
    assert ports["http"] == BotConfig().http_port == bot.http_port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    service = _base("Service", "flytegpt-metrics")
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(bot.http_port)
    # The Service must select the bot's pods.
    labels = _base("Deployment", "flytegpt")["spec"]["template"]["metadata"]["labels"]
    assert set(service["spec"]["selector"].items()) <= set(labels.items())


def test_health_endpoints_exist_in_the_bot_code() -> None:
    sources = "\n".join(p.read_text() for p in (ROOT / "bot").rglob("*.py"))
    if "/healthz" not in sources:
        pytest.skip("the bot's health server is not written yet")
    assert "/readyz" in sources and "/metrics" in sources


def _settings_aliases() -> dict[str, str]:
    return {f.alias: name for name, f in Settings.model_fields.items() if f.alias}


def test_env_names_are_the_ones_settings_reads() -> None:
    env = {e["name"]: e for e in _container()["env"]}
    aliases = _settings_aliases()
    secret_env = {n for n, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})}
    assert secret_env == {"SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "OPENAI_API_KEY"}
    for name in secret_env | {"OPENAI_BASE_URL", "FLYTEGPT_CHAT_MODEL"}:
        assert name in env, name
        assert name in aliases, f"{name} is not read by ingest.config.Settings"
    # Every secret the pod reads is in the example Secret, under the same key.
    example = _docs(MANIFESTS / "base" / "secret.example.yaml")[0]
    for name in secret_env:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == example["metadata"]["name"]
        assert ref["key"] in example["stringData"]
    # The config file the bot reads is the mounted ConfigMap.
    mounts = {m["name"]: m["mountPath"] for m in _container()["volumeMounts"]}
    assert env["FLYTEGPT_CONFIG"]["value"] == f"{mounts['config']}/flytegpt.toml"
    # The embedder's ONNX exports are kept on the writable, persistent data volume.
    onnx_cache = env["FLYTEGPT_ONNX_CACHE"]["value"]
    assert onnx_cache.startswith(mounts["data"] + "/")
    with mock.patch.dict("os.environ", {"FLYTEGPT_ONNX_CACHE": onnx_cache}):
        assert str(default_cache_root()) == onnx_cache


def test_no_setting_is_passed_as_an_empty_string() -> None:
    """Settings treats "" as configured (e.g. OPENAI_BASE_URL): leave keys out instead."""
    for path in _all_files():
        for doc in _docs(path):
            if doc.get("kind") == "ConfigMap":
                assert all(v != "" for v in doc["data"].values()), path
            for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                assert all(e.get("value") != "" for e in c.get("env", [])), path


def test_example_secret_holds_no_real_tokens() -> None:
    example = _docs(MANIFESTS / "base" / "secret.example.yaml")[0]
    for key, value in example["stringData"].items():
        assert "REPLACE" in value, f"{key} looks like a real value"


def _configmap_config():
    data = _base("ConfigMap", "flytegpt-config")["data"]
    return parse_config(tomllib.loads(data["flytegpt.toml"]), Path("/"))


def test_configmap_is_a_valid_flytegpt_config_on_writable_paths() -> None:
    config = _configmap_config()
    assert "://" in config.index.store, "the bot reads the bucket the Flyte workflow publishes into"
    container = _container()
    writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
    for path in (config.bot.feedback_db, config.index.cache_dir):
        assert path and any(str(path).startswith(w + "/") for w in writable), f"{path} is not on a writable volume"


def test_pod_runs_non_root_with_a_read_only_root_filesystem() -> None:
    pod = _base("Deployment", "flytegpt")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = _container()["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert _container()["resources"]["requests"]["memory"]
    assert "ingress" not in {d["kind"].lower() for p in _all_files() for d in _docs(p)}
