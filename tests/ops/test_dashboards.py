"""The chart's Grafana dashboard and PrometheusRule (issue #19 §4): off by default, rendered by
Helm's own engine and schema-checked, the rules checked and exercised by promtool on synthetic
series, and every metric either one uses found in the /metrics of a live gateway."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .gwproc import GatewayProcess, ThreadedUpstream
from .test_helm_chart import CHART, by_kind, one, render, validate_all
from .test_observability_e2e import Tokens, call, config, jwk_thumbprint

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = CHART / "dashboards" / "fapi-gateway.json"
ON = {"grafanaDashboard": {"enabled": True}, "prometheusRule": {"enabled": True}}
JOB = 'job="gw-fapi-gateway-metrics"'
# Metrics the dashboard and alerts use that a live scrape may lack: none (the report-only metrics
# of issue #19 are exposed since that branch was merged).
PENDING: frozenset[str] = frozenset()
_METRIC = re.compile(r"\b((?:gateway|process)_[a-z0-9_]+)\b")


def dashboard_exprs(dash: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if isinstance(v.get("query"), dict)]
    return exprs


def rule_exprs(rule: dict[str, Any]) -> list[str]:
    return [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]


def metric_names(exprs: list[str]) -> set[str]:
    return {m for e in exprs for m in _METRIC.findall(e)}


def test_both_are_off_by_default() -> None:
    docs = render(CHART)
    assert not by_kind(docs, "PrometheusRule")
    assert [d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")] == ["gw-fapi-gateway"]


def test_dashboard_configmap_renders_validates_and_is_the_generated_json() -> None:
    docs = render(CHART, {**ON, "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Gateways"},
                                                      "namespace": "monitoring"}})
    validate_all(docs)
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "gw-fapi-gateway-dashboard"]
    meta = cm["metadata"]
    assert meta["labels"]["grafana_dashboard"] == "1" and meta["namespace"] == "monitoring"
    assert meta["annotations"] == {"grafana_folder": "Gateways"}
    dash = json.loads(cm["data"]["fapi-gateway.json"])
    assert dash == json.loads(DASHBOARD.read_text())
    # The committed file is what helm/dashboard.py writes (edit the generator, then run it).
    sys.path.insert(0, str(REPO / "helm"))
    try:
        import dashboard as generator
    finally:
        sys.path.pop(0)
    assert DASHBOARD.read_text() == generator.render(), "run: .venv/bin/python helm/dashboard.py"
    # Structure Grafana relies on: unique ids, a 24-column grid, every query on the chosen data
    # source and job, the panels the issue asks for.
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        for t in p.get("targets", []):
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert 'job=~"$job"' in t["expr"], t["expr"]
    titles = {p["title"] for p in dash["panels"]}
    for wanted in ("Refusals by reason", "Requests by route", "p50 / p99 by stage", "Introspection cache hit ratio",
                   "JWKS fetches", "Introspection calls", "Replay store latency", "Replay store errors",
                   "DPoP nonce challenges", "Upstream errors", "Would refuse (report-only routes)",
                   "Certificates: days left"):
        assert wanted in titles, wanted
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "job"}


def test_prometheus_rule_renders_with_the_values() -> None:
    docs = render(CHART, {**ON, "prometheusRule": {
        "enabled": True, "labels": {"release": "prom"}, "selector": 'namespace="bank", job="edge"',
        "certificateExpiryDays": {"warning": 45, "critical": 10}, "refusalRatio": {"threshold": 0.3}}})
    validate_all(docs)
    rule = one(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prom"
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    for r in rules.values():
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}
        assert r["labels"]["severity"] in ("critical", "warning", "info")
        assert r["annotations"]["summary"]
    for e in rule_exprs(rule):
        for selector in re.findall(r"(?:gateway|process)_[a-z0-9_]+\{([^}]*)\}", e):
            assert selector.startswith('namespace="bank", job="edge"'), e
    assert "< 45 * 86400" in rules["FapiGatewayCertificateExpiresSoon"]["expr"]
    assert "< 10 * 86400" in rules["FapiGatewayCertificateExpiresVerySoon"]["expr"]
    assert ") > 0.3" in rules["FapiGatewayRefusalRatioHigh"]["expr"]
    # What a bank pages on (issue #19 §4).
    assert {"FapiGatewayRefusalRatioHigh", "FapiGatewayReplayStoreUnavailable", "FapiGatewayJwksStale",
            "FapiGatewayIntrospectionErrors", "FapiGatewayCertificateExpiresSoon"} <= set(rules)


@pytest.mark.parametrize("bad", [
    {"prometheusRule": {"refusalRatio": {"threshold": 2}}},
    {"prometheusRule": {"refusalRatio": {"for": "ten minutes"}}},
    {"prometheusRule": {"certificateExpiryDays": {"warning": "soon"}}},
    {"grafanaDashboard": {"enabled": "yes"}},
    {"prometheusRule": {"enable": True}},
])
def test_schema_refuses_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(Exception, match=r"(?i)schema|values"):
        render(CHART, bad)


# --- promtool ---------------------------------------------------------------------------------

def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool not found: apt-get install prometheus (bash .ci/setup dev installs it)")
    return tool


def _rules_file(tmp_path: Path) -> Path:
    rule = one(render(CHART, ON), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    out = subprocess.run([_promtool(), "check", "rules", str(_rules_file(tmp_path))],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def _req(route: str, status: str, reason: str) -> str:
    return (f'gateway_requests_total{{{JOB}, route="{route}", mode="proxy", method="read", '
            f'status="{status}", reason="{reason}"}}')


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    lab = ", ".join([JOB, *(f'{k}="{v}"' for k, v in labels.items())])
    return {"series": f"{name}{{{lab}}}", "values": values}


# Each case: input series (1 sample a minute), when to evaluate, alert name, labels expected
# (empty list: the alert must NOT fire). Counter values grow by 60 x rate per minute.
PROMTOOL_CASES: list[tuple[str, list[dict[str, str]], str, str, list[dict[str, str]]]] = [
    ("refusal spike", [
        {"series": _req("accounts", "200", "none"), "values": "0+600x30"},          # 10 rps allowed
        {"series": _req("accounts", "401", "dpop_invalid_proof"), "values": "0+300x30"},  # 5 rps refused: 33 %
        {"series": _req("accounts", "401", "invalid_token"), "values": "0+30x30"},  # 0.5 rps: 3 %
    ], "20m", "FapiGatewayRefusalRatioHigh", [{"severity": "warning", "reason": "dpop_invalid_proof"}]),
    ("scanners hitting unknown paths page nobody", [
        {"series": _req("accounts", "200", "none"), "values": "0+600x30"},
        {"series": _req("_unmatched", "404", "no_route"), "values": "0+6000x30"},
    ], "20m", "FapiGatewayRefusalRatioHigh", []),
    ("too little traffic to mean anything", [
        {"series": _req("accounts", "401", "invalid_token"), "values": "0+6x30"},  # 0.1 rps, all refused
    ], "20m", "FapiGatewayRefusalRatioHigh", []),
    ("replay store down", [_series("gateway_replay_store_errors_total", "0+10x10", store="redis")],
     "5m", "FapiGatewayReplayStoreUnavailable", [{"severity": "critical"}]),
    ("JWKS stale", [_series("gateway_jwks_stale", "1x10", issuer="bank-as", pod="gw-0")],
     "5m", "FapiGatewayJwksStale", [{"severity": "critical", "issuer": "bank-as"}]),
    ("JWKS not refreshed for over half its max age", [
        _series("gateway_jwks_last_load_timestamp_seconds", "0x60", issuer="bank-as"),
        _series("gateway_jwks_max_stale_seconds", "3600x60", issuer="bank-as"),
    ], "40m", "FapiGatewayJwksRefreshFailing", [{"severity": "warning", "issuer": "bank-as"}]),
    ("JWKS refreshed recently", [
        _series("gateway_jwks_last_load_timestamp_seconds", "0+60x60", issuer="bank-as"),
        _series("gateway_jwks_max_stale_seconds", "3600x60", issuer="bank-as"),
    ], "40m", "FapiGatewayJwksRefreshFailing", []),
    ("AS introspection failing", [
        _series("gateway_introspection_requests_total", "0+60x20", issuer="bank-as", outcome="active"),
        _series("gateway_introspection_requests_total", "0+60x20", issuer="bank-as", outcome="error"),
    ], "15m", "FapiGatewayIntrospectionErrors", [{"severity": "critical", "issuer": "bank-as"}]),
    ("listener certificate expires in 20 days", [
        _series("gateway_certificate_not_after_timestamp_seconds", f"{20 * 86400}x5", kind="listener",
                file="/etc/gateway/tls/tls.crt"),
    ], "2m", "FapiGatewayCertificateExpiresSoon",
     [{"severity": "warning", "kind": "listener", "file": "/etc/gateway/tls/tls.crt"}]),
    ("a CA bundle expires in 3 days", [
        _series("gateway_certificate_not_after_timestamp_seconds", f"{3 * 86400}x5", kind="client_ca",
                file="/etc/gateway/ca/ob.pem"),
    ], "2m", "FapiGatewayCertificateExpiresVerySoon",
     [{"severity": "critical", "kind": "client_ca", "file": "/etc/gateway/ca/ob.pem"}]),
    ("a certificate a year away", [
        _series("gateway_certificate_not_after_timestamp_seconds", f"{365 * 86400}x5", kind="listener", file="/c"),
    ], "2m", "FapiGatewayCertificateExpiresSoon", []),
    ("upstream unreachable", [
        {"series": _req("accounts", "200", "none"), "values": "0+60x20"},
        {"series": _req("accounts", "502", "upstream_unavailable"), "values": "0+60x20"},
    ], "15m", "FapiGatewayUpstreamErrors", [{"severity": "warning", "route": "accounts"}]),
    ("access-log lines lost", [_series("gateway_access_log_dropped_lines_total", "0+5x20")],
     "12m", "FapiGatewayAccessLogLinesLost", [{"severity": "warning"}]),
]


def _promtool_test(tmp_path: Path, series: list[dict[str, str]], at: str, alert: str,
                   expected: list[dict[str, Any]], *, annotations: bool) -> str:
    rules = _rules_file(tmp_path)
    if not annotations:
        # promtool compares annotations too; most cases are about when an alert fires and with
        # which labels (the annotation templates are parsed by `promtool check rules`).
        doc = yaml.safe_load(rules.read_text())
        for g in doc["groups"]:
            for r in g["rules"]:
                r.pop("annotations", None)
        rules.write_text(yaml.safe_dump(doc, sort_keys=False))
    tests = tmp_path / "tests.yaml"
    tests.write_text(yaml.safe_dump({
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": [{
            "eval_time": at, "alertname": alert, "exp_alerts": expected,
        }]}],
    }, sort_keys=False))
    out = subprocess.run([_promtool(), "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.mark.parametrize("case", PROMTOOL_CASES, ids=[c[0] for c in PROMTOOL_CASES])
def test_promtool_alert_fires_exactly_when_it_should(
    case: tuple[str, list[dict[str, str]], str, str, list[dict[str, str]]], tmp_path: Path
) -> None:
    _, series, at, alert, expected = case
    _promtool_test(tmp_path, series, at, alert, [{"exp_labels": {"alertname": alert, **labels}} for labels in expected],
                   annotations=False)


def test_promtool_refusal_alert_says_which_reason_and_how_much(tmp_path: Path) -> None:
    _, series, at, alert, _ = PROMTOOL_CASES[0]
    description = next(r for g in one(render(CHART, ON), "PrometheusRule")["spec"]["groups"] for r in g["rules"]
                       if r["alert"] == alert)["annotations"]["description"]
    _promtool_test(tmp_path, series, at, alert, [{
        "exp_labels": {"alertname": alert, "severity": "warning", "reason": "dpop_invalid_proof"},
        "exp_annotations": {"summary": "dpop_invalid_proof: 32.26% of requests refused", "description": description},
    }], annotations=True)


# --- a live gateway's /metrics --------------------------------------------------------------

@pytest.mark.timeout(90)
def test_every_metric_of_the_dashboard_and_the_alerts_is_in_a_live_scrape(
    tmp_path: Path, threaded_upstream: ThreadedUpstream, gateway_process: Any, pki: Any,
    redis_url: str, redis_key_prefix: str,
) -> None:
    """A TLS listener with a client CA bundle, a JWKS issuer, the Redis replay store, a DPoP call
    and a refusal: then every metric name the dashboard or an alert queries must be in /metrics."""
    tokens = Tokens(tmp_path)
    tls = f", tls: {{cert: {pki.server_cert}, key: {pki.server_key}, client_ca: [{pki.ca_pem}]}}"
    cfg = config(tmp_path, threaded_upstream.url, tokens, tls=tls)
    cfg.write_text(cfg.read_text() + (
        f'dpop: {{replay: {{backend: redis, redis: {{url: "{redis_url}", key_prefix: "{redis_key_prefix}"}}}}}}\n'))
    gw: GatewayProcess = gateway_process(cfg).started()
    base = f"https://localhost:{gw.port}"
    ctx = pki.client_context(None)
    token = tokens.access_token(jkt=jwk_thumbprint(tokens.dpop_jwk))
    url = base + "/payments/1"
    assert call(url, {"Authorization": f"DPoP {token}", "DPoP": tokens.proof("GET", url, token)}, ctx) == 200
    assert call(base + "/accounts/1", ctx=ctx) == 401
    status, body = gw.admin("/metrics")
    assert status == 200
    exposed = set(re.findall(r"^# TYPE (\S+) ", body, re.M)) | set(re.findall(r"^([a-z_:][a-z0-9_:]*)[{ ]", body, re.M))

    dash = json.loads(DASHBOARD.read_text())
    rule = one(render(CHART, ON), "PrometheusRule")
    used = metric_names(dashboard_exprs(dash)) | metric_names(rule_exprs(rule))
    assert {"gateway_requests_total", "gateway_certificate_not_after_timestamp_seconds",
            "gateway_replay_store_duration_seconds_bucket", "process_cpu_seconds_total"} <= used
    missing = sorted(used - exposed - PENDING)
    assert not missing, f"used by the dashboard or the alerts but not in /metrics: {missing}"
    # The values behind the new panels are real: the listener certificate and the CA bundle are
    # there, the DPoP call went through Redis, the issuer's keys are loaded.
    assert gw.metric("gateway_certificate_not_after_timestamp_seconds", kind="listener",
                     file=str(pki.server_cert)) > 0
    assert gw.metric("gateway_certificate_not_after_timestamp_seconds", kind="client_ca", file=str(pki.ca_pem)) > 0
    assert gw.metric("gateway_replay_store_duration_seconds_count", store="redis") == 1
    assert gw.metric("gateway_jwks_stale", issuer="test-as") == 0
    assert gw.metric("gateway_jwks_last_load_timestamp_seconds", issuer="test-as") > 0
