"""Writes the chart's Grafana dashboard, helm/fapi-gateway/dashboards/fapi-gateway.json.

    .venv/bin/python helm/dashboard.py          # after changing a panel; the chart test compares

The JSON is generated so that every panel has the same shape (datasource and job variables, units,
legends) and so that a test can list every metric the dashboard uses (tests/ops/test_dashboards.py
asserts each one exists in a live gateway's /metrics).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "fapi-gateway" / "dashboards" / "fapi-gateway.json"

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job"'
RATE = "$__rate_interval"


def _target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref}
    if instant:
        t.update(instant=True, range=False, format="table")
    return t


class Layout:
    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.row_h = 0
        self.next_id = 1

    def _place(self, w: int, h: int) -> dict[str, int]:
        if self.x + w > 24:
            self.y += self.row_h
            self.x, self.row_h = 0, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def row(self, title: str) -> None:
        if self.x:
            self.y += self.row_h
        self.x, self.row_h = 0, 0
        self.panels.append({"type": "row", "title": title, "id": self.next_id, "collapsed": False,
                            "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1}, "panels": []})
        self.next_id += 1
        self.y += 1

    def panel(self, kind: str, title: str, targets: list[dict[str, Any]], *, unit: str = "short", w: int = 12,
              h: int = 8, description: str = "", stack: bool = False, thresholds: list[Any] | None = None,
              decimals: int | None = None) -> None:
        for i, t in enumerate(targets):
            t["refId"] = chr(ord("A") + i)
        defaults: dict[str, Any] = {"unit": unit}
        if decimals is not None:
            defaults["decimals"] = decimals
        if thresholds is not None:
            defaults["thresholds"] = {"mode": "absolute", "steps": thresholds}
            defaults["color"] = {"mode": "thresholds"}
        if kind == "timeseries":
            defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if stack else 0,
                                  "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                                  "showPoints": "never", "spanNulls": False}
        p: dict[str, Any] = {
            "type": kind, "title": title, "id": self.next_id, "datasource": DS,
            "gridPos": self._place(w, h), "targets": targets, "description": description,
            "fieldConfig": {"defaults": defaults, "overrides": []},
        }
        if kind == "timeseries":
            p["options"] = {"legend": {"displayMode": "table", "placement": "right", "calcs": ["mean", "max"],
                                       "showLegend": True},
                            "tooltip": {"mode": "multi", "sort": "desc"}}
        elif kind == "stat":
            p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                            "colorMode": "value", "graphMode": "area", "textMode": "auto"}
        elif kind == "table":
            p["options"] = {"showHeader": True, "sortBy": [{"displayName": "Value", "desc": False}]}
            p["transformations"] = [{"id": "organize", "options": {
                "excludeByName": {"Time": True, "__name__": True, "job": True, "instance": True, "pod": True,
                                  "namespace": True, "container": True, "endpoint": True, "service": True}}}]
        self.panels.append(p)
        self.next_id += 1


def _quantile(q: float, metric: str, by: str = "") -> str:
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[{RATE}])))"


def build() -> dict[str, Any]:
    L = Layout()
    refused = f'{SEL}, reason!="none", status=~"4.."'
    # --- overview ---------------------------------------------------------------------------
    L.row("Overview")
    L.panel("stat", "Requests / s", [_target(f"sum(rate(gateway_requests_total{{{SEL}}}[{RATE}]))")],
            unit="reqps", w=4, h=4)
    L.panel("stat", "Refused (4xx with a reason)", [_target(
        f"sum(rate(gateway_requests_total{{{refused}}}[{RATE}])) / "
        f"sum(rate(gateway_requests_total{{{SEL}}}[{RATE}]))")],
        unit="percentunit", w=4, h=4, decimals=1,
        thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 0.1},
                    {"color": "red", "value": 0.3}])
    L.panel("stat", "p99 latency", [_target(_quantile(0.99, "gateway_request_duration_seconds"))], unit="s", w=4, h=4)
    L.panel("stat", "In flight", [_target(f"sum(gateway_requests_in_flight{{{SEL}}})")], w=4, h=4)
    L.panel("stat", "Routes in report-only mode", [_target(f"max(gateway_routes_report_only{{{SEL}}})")], w=4, h=4,
            description="Routes that log and count what they would refuse but forward it (auth.enforcement: "
                        "report). Anything above 0 in production is a decision someone took.",
            thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 1}])
    L.panel("stat", "Soonest certificate expiry", [_target(
        f"min((gateway_certificate_not_after_timestamp_seconds{{{SEL}}} - time()) / 86400)")],
        unit="d", w=4, h=4, decimals=0,
        thresholds=[{"color": "red", "value": None}, {"color": "orange", "value": 7}, {"color": "green", "value": 30}])
    # --- requests and refusals --------------------------------------------------------------
    L.row("Requests and refusals")
    L.panel("timeseries", "Requests by route", [_target(
        f"sum by (route) (rate(gateway_requests_total{{{SEL}}}[{RATE}]))", "{{route}}")], unit="reqps", stack=True)
    L.panel("timeseries", "Refusals by reason", [_target(
        f"sum by (reason) (rate(gateway_requests_total{{{refused}}}[{RATE}]))", "{{reason}}")], unit="reqps",
        stack=True, description="Reason codes are the access log's and the refusal's (README: Errors the client "
                                "sees); `gateway explain` replays one request and says why.")
    L.panel("timeseries", "Refusals by route and reason", [_target(
        f"sum by (route, reason) (rate(gateway_requests_total{{{refused}}}[{RATE}]))", "{{route}} {{reason}}")],
        unit="reqps")
    L.panel("timeseries", "Would refuse (report-only routes)", [_target(
        f"sum by (route, reason) (rate(gateway_would_refuse_total{{{SEL}}}[{RATE}]))", "{{route}} {{reason}}")],
        unit="reqps", description="Requests a report-only route forwarded although enforcement would have "
                                  "refused them: watch this reach zero before switching the route to enforce.")
    L.panel("timeseries", "DPoP nonce challenges", [_target(
        f'sum by (route) (rate(gateway_requests_total{{{SEL}, reason="dpop_nonce_required"}}[{RATE}]))',
        "{{route}}")], unit="reqps", description="401 use_dpop_nonce answers (RFC 9449 §8): normal once per "
                                                 "client and nonce period; a flood means clients do not retry.")
    L.panel("timeseries", "Upstream errors", [
        _target(f'sum by (route, reason) (rate(gateway_requests_total{{{SEL}, '
                f'reason=~"upstream_unavailable|upstream_timeout"}}[{RATE}]))', "{{route}} {{reason}}"),
        _target(f'sum by (route, status) (rate(gateway_requests_total{{{SEL}, reason="none", '
                f'status=~"5.."}}[{RATE}]))', "{{route}} upstream {{status}}")],
        unit="reqps")
    # --- latency ----------------------------------------------------------------------------
    L.row("Latency")
    L.panel("timeseries", "p50 / p99 by stage", [
        _target(_quantile(0.5, "gateway_request_duration_seconds"), "end to end p50"),
        _target(_quantile(0.99, "gateway_request_duration_seconds"), "end to end p99"),
        _target(_quantile(0.5, "gateway_auth_duration_seconds"), "auth decision p50"),
        _target(_quantile(0.99, "gateway_auth_duration_seconds"), "auth decision p99"),
        _target(_quantile(0.5, "gateway_upstream_duration_seconds"), "upstream p50"),
        _target(_quantile(0.99, "gateway_upstream_duration_seconds"), "upstream p99"),
        _target(_quantile(0.5, "gateway_replay_store_duration_seconds"), "replay store p50"),
        _target(_quantile(0.99, "gateway_replay_store_duration_seconds"), "replay store p99")],
        unit="s", description="Per-stage detail of one request (credentials, token, binding, policy) is in "
                              "the traces (observability.tracing).")
    L.panel("timeseries", "p99 by route", [
        _target(_quantile(0.99, "gateway_request_duration_seconds", "route"), "{{route}}"),
        _target(_quantile(0.99, "gateway_auth_duration_seconds", "route"), "{{route}} auth")], unit="s")
    # --- dependencies -----------------------------------------------------------------------
    L.row("Authorization server, keys and replay store")
    L.panel("timeseries", "Introspection cache hit ratio", [_target(
        f'sum by (issuer) (rate(gateway_introspection_cache_total{{{SEL}, result="hit"}}[{RATE}])) / '
        f"sum by (issuer) (rate(gateway_introspection_cache_total{{{SEL}}}[{RATE}]))", "{{issuer}}")],
        unit="percentunit", w=8)
    L.panel("timeseries", "Introspection calls", [_target(
        f"sum by (issuer, outcome) (rate(gateway_introspection_requests_total{{{SEL}}}[{RATE}]))",
        "{{issuer}} {{outcome}}")], unit="reqps", w=8)
    L.panel("timeseries", "JWKS fetches", [_target(
        f"sum by (issuer, outcome) (increase(gateway_jwks_fetches_total{{{SEL}}}[{RATE}]))",
        "{{issuer}} {{outcome}}")], w=8)
    L.panel("timeseries", "Key set age vs its max age", [
        _target(f"max by (issuer) (time() - gateway_jwks_last_load_timestamp_seconds{{{SEL}}})", "{{issuer}} age"),
        _target(f"max by (issuer) (gateway_jwks_max_stale_seconds{{{SEL}}})", "{{issuer}} max")],
        unit="s", w=8, description="Past its max age (issuers[].jwks_max_stale_s) the key set is no longer "
                                   "used and the issuer's tokens get 503.")
    L.panel("timeseries", "Replay store latency", [
        _target(_quantile(0.5, "gateway_replay_store_duration_seconds", "store"), "{{store}} p50"),
        _target(_quantile(0.99, "gateway_replay_store_duration_seconds", "store"), "{{store}} p99")],
        unit="s", w=8)
    L.panel("timeseries", "Replay store errors", [_target(
        f"sum by (store) (rate(gateway_replay_store_errors_total{{{SEL}}}[{RATE}]))", "{{store}}")],
        unit="reqps", w=8, description="Each one is a DPoP request refused with 503 (fail closed).")
    # --- TLS, certificates, process ---------------------------------------------------------
    L.row("TLS, certificates and the process")
    L.panel("table", "Certificates: days left", [_target(
        f"(gateway_certificate_not_after_timestamp_seconds{{{SEL}}} - time()) / 86400", instant=True)],
        unit="d", decimals=0, w=12,
        thresholds=[{"color": "red", "value": None}, {"color": "orange", "value": 7}, {"color": "green", "value": 30}])
    L.panel("timeseries", "TLS handshake failures", [_target(
        f"sum by (reason) (rate(gateway_tls_handshake_failures_total{{{SEL}}}[{RATE}]))", "{{reason}}")],
        unit="reqps", w=12)
    L.panel("timeseries", "Connections", [
        _target(f"sum(gateway_connections_open{{{SEL}}})", "open"),
        _target(f"sum by (reason) (rate(gateway_connections_closed_total{{{SEL}}}[{RATE}]))", "closed: {{reason}}")],
        w=8)
    L.panel("timeseries", "CPU and memory", [
        _target(f"sum by (pod) (rate(process_cpu_seconds_total{{{SEL}}}[{RATE}]))", "{{pod}} CPU cores"),
        _target(f"sum by (pod) (process_resident_memory_bytes{{{SEL}}}) / 1e9", "{{pod}} RSS GB")], w=8)
    L.panel("timeseries", "Access-log lines lost, config reloads", [
        _target(f"sum(increase(gateway_access_log_dropped_lines_total{{{SEL}}}[{RATE}]))", "access-log lines lost"),
        _target(f"sum by (result) (increase(gateway_config_reloads_total{{{SEL}}}[{RATE}]))", "reload {{result}}")],
        w=8)
    L.panel("table", "Versions", [_target(f"count by (version, python, revision) (gateway_build_info{{{SEL}}})",
                                          instant=True)], w=24, h=5)
    return {
        "uid": "fapi-gateway",
        "title": "FAPI gateway",
        "description": "Requests, refusals by reason, latency by stage, authorization server, keys, replay "
                       "store, certificates. Shipped with the fapi-gateway Helm chart.",
        "tags": ["fapi-gateway", "oauth", "dpop", "mtls"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "utc",
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1},
            {"name": "job", "label": "Job", "type": "query", "datasource": DS,
             "query": {"query": "label_values(gateway_build_info, job)", "refId": "job"},
             "definition": "label_values(gateway_build_info, job)", "refresh": 2, "includeAll": True,
             "multi": True, "allValue": ".+", "current": {}, "hide": 0, "sort": 1},
        ]},
        "annotations": {"list": []},
        "panels": L.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT}")
