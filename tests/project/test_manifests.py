"""The Kubernetes manifests: valid against real API schemas (offline), and consistent with the bot.

A manifest that validates but names the wrong env var or port is the bug that only shows up in
a cluster at 2 am, so the second half checks the manifests against the code: Settings aliases,
BotConfig.http_port, and the configuration parser itself.
"""

from __future__ import annotations

import shutil
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


def _generated_configmaps(folder: Path) -> list[dict]:
    """The ConfigMaps a kustomization's configMapGenerator makes, before the hash suffix.

    Read straight from the files (no kubectl) so the checks against the bot run everywhere;
    test_generated_configmap_is_what_kustomize_renders keeps this in step with kustomize.
    """
    (kustomization,) = _docs(folder / "kustomization.yaml")
    configmaps = []
    for gen in kustomization.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for entry in gen.get("files", []):
            key, _, file = entry.rpartition("=")
            data[key or Path(file).name] = (folder / file).read_text()
        for literal in gen.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        configmaps.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    return configmaps


def _base(kind: str, name: str | None = None) -> dict:
    generated = _generated_configmaps(MANIFESTS / "base")
    for doc in [d for path in (MANIFESTS / "base").glob("*.yaml") for d in _resources(path)] + generated:
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
    names = {p.name for p in (MANIFESTS / "base").iterdir()}
    for needed in ("kustomization.yaml", "deployment.yaml", "serviceaccount.yaml", "secret.example.yaml",
                   "flytegpt.toml", "service.yaml", "networkpolicy.yaml"):
        assert needed in names


