"""Metrics: closed label sets, separate registries, the values the hot path moves (OPS-01)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.metrics import Metrics, method_class

PER_MODE = ("gateway_requests_total", "gateway_request_duration_seconds", "gateway_auth_duration_seconds")


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: Metrics, name: str, **labels: str) -> float:
    if name.startswith(PER_MODE) and "route" in labels:
        labels.setdefault("mode", "proxy")  # these series are per mode (issue #15); these tests: the proxy
    return samples(m).get((name, tuple(sorted(labels.items()))), 0.0)


def test_request_counter_and_histograms_move() -> None:
    m = Metrics(route_ids=["accounts"])
    rm = m.route("accounts")
    rm.finished("GET", 200, None, 0.004, auth_s=0.0002, upstream_s=0.003)
    rm.finished("POST", 401, "dpop_replay", 0.001, auth_s=0.0005)
    rm.finished("GET", 200, None, 0.002)
    assert (
        value(m, "gateway_requests_total", route="accounts", method="read", status="200", reason="none") == 2
    )
    assert (
        value(
            m, "gateway_requests_total", route="accounts", method="write", status="401", reason="dpop_replay"
        )
        == 1
    )
    assert value(m, "gateway_request_duration_seconds_count", route="accounts") == 3
    assert value(m, "gateway_auth_duration_seconds_count", route="accounts") == 2
    assert value(m, "gateway_upstream_duration_seconds_count", route="accounts") == 1


def test_unmatched_route_and_unknown_method() -> None:
    m = Metrics()
    m.route(None).finished("BREW", 404, "no_route", 0.001)
    assert (
        value(
            m, "gateway_requests_total", route="_unmatched", method="other", status="404", reason="no_route"
        )
        == 1
    )
    assert method_class("DELETE") == "write" and method_class("HEAD") == "read"


def test_label_values_that_are_not_codes_become_other() -> None:
    """A token or subject passed by mistake as a label never reaches the scrape (OPS-01)."""
    m = Metrics()
    token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln"
    m.route("r").finished("GET", 401, token, 0.001)
    m.jwks_fetch("https://as.example/?" + token, ok=False)
    m.tls_handshake_failed("Alice Smith")
    body = m.render().decode()
    assert token not in body and "Alice" not in body and "as.example" not in body
    assert value(m, "gateway_requests_total", route="r", method="read", status="401", reason="other") == 1
    assert value(m, "gateway_jwks_fetches_total", issuer="other", outcome="error") == 1


def test_reason_cardinality_is_capped() -> None:
    m = Metrics()
    rm = m.route("r")
    for i in range(500):
        rm.finished("GET", 401, f"reason_{i}", 0.001)
    reasons = {
        lbl
        for (name, labels), _ in samples(m).items()
        if name == "gateway_requests_total"
        for k, lbl in labels
        if k == "reason"
    }
    assert len(reasons) <= 129 and "other" in reasons


def test_stage_events() -> None:
    m = Metrics(issuers=["bank-as"])
    m.introspection_call("bank-as", "active")
    m.introspection_cache_lookup("bank-as", hit=True)
    m.introspection_cache_lookup("bank-as", hit=False)
    m.jwks_fetch("bank-as", ok=True)
    m.replay_store_error("redis")
    m.front_proxy_cert_dropped("X-Forwarded-Client-Cert")
    m.tls_handshake_failed("client_cert_missing")
    m.config_reload(ok=False)
    m.in_flight.inc()
    assert value(m, "gateway_requests_in_flight") == 1
    m.in_flight.dec()
    assert value(m, "gateway_requests_in_flight") == 0
    assert value(m, "gateway_introspection_requests_total", issuer="bank-as", outcome="active") == 1
    assert value(m, "gateway_introspection_cache_total", issuer="bank-as", result="hit") == 1
    assert value(m, "gateway_introspection_cache_total", issuer="bank-as", result="miss") == 1
    assert value(m, "gateway_jwks_fetches_total", issuer="bank-as", outcome="ok") == 1
    assert value(m, "gateway_replay_store_errors_total", store="redis") == 1
    assert value(m, "gateway_front_proxy_cert_headers_dropped_total", header="x-forwarded-client-cert") == 1
    assert value(m, "gateway_tls_handshake_failures_total", reason="client_cert_missing") == 1
    assert value(m, "gateway_config_reloads_total", result="failure") == 1
    assert value(m, "gateway_config_reloads_total", result="success") == 0


def test_two_instances_do_not_share_state() -> None:
    a, b = Metrics(), Metrics()
    a.route("x").finished("GET", 200, None, 0.001)
    assert value(a, "gateway_requests_total", route="x", method="read", status="200", reason="none") == 1
    assert value(b, "gateway_requests_total", route="x", method="read", status="200", reason="none") == 0


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    m = Metrics()
    rm = m.route("x")
    for v in (0.0005, 0.0007, 0.003, 100.0):
        rm.finished("GET", 200, None, v)
    assert value(m, "gateway_request_duration_seconds_bucket", route="x", le="0.0005") == 1
    assert value(m, "gateway_request_duration_seconds_bucket", route="x", le="0.001") == 2
    assert value(m, "gateway_request_duration_seconds_bucket", route="x", le="0.005") == 3
    assert value(m, "gateway_request_duration_seconds_bucket", route="x", le="30.0") == 3
    assert value(m, "gateway_request_duration_seconds_bucket", route="x", le="+Inf") == 4
    assert abs(value(m, "gateway_request_duration_seconds_sum", route="x") - 100.0042) < 1e-9


def test_latency_histograms_can_be_switched_off() -> None:
    m = Metrics(latency_histograms=False)
    m.route("x").finished("GET", 200, None, 0.001, auth_s=0.001, upstream_s=0.001)
    assert value(m, "gateway_request_duration_seconds_count", route="x") == 0
    assert value(m, "gateway_requests_total", route="x", method="read", status="200", reason="none") == 1


def test_worker_expositions_merge() -> None:
    """--workers N: any worker's /metrics sums every worker's numbers (observability/multiprocess)."""
    from gateway.observability.multiprocess import merge_expositions

    a, b = Metrics(), Metrics()
    a.route("r").finished("GET", 200, None, 0.002)
    b.route("r").finished("GET", 200, None, 0.004)
    b.route("r").finished("POST", 403, "insufficient_scope", 0.001)
    a.jwks_fetch("as", ok=True)
    b.config_reload(ok=True)
    merged = Metrics()
    merged.render = lambda: merge_expositions([a.render().decode(), b.render().decode()])  # type: ignore[method-assign]
    ok = {"route": "r", "method": "read", "status": "200", "reason": "none"}
    assert value(merged, "gateway_requests_total", **ok) == 2
    assert value(merged, "gateway_requests_total", route="r", method="write", status="403",
                 reason="insufficient_scope") == 1
    assert value(merged, "gateway_request_duration_seconds_bucket", route="r", le="0.005") == 3
    assert value(merged, "gateway_jwks_fetches_total", issuer="as", outcome="ok") == 1
    assert value(merged, "gateway_config_reloads_total", result="success") == 1
    # A timestamp gauge is the latest of the workers', not a sum.
    ts = value(merged, "gateway_config_last_reload_success_timestamp_seconds")
    assert ts == max(value(a, "gateway_config_last_reload_success_timestamp_seconds"),
                     value(b, "gateway_config_last_reload_success_timestamp_seconds"))
