"""/metrics beyond requests (issue #21 item 7, issue #19 §4): build info, process metrics, the
expiry of the listener certificate and every CA bundle, access-log lines lost; merged correctly
across worker processes."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import parse_config
from gateway.config.observability import AccessLogConfig
from gateway.observability.accesslog import AccessLog, AccessRecord
from gateway.observability.certs import CertificateExpiry, certificate_files
from gateway.observability.metrics import Metrics
from gateway.observability.multiprocess import merge_expositions

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str | bytes) -> Samples:
    raw = text.decode() if isinstance(text, bytes) else text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(raw) for s in fam.samples}


def named(s: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in s.items() if n == name}


def cert_pem(days: int) -> tuple[bytes, float]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test {days}")])
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    not_after = now + dt.timedelta(days=days)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(not_after).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), not_after.timestamp()


def test_build_info_and_process_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_BUILD_REVISION", "3f2a9c1")
    s = samples(Metrics().render())
    ((labels, value),) = named(s, "gateway_build_info").items()
    info = dict(labels)
    assert value == 1 and info["revision"] == "3f2a9c1" and info["version"] and info["python"].startswith("3.")
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                 "process_start_time_seconds"):
        assert named(s, name), name
    # A revision that is not one (a label is no place for arbitrary environment content).
    monkeypatch.setenv("GATEWAY_BUILD_REVISION", "x" * 100)
    ((labels, _),) = named(samples(Metrics().render()), "gateway_build_info").items()
    assert dict(labels)["revision"] == "unknown"


def test_worker_merge_keeps_info_and_limits_and_sums_the_rest() -> None:
    a = b"""# TYPE gateway_build_info gauge
gateway_build_info{python="3.11.7",revision="r1",version="0.1.0"} 1.0
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 2.0
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 100.0
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1000.0
# TYPE process_max_fds gauge
process_max_fds 1024.0
# TYPE gateway_certificate_not_after_timestamp_seconds gauge
gateway_certificate_not_after_timestamp_seconds{file="/c.pem",kind="listener"} 5000.0
"""
    b = a.replace(b"1000.0", b"1200.0").replace(b" 2.0", b" 3.0")
    s = samples(merge_expositions([a.decode(), b.decode()]))
    assert named(s, "gateway_build_info") == {(("python", "3.11.7"), ("revision", "r1"), ("version", "0.1.0")): 1.0}
    assert s[("process_cpu_seconds_total", ())] == 5.0
    assert s[("process_resident_memory_bytes", ())] == 200.0  # the whole gateway's RSS
    assert s[("process_start_time_seconds", ())] == 1200.0
    assert s[("process_max_fds", ())] == 1024.0
    assert s[("gateway_certificate_not_after_timestamp_seconds", (("file", "/c.pem"), ("kind", "listener")))] == 5000


def test_certificate_expiry_is_the_earliest_in_a_bundle_and_follows_the_file(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    soon, soon_at = cert_pem(10)
    later, _ = cert_pem(400)
    bundle.write_bytes(later + soon)
    leaf = tmp_path / "leaf.pem"
    leaf_pem, leaf_at = cert_pem(90)
    leaf.write_bytes(leaf_pem)
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate\n")
    files = [("listener", str(leaf)), ("client_ca", str(bundle)), ("issuer_ca", str(broken))]
    m = Metrics()
    m.watch_certificates(lambda: files)
    s = samples(m.render())
    expiry = named(s, "gateway_certificate_not_after_timestamp_seconds")
    assert expiry == {(("file", str(leaf)), ("kind", "listener")): leaf_at,
                      (("file", str(bundle)), ("kind", "client_ca")): soon_at}
    errors = named(s, "gateway_certificate_read_errors")
    assert errors[(("file", str(broken)), ("kind", "issuer_ca"))] == 1
    assert errors[(("file", str(leaf)), ("kind", "listener"))] == 0
    # The certificate is renewed on disk (a hot reload): the next scrape says so.
    renewed, renewed_at = cert_pem(365)
    leaf.write_bytes(renewed + b"\n")  # one byte longer: the size changes even within one mtime tick
    expiry = named(samples(m.render()), "gateway_certificate_not_after_timestamp_seconds")
    assert expiry[(("file", str(leaf)), ("kind", "listener"))] == renewed_at
    leaf.unlink()
    errors = named(samples(m.render()), "gateway_certificate_read_errors")
    assert errors[(("file", str(leaf)), ("kind", "listener"))] == 1


def test_certificate_files_of_a_config(pki: Any, tmp_path: Path) -> None:
    cfg = parse_config(f"""