@pytest.mark.parametrize("path", _all_files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_every_manifest_validates_against_kubernetes_schemas(path: Path) -> None:
    docs = _docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        if doc.get("kind") == "Kustomization":
            # Every file a kustomization names must exist (kustomize would fail in the cluster).
            generated = [f.rpartition("=")[2] for g in doc.get("configMapGenerator", []) for f in g.get("files", [])]
            for entry in doc.get("resources", []) + [p["path"] for p in doc.get("patches", [])] + generated:
                assert (path.parent / entry).exists(), f"{path}: missing {entry}"
            continue
        _validate(doc, str(path.relative_to(MANIFESTS)))


def _kustomizations() -> list[Path]:
    return sorted(p.parent for p in MANIFESTS.rglob("kustomization.yaml"))


def _kustomize(folder: Path) -> list[dict]:
    """`kubectl kustomize folder`: what `kubectl apply -k` would send."""
    kubectl = find_executable("kubectl")
    if kubectl is None:
        missing_tool("kubectl (with built-in kustomize) is not installed")
    out = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _rendered(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def _configmap_refs(deployment: dict) -> set[str]:
    """Every ConfigMap name the Deployment's pods read: volumes, envFrom and configMapKeyRef."""
    pod = deployment["spec"]["template"]["spec"]
    names = {v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
    for c in pod["containers"]:
        names |= {e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e}
        names |= {e["valueFrom"]["configMapKeyRef"]["name"] for e in c.get("env", [])
                  if "configMapKeyRef" in e.get("valueFrom", {})}
    return names


@pytest.mark.parametrize("folder", _kustomizations(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_kustomize_renders_valid_resources(folder: Path) -> None:
    """What `kubectl apply -k` would send: patches applied, images and namespace set."""
    docs = _kustomize(folder)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "ServiceAccount", "ConfigMap", "Service", "NetworkPolicy"} <= kinds
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
    # Hot reloads of the index fragment glibc's arenas: two keep RSS level, as the bot's image says.
    from flytegpt.flyte.image import BOT_IMAGE

    assert env["MALLOC_ARENA_MAX"]["value"] == BOT_IMAGE.env["MALLOC_ARENA_MAX"] == "2"
    # The config file the bot reads is the mounted ConfigMap.
    mounts = {m["name"]: m["mountPath"] for m in _container()["volumeMounts"]}
    assert env["FLYTEGPT_CONFIG"]["value"] == f"{mounts['config']}/flytegpt.toml"
    # The embedder's ONNX exports are kept on the writable, persistent data volume.
    onnx_cache = env["FLYTEGPT_ONNX_CACHE"]["value"]
    assert onnx_cache.startswith(mounts["data"] + "/")
    with mock.patch.dict("os.environ", {"FLYTEGPT_ONNX_CACHE": onnx_cache}):
        assert str(default_cache_root()) == onnx_cache


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_no_setting_is_passed_as_an_empty_string() -> None:
    """Settings treats "" as configured (e.g. OPENAI_BASE_URL): leave keys out instead."""
    for path in _all_files():
        for doc in _docs(path):
            if doc.get("kind") == "ConfigMap":
                assert all(v != "" for v in doc["data"].values()), path
            for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                assert all(e.get("value") != "" for e in c.get("env", [])), path
    for folder in _kustomizations():
        for configmap in _generated_configmaps(folder):
            for key, value in configmap["data"].items():
                assert value != "", f"{folder.relative_to(MANIFESTS)}: {key} is empty"
    tomls = sorted(MANIFESTS.rglob("*.toml"))
    assert tomls
    for path in tomls:
        assert "" not in _strings(tomllib.loads(path.read_text())), path


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


def test_generated_configmap_is_what_kustomize_renders() -> None:
    """The checks above read base/flytegpt.toml and the generator literals directly; kustomize
    must render exactly that, or they would be checking something the cluster never sees."""
    rendered = _rendered(_kustomize(MANIFESTS / "base"), "ConfigMap")
    assert rendered["data"] == _base("ConfigMap", "flytegpt-config")["data"]


@pytest.mark.parametrize("folder", _kustomizations(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_deployment_reads_the_configmap_by_its_hashed_name(folder: Path) -> None:
    """The ConfigMap's name carries a hash of its content and the pods read that very name: a
    plain name would let `kubectl apply -k` change the config without restarting the bot, and a
    reference kustomize did not rewrite would leave the pod waiting for a ConfigMap that never exists."""
    docs = _kustomize(folder)
    configmap = _rendered(docs, "ConfigMap")
    name = configmap["metadata"]["name"]
    assert name.startswith("flytegpt-config-") and len(name) > len("flytegpt-config-"), f"not hashed: {name}"
    deployment = _rendered(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (config_volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
    assert config_volume["configMap"]["name"] == name
    (c,) = pod["containers"]
    key_refs = [e["valueFrom"]["configMapKeyRef"] for e in c["env"] if "configMapKeyRef" in e.get("valueFrom", {})]
    assert {r["key"] for r in key_refs} == {"OPENAI_BASE_URL", "FLYTEGPT_CHAT_MODEL"}
    assert all(r["name"] == name for r in key_refs), key_refs
    assert _configmap_refs(deployment) == {name}


@pytest.mark.parametrize("folder", _kustomizations(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_a_changed_setting_rolls_the_bot(folder: Path, tmp_path: Path) -> None:
    """Edit one setting in the folder's flytegpt.toml and re-render: the Deployment must then
    name a different ConfigMap, which is what makes `kubectl apply -k` roll the pods onto the new
    config. Unchanged files must render the same name (no rollout for nothing)."""
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    where = copy / folder.relative_to(MANIFESTS)

    def referenced() -> str:
        docs = _kustomize(where)
        (name,) = _configmap_refs(_rendered(docs, "Deployment"))
        assert name == _rendered(docs, "ConfigMap")["metadata"]["name"]
        return name

    before = referenced()
    assert referenced() == before
    toml = where / "flytegpt.toml"
    text = toml.read_text()
    assert "reload_interval_s = 60" in text
    toml.write_text(text.replace("reload_interval_s = 60", "reload_interval_s = 30"))
    after = referenced()
    assert after != before, "a changed config keeps the ConfigMap name: the bot would not restart"
    rendered = _rendered(_kustomize(where), "ConfigMap")
    assert tomllib.loads(rendered["data"]["flytegpt.toml"])["bot"]["reload_interval_s"] == 30


def test_overlay_renders_one_configmap_with_its_own_store_and_the_chat_model() -> None:
    """An overlay's flytegpt.toml takes the place of the base's (its store, not the placeholder)
    without dropping the base's chat model setting, and without leaving a second ConfigMap."""
    overlay = MANIFESTS / "overlays" / "example"
    docs = _kustomize(overlay)
    configmaps = [d for d in docs if d["kind"] == "ConfigMap"]
    assert len(configmaps) == 1, [d["metadata"]["name"] for d in configmaps]
    data = configmaps[0]["data"]
    assert configmaps[0]["metadata"]["name"].startswith("flytegpt-config-")
    assert data["flytegpt.toml"] == (overlay / "flytegpt.toml").read_text()
    store = parse_config(tomllib.loads(data["flytegpt.toml"]), Path("/")).index.store
    assert store == "s3://example-bucket/flytegpt/store"
    assert store != _configmap_config().index.store
    base_data = _base("ConfigMap", "flytegpt-config")["data"]
    assert data["FLYTEGPT_CHAT_MODEL"] == base_data["FLYTEGPT_CHAT_MODEL"] == "gpt-4o-mini"


_DNS_AND_HTTPS = {(53, "UDP"), (53, "TCP"), (443, "TCP")}


def _peer_pod_selectors(policy: dict) -> list[dict]:
    """The podSelectors of the policy's `from` and `to` peers (not the policy's own)."""
    peers = [p for r in policy["spec"].get("ingress", []) for p in r.get("from", [])]
    peers += [p for r in policy["spec"].get("egress", []) for p in r.get("to", [])]
    return [p["podSelector"] for p in peers if "podSelector" in p]


@pytest.mark.parametrize("folder", _kustomizations(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_network_policy_admits_only_the_bots_http_port_from_monitoring(folder: Path) -> None:
    """Inbound traffic reaches the bot's pods only on `http` (/metrics) and only from the
    monitoring namespace, not from any pod in the cluster."""
    docs = _kustomize(folder)
    policy = _rendered(docs, "NetworkPolicy")
    deployment = _rendered(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]
    assert set(selector) == {"matchLabels"}, "a matchExpressions selector is not checked here"
    assert selector["matchLabels"] and set(selector["matchLabels"].items()) <= set(pod_labels.items())
    # It selects every pod the Deployment owns, not just some of them.
    assert set(selector["matchLabels"].items()) <= set(deployment["spec"]["selector"]["matchLabels"].items())
    assert policy.get("metadata", {}).get("namespace") == deployment["metadata"].get("namespace")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    rules = policy["spec"]["ingress"]
    assert rules, "no ingress rule would also block Prometheus"
    for rule in rules:
        # A rule without ports admits every port; one without `from`, every pod in the cluster.
        assert rule.get("ports") == [{"port": "http", "protocol": "TCP"}], rule
        assert rule.get("from"), f"admits any pod: {rule}"
        for peer in rule["from"]:
            assert "ipBlock" not in peer, peer
            assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p for p in c["ports"]}
    assert ports["http"]["containerPort"] == BotConfig().http_port
    assert ports["http"].get("protocol", "TCP") == "TCP"


@pytest.mark.parametrize("folder", _kustomizations(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_network_policy_lets_out_only_dns_and_https(folder: Path) -> None:
    """Outbound: DNS and TCP 443 (Slack, the model API, the store), nothing else,
    and no peer selector that kustomize's labels turned into one selecting the bot itself."""
    policy = _rendered(_kustomize(folder), "NetworkPolicy")
    rules = policy["spec"]["egress"]
    allowed = set()
    for rule in rules:
        assert rule.get("ports"), f"an egress rule without ports lets out every port: {rule}"
        allowed |= {(p["port"], p.get("protocol", "TCP")) for p in rule["ports"]}
    assert allowed == _DNS_AND_HTTPS
    assert _peer_pod_selectors(policy) == []


def _documented_overlay_patch() -> str:
    """The overlay patch networkpolicy.yaml's comment tells operators to add (a store's port, only
    Prometheus's pods), as YAML: the lines after `#   patches:`, comment marks taken off."""
    lines = (MANIFESTS / "base" / "networkpolicy.yaml").read_text().splitlines()
    start = lines.index("#   patches:")
    block = []
    for line in lines[start:]:
        if not line.startswith("#  "):
            break
        block.append(line[1:])
    return "\n".join(block) + "\n"


def test_the_documented_overlay_patch_opens_one_port_and_narrows_ingress(tmp_path: Path) -> None:
    """What the policy's comment says to paste into an overlay renders, adds the MinIO rule and
    a Prometheus podSelector the base's labels leave alone (one written into the base would
    have been rewritten to select the bot's own labels, and so no Prometheus pod)."""
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    overlay = copy / "overlays" / "example" / "kustomization.yaml"
    kustomization = yaml.safe_load(overlay.read_text())
    kustomization["patches"] += yaml.safe_load(_documented_overlay_patch())["patches"]
    overlay.write_text(yaml.safe_dump(kustomization))
    docs = _kustomize(overlay.parent)
    policy = _rendered(docs, "NetworkPolicy")
    _validate(policy, "documented overlay patch")
    *base_rules, added = policy["spec"]["egress"]
    assert added == {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "minio"}}}],
                     "ports": [{"port": 9000, "protocol": "TCP"}]}
    assert {(p["port"], p["protocol"]) for r in base_rules for p in r["ports"]} == _DNS_AND_HTTPS
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}


def test_example_secret_is_not_selected_by_a_prune_on_the_bots_labels() -> None:
    """`kubectl apply -k ... --prune -l app.kubernetes.io/name=flytegpt` deletes every applied
    object carrying the label that the kustomize output lacks: the Secret is never in that output,
    so the example must carry none of the labels kustomize gives the bot's objects, and must not
    be created with `kubectl apply`."""
    example_path = MANIFESTS / "base" / "secret.example.yaml"
    (example,) = _docs(example_path)
    (kustomization,) = _docs(MANIFESTS / "base" / "kustomization.yaml")
    bot_labels = {(k, v) for entry in kustomization["labels"] for k, v in entry["pairs"].items()}
    assert ("app.kubernetes.io/name", "flytegpt") in bot_labels
    assert not set(example["metadata"].get("labels", {}).items()) & bot_labels
    instructions = [line for line in example_path.read_text().splitlines() if line.startswith("#")]
    assert any("kubectl -n flytegpt create secret generic flytegpt-secrets" in line for line in instructions)
    assert not any("apply -f` it" in line for line in instructions)
