"""The Helm chart, rendered by Helm's own engine (helm-python-sdk binds Helm v4's Go SDK) in
standalone and sidecar mode, and every manifest validated against the Kubernetes schemas."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

helm = pytest.importorskip("helm_python", reason="dev extra helm-python-sdk (real Helm engine) missing")
kv = pytest.importorskip("kubernetes_validate")

from gateway.config import parse_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "fapi-gateway"
SIDECAR_EXAMPLE = REPO / "helm" / "examples" / "sidecar-app"
# Oldest and newest Kubernetes minor versions we claim to support.
K8S_VERSIONS = ("1.29.0", "1.37.0")

Manifest = dict[str, Any]


def render(chart: Path, values: dict[str, Any] | None = None) -> list[Manifest]:
    with helm.Chart.load(str(chart)) as c:
        out = c.render(values or {}, name="gw", namespace="bank", is_install=True)
    docs: list[Manifest] = []
    for name, text in sorted(out.items()):
        if name.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Manifest], kind: str) -> Manifest:
    (doc,) = by_kind(docs, kind)
    return doc


def validate_all(docs: list[Manifest]) -> None:
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked structurally in its own test
        for version in K8S_VERSIONS:
            kv.validate(doc, version, strict=True)


def gateway_container(pod_spec: Manifest) -> Manifest:
    (c,) = [c for c in pod_spec["containers"] if c["name"] == "fapi-gateway"]
    return c


def gateway_yaml(docs: list[Manifest]) -> dict[str, Any]:
    return yaml.safe_load(one(docs, "ConfigMap")["data"]["gateway.yaml"])


@pytest.fixture(scope="module")
def sidecar_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example parent chart with this chart vendored as its dependency (helm dependency build)."""
    root = tmp_path_factory.mktemp("sidecar") / "sidecar-app"
    shutil.copytree(SIDECAR_EXAMPLE, root)
    shutil.copytree(CHART, root / "charts" / "fapi-gateway")
    return root


def test_chart_lints() -> None:
    result = helm.lint(str(CHART), strict=True)
    # Helm's severities: 1 info, 2 warning, 3 error.
    serious = [m for m in result["messages"] if m["severity"] >= 2]
    assert not serious and not result["errors"], result


def test_standalone_defaults_render_and_validate() -> None:
    docs = render(CHART)
    # One pod (no PDB: 1 of 1 would block drains), the NetworkPolicy on, the DPoP nonce Secret.
    assert sorted(d["kind"] for d in docs) == [
        "ConfigMap", "Deployment", "NetworkPolicy", "Secret", "Service", "ServiceAccount",
    ]
    validate_all(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = gateway_container(pod)
    # Restricted pod security: non-root, read-only root fs, no capabilities, RuntimeDefault seccomp.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsNonRoot"] is True
    assert {v["name"] for v in pod["volumes"]} >= {"gateway-config", "gateway-tls", "gateway-client-ca", "gateway-tmp"}
    # Probes on the admin port.
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"https": 8443, "admin": 8442}
    # Room to drain: termination grace > shutdown delay + grace.
    assert pod["terminationGracePeriodSeconds"] > 5 + 20
    cfg = gateway_yaml(docs)
    assert cfg["listen"]["tls"]["cert"] == "/etc/gateway/tls/tls.crt"
    assert cfg["admin"] == {"host": "${POD_IP}", "port": 8442}
    assert cfg["lifecycle"] == {"workers": 1, "shutdown_delay_s": 5, "shutdown_grace_s": 20}


def test_checksum_annotation_follows_the_config() -> None:
    def checksum(values: dict[str, Any]) -> str | None:
        meta = one(render(CHART, values), "Deployment")["spec"]["template"]["metadata"]
        return (meta.get("annotations") or {}).get("checksum/config")

    a = checksum({})
    b = checksum({"config": {"observability": {"log_level": "debug"}}})
    assert a and b and a != b
    assert checksum({}) == a
    # hotReload: pods are not rolled; the gateway reloads the updated file itself.
    assert checksum({"configReload": "hotReload"}) is None