listen:
  tls: {{cert: {pki.server_cert}, key: {pki.server_key}, client_ca: [{pki.ca_pem}, {pki.other_ca_pem}]}}
upstreams:
  core: {{url: "https://core.bank.internal", ca: {pki.ca_pem}}}
issuers:
  - {{name: as, issuer: "https://as.bank.example", jwks_uri: "https://as.bank.example/jwks", ca: {pki.ca_pem}}}
routes:
  - {{id: r, match: {{path_prefix: /}}, upstream: core, auth: {{issuers: [as], audience: x, sender_constraint: mtls}}}}
""", source="t.yaml")
    assert certificate_files(cfg) == [
        ("listener", str(pki.server_cert)), ("client_ca", str(pki.ca_pem)), ("client_ca", str(pki.other_ca_pem)),
        ("upstream_ca", str(pki.ca_pem)), ("issuer_ca", str(pki.ca_pem)),
    ]
    expiry = CertificateExpiry(lambda: certificate_files(cfg))
    (fam, _) = list(expiry.collect())
    assert {s.labels["kind"] for s in fam.samples} == {"listener", "client_ca", "upstream_ca", "issuer_ca"}


class _StalledStream:
    """stdout of a process whose reader stopped reading: write blocks until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait(10)
        return len(text)

    def flush(self) -> None:
        pass


class _BrokenStream:
    def write(self, text: str) -> int:
        raise BrokenPipeError

    def flush(self) -> None:
        pass


def _record() -> AccessRecord:
    return AccessRecord(method="GET", path="/a", status=200, latency_s=0.001, route="r")


def test_dropped_access_log_lines_are_counted() -> None:
    m = Metrics()
    stream = _StalledStream()
    log = AccessLog(AccessLogConfig(queue_size=100), stream=stream)  # type: ignore[arg-type]
    log.on_drop = m.access_log_lost
    try:
        for _ in range(400):
            log.emit(_record())
        assert log.dropped >= 400 - 100 - 64  # the queue, and at most one chunk in the writer's hands
        assert samples(m.render())[("gateway_access_log_dropped_lines_total", ())] == log.dropped
    finally:
        stream.release.set()
        log.close()
    # Lines whose write failed (a broken pipe) are lost too, and counted the same way.
    m = Metrics()
    log = AccessLog(AccessLogConfig(), stream=_BrokenStream())  # type: ignore[arg-type]
    log.on_drop = m.access_log_lost
    for _ in range(5):
        log.emit(_record())
    log.close()
    assert samples(m.render())[("gateway_access_log_dropped_lines_total", ())] == 5


async def test_jwks_staleness_is_read_from_the_running_verifier(tmp_path: Path) -> None:
    import json
    from types import SimpleNamespace

    import jwt as pyjwt

    from gateway.config.issuers import IssuerConfig
    from gateway.verify import AccessTokenVerifier

    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "ES256", "use": "sig"}]}))
    now = [1_900_000_000.0]
    cfg = IssuerConfig.model_validate({"name": "bank-as", "issuer": "https://as.bank.example",
                                       "jwks_file": str(jwks), "jwks_max_stale_s": 3600})
    verifier = AccessTokenVerifier([cfg], clock=lambda: now[0])
    await verifier.start()
    try:
        m = Metrics()
        m.watch_state(lambda: SimpleNamespace(revocation=SimpleNamespace(tokens=verifier)))
        s = samples(m.render())
        label = (("issuer", "bank-as"),)
        assert s[("gateway_jwks_last_load_timestamp_seconds", label)] == now[0]
        assert s[("gateway_jwks_max_stale_seconds", label)] == 3600
        assert s[("gateway_jwks_stale", label)] == 0
        now[0] += 3601  # no successful refresh for longer than jwks_max_stale_s
        assert samples(m.render())[("gateway_jwks_stale", label)] == 1
    finally:
        await verifier.close()