def test_standalone_with_every_toggle() -> None:
    docs = render(CHART, {
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 9},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "networkPolicy": {"enabled": True, "ingressFrom": [{"podSelector": {"matchLabels": {"role": "edge"}}}]},
        "redis": {"existingSecret": "gw-redis", "key": "url"},
        "workers": 2,
    })
    validate_all(docs)
    assert one(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 3
    dep = one(docs, "Deployment")
    assert "replicas" not in dep["spec"]  # the HPA owns the replica count
    c = gateway_container(dep["spec"]["template"]["spec"])
    (redis_env,) = [e for e in c["env"] if e["name"] == "GATEWAY_REDIS_URL"]
    assert redis_env["valueFrom"]["secretKeyRef"] == {"name": "gw-redis", "key": "url"}
    cfg = gateway_yaml(docs)
    # The URL (with its password) stays in the Secret; the ConfigMap only names the variable.
    assert cfg["dpop"]["replay"] == {"backend": "redis", "redis": {"url": "${GATEWAY_REDIS_URL}"}}
    assert cfg["lifecycle"]["workers"] == 2
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"][0]["port"] == "admin" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
    (svc,) = [d for d in by_kind(docs, "Service") if d["metadata"]["name"].endswith("-metrics")]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    np = one(docs, "NetworkPolicy")
    assert [r["ports"][0]["port"] for r in np["spec"]["ingress"]] == ["https", "admin"]
    assert np["spec"]["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {"role": "edge"}}}]


def test_sidecar_mode_adds_the_gateway_to_the_application_pod(sidecar_chart: Path) -> None:
    docs = render(sidecar_chart)
    validate_all(docs)
    (dep,) = by_kind(docs, "Deployment")  # the application's; the gateway chart adds none
    assert dep["metadata"]["name"] == "payments-api"
    pod = dep["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["payments-api", "fapi-gateway"]
    app = pod["containers"][0]
    assert "ports" not in app
    assert "checksum/config" in dep["spec"]["template"]["metadata"]["annotations"]
    cfg = gateway_yaml(docs)
    assert cfg["upstreams"] == {"app": {"url": "http://127.0.0.1:8080"}}
    assert cfg["routes"][0]["upstream"] == "app"
    svc = one(docs, "Service")
    assert svc["spec"]["selector"] == {"app.kubernetes.io/name": "payments-api"}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == {"https"}
    assert 8080 not in {p["port"] for p in svc["spec"]["ports"]}
    np = one(docs, "NetworkPolicy")
    assert np["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "payments-api"}
    assert all(port["port"] in ("https", "admin") for r in np["spec"]["ingress"] for port in r["ports"])


def test_sidecar_mode_standalone_render_validates() -> None:
    """The chart alone in sidecar mode: ConfigMap, Service and NetworkPolicy for the app's pods."""
    docs = render(CHART, {
        "mode": "sidecar",
        "sidecar": {"appPort": 9000, "podSelector": {"app": "ledger"}},
        "networkPolicy": {"enabled": True},
        "redis": {"url": "redis://redis:6379/0"},
    })
    validate_all(docs)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "NetworkPolicy", "Secret", "Service"]
    assert gateway_yaml(docs)["upstreams"]["app"] == {"url": "http://127.0.0.1:9000"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mode": "sidecar"}, "sidecar.podSelector"),
        ({"mode": "daemon"}, "mode"),
        ({"configReload": "sometimes"}, "configReload"),
        ({"workers": 0}, "workers"),
    ],
)
def test_bad_values_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError) as err:
        render(CHART, values)
    assert message in str(err.value)


def test_rendered_config_is_accepted_by_the_gateway(
    tmp_path: Path, sidecar_chart: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ConfigMap holds a config ``gateway check-config`` accepts, in both modes (with the
    environment the pod gets: its IP, the nonce key and the Redis password from Secrets)."""
    monkeypatch.setenv("POD_IP", "10.1.2.3")
    monkeypatch.setenv("GATEWAY_DPOP_NONCE_SECRET", "n" * 48)
    monkeypatch.setenv("GATEWAY_REDIS_PASSWORD", "pw")
    ca = trustme.CA()
    cert = ca.issue_cert("gateway.bank.example")
    files = {
        "/etc/gateway/tls/tls.crt": cert.cert_chain_pems[0].bytes(),
        "/etc/gateway/tls/tls.key": cert.private_key_pem.bytes(),
        "/etc/gateway/client-ca/ca.crt": ca.cert_pem.bytes(),
    }
    for docs in (render(CHART), render(sidecar_chart)):
        text = one(docs, "ConfigMap")["data"]["gateway.yaml"]
        for mount, data in files.items():
            local = tmp_path / Path(mount).name
            local.write_bytes(data)
            text = text.replace(mount, str(local))
        cfg = parse_config(text)
        assert cfg.admin.host == "10.1.2.3" and cfg.listen.port == 8443
        assert cfg.dpop.nonce is not None


# --- issue #13 findings 10 and 20: one replay store for every gateway process; admin port ------

REDIS = {"redis": {"url": "rediss://redis.bank.svc:6380/0", "passwordSecret": {"name": "gw-redis", "key": "password"}}}


def env_of(c: Manifest) -> dict[str, Manifest]:
    return {e["name"]: e for e in c["env"]}


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": 2},
        {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 4}},
        {"workers": 2},
        {"mode": "sidecar", "sidecar": {"podSelector": {"app": "ledger"}}},
    ],
    ids=["replicas", "autoscaling", "workers", "sidecar"],
)
def test_more_than_one_gateway_process_needs_redis(values: dict[str, Any]) -> None:
    """Before the fix the chart rendered 2 replicas with the in-memory store: a captured proof
    replayed once per pod. Now it refuses to render without a shared replay store."""
    with pytest.raises(helm.HelmError) as err:
        render(CHART, values)
    text = str(err.value)
    assert "redis" in text and "replay" in text
    docs = render(CHART, {**values, **REDIS})
    validate_all(docs)
    assert gateway_yaml(docs)["dpop"]["replay"]["backend"] == "redis"


def test_defaults_are_one_pod_with_no_overlap() -> None:
    """Without Redis: one pod, and no rolling-update overlap (two pods, two memories); no PDB that
    would block every node drain."""
    docs = render(CHART)
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    assert not by_kind(docs, "PodDisruptionBudget")
    assert gateway_yaml(docs).get("dpop", {}).get("replay", {}).get("backend", "memory") == "memory"
    # With Redis: rolling updates without downtime, and the PDB.
    docs = render(CHART, {"replicaCount": 3, **REDIS})
    dep = one(docs, "Deployment")
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate" and dep["spec"]["replicas"] == 3
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_redis_url_with_password_secret() -> None:
    docs = render(CHART, {"replicaCount": 3, **REDIS})
    validate_all(docs)
    c = gateway_container(one(docs, "Deployment")["spec"]["template"]["spec"])
    assert env_of(c)["GATEWAY_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "gw-redis", "key": "password"}
    redis = gateway_yaml(docs)["dpop"]["replay"]["redis"]
    # The password stays in the Secret; the ConfigMap names the variable only.
    assert redis == {"url": "rediss://redis.bank.svc:6380/0", "password": "${GATEWAY_REDIS_PASSWORD}"}


def test_redis_sentinel() -> None:
    docs = render(CHART, {"replicaCount": 2, "redis": {
        "sentinel": {"hosts": ["s-0.redis:26379", "s-1.redis:26379"], "serviceName": "gw"},
        "passwordSecret": {"name": "gw-redis", "key": "pw"}}})
    validate_all(docs)
    redis = gateway_yaml(docs)["dpop"]["replay"]["redis"]
    assert redis == {"mode": "sentinel", "sentinels": ["s-0.redis:26379", "s-1.redis:26379"], "service_name": "gw",
                     "password": "${GATEWAY_REDIS_PASSWORD}"}


def test_nonce_secret_is_one_value_for_every_pod() -> None:
    """DPOPN-09: every pod signs and checks nonces with the same key, from one Secret; kept across
    upgrades (lookup) and uninstalls (resource-policy keep), or given (existingSecret)."""
    docs = render(CHART, {"replicaCount": 2, **REDIS})
    (secret,) = [d for d in by_kind(docs, "Secret") if d["metadata"]["name"] == "gw-fapi-gateway-dpop-nonce"]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    import base64

    assert len(base64.b64decode(secret["data"]["secret"])) >= 32
    c = gateway_container(one(docs, "Deployment")["spec"]["template"]["spec"])
    ref = env_of(c)["GATEWAY_DPOP_NONCE_SECRET"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "gw-fapi-gateway-dpop-nonce", "key": "secret"}
    assert gateway_yaml(docs)["dpop"]["nonce"] == {"secrets": ["${GATEWAY_DPOP_NONCE_SECRET}"]}
    given = render(CHART, {"dpopNonce": {"existingSecret": "bank-nonce", "key": "k"}})
    assert not by_kind(given, "Secret")
    c = gateway_container(one(given, "Deployment")["spec"]["template"]["spec"])
    assert env_of(c)["GATEWAY_DPOP_NONCE_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "bank-nonce", "key": "k"}
    off = render(CHART, {"dpopNonce": {"enabled": False}})
    assert not by_kind(off, "Secret") and "nonce" not in gateway_yaml(off).get("dpop", {})


def test_admin_port_is_for_probes_and_monitoring_only(sidecar_chart: Path) -> None:
    """Finding 20: admin listens on the pod IP (what kubelet probes reach), no Service exposes it
    (a separate metrics Service only for the ServiceMonitor), and the NetworkPolicy is on by
    default, admitting the admin port from adminFrom only."""
    for docs in (render(CHART), render(sidecar_chart)):
        cfg = gateway_yaml(docs)
        assert cfg["admin"]["host"] == "${POD_IP}"
        (dep,) = [d for d in by_kind(docs, "Deployment")]
        c = gateway_container(dep["spec"]["template"]["spec"])
        assert env_of(c)["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        (svc,) = by_kind(docs, "Service")
        assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["https"]
        np = one(docs, "NetworkPolicy")
        admin_rules = [r for r in np["spec"]["ingress"] if r["ports"][0]["port"] == "admin"]
        assert len(admin_rules) == 1 and admin_rules[0]["from"]
    docs = render(CHART, {"serviceMonitor": {"enabled": True}})
    metrics = [d for d in by_kind(docs, "Service") if d["metadata"]["name"].endswith("-metrics")]
    assert len(metrics) == 1 and [p["targetPort"] for p in metrics[0]["spec"]["ports"]] == ["admin"]
    sm = one(docs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= metrics[0]["metadata"]["labels"].items()
    public = [d for d in by_kind(docs, "Service") if not d["metadata"]["name"].endswith("-metrics")]
    assert not sm["spec"]["selector"]["matchLabels"].items() <= public[0]["metadata"]["labels"].items()


def test_admin_token_from_a_secret_enables_the_revocation_api() -> None:
    """The kill switch (issue #13 finding 13) can be switched on through the chart: the token
    comes from an existing Secret into the environment, the ConfigMap names the variable only;
    without one the API stays off (no token in the config)."""
    docs = render(CHART, {"adminToken": {"existingSecret": "gw-admin", "key": "t"}})
    validate_all(docs)
    c = gateway_container(one(docs, "Deployment")["spec"]["template"]["spec"])
    assert env_of(c)["GATEWAY_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "gw-admin", "key": "t"}
    assert gateway_yaml(docs)["admin"] == {"host": "${POD_IP}", "port": 8442, "token": "${GATEWAY_ADMIN_TOKEN}"}
    off = render(CHART)
    assert "token" not in gateway_yaml(off)["admin"]
    assert "GATEWAY_ADMIN_TOKEN" not in env_of(gateway_container(one(off, "Deployment")["spec"]["template"]["spec"]))


# --- issue #15: decision mode (Envoy/Istio ext_authz, nginx auth_request, Traefik forwardAuth) ---

EDGE = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "edge"}}}
DECISION: dict[str, Any] = {"mode": "decision", "tls": {"enabled": False}, "decision": {"proxyFrom": [EDGE]}}


def test_decision_mode_renders_the_decision_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Deployment + Service exposing only the two decision ports (gRPC and HTTP), readiness on the
    decision listener, the NetworkPolicy admitting the proxies there; the gateway's own proxy
    listener on loopback; the config is one the gateway accepts."""
    docs = render(CHART, DECISION)
    validate_all(docs)
    assert sorted(d["kind"] for d in docs) == [
        "ConfigMap", "Deployment", "NetworkPolicy", "Secret", "Service", "ServiceAccount",
    ]
    c = gateway_container(one(docs, "Deployment")["spec"]["template"]["spec"])
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"admin": 8442, "decision-grpc": 9001,
                                                                   "decision-http": 9002}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "decision-http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    svc = one(docs, "Service")
    assert {p["name"]: (p["port"], p["targetPort"], p["appProtocol"]) for p in svc["spec"]["ports"]} == {
        "decision-grpc": (9001, "decision-grpc", "grpc"), "decision-http": (9002, "decision-http", "http")}
    np = one(docs, "NetworkPolicy")
    rule = np["spec"]["ingress"][0]
    assert [p["port"] for p in rule["ports"]] == ["decision-grpc", "decision-http"]
    assert rule["from"] == [EDGE]
    cfg = gateway_yaml(docs)
    assert cfg["listen"]["host"] == "127.0.0.1"
    assert cfg["decision"] == {"grpc": {"host": "0.0.0.0", "port": 9001}, "http": {"host": "0.0.0.0", "port": 9002}}
    monkeypatch.setenv("POD_IP", "10.1.2.3")
    monkeypatch.setenv("GATEWAY_DPOP_NONCE_SECRET", "n" * 48)
    text = one(docs, "ConfigMap")["data"]["gateway.yaml"]
    # The operator names the proxies' addresses (pod CIDR) and switches the service on.
    user = {**DECISION, "config": {**yaml.safe_load(text), "decision": {
        "enabled": True, "grpc": {"trusted_peers": ["10.0.0.0/16"]}, "http": {"trusted_peers": ["10.0.0.0/16"]}}}}
    parsed = parse_config(one(render(CHART, user), "ConfigMap")["data"]["gateway.yaml"])
    assert parsed.decision.enabled and parsed.decision.http is not None and parsed.decision.http.port == 9002
    assert parsed.decision.grpc is not None and parsed.decision.grpc.port == 9001
    assert parsed.decision.http.trusted_peers == ("10.0.0.0/16",)


def test_decision_mode_needs_the_proxies_named() -> None:
    """An open decision port would let anything on the pod network ask; the chart refuses to
    render decision mode without decision.proxyFrom (while the NetworkPolicy is on)."""
    with pytest.raises(helm.HelmError) as err:
        render(CHART, {"mode": "decision", "tls": {"enabled": False}})
    assert "decision.proxyFrom" in str(err.value)


def test_decision_mode_replicas_need_redis() -> None:
    with pytest.raises(helm.HelmError) as err:
        render(CHART, {**DECISION, "replicaCount": 2})
    assert "replay" in str(err.value)
    docs = render(CHART, {**DECISION, "replicaCount": 2, **REDIS})
    validate_all(docs)
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
