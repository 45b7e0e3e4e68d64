"""Access log: one JSON line per request, typed fields only, never credentials (OPS-01, FAPI-03)."""

from __future__ import annotations

import io
import json
import threading

import pytest

from gateway.config.observability import AccessLogConfig
from gateway.observability.accesslog import AccessLog, AccessRecord, redact_query
from gateway.observability.logsetup import redact


def _record(**over: object) -> AccessRecord:
    base: dict[str, object] = dict(
        method="POST",
        path="/accounts/1",
        query="access_token=SECRETTOKEN&page=2",
        status=201,
        latency_s=0.0123456,
        route="accounts",
        reason=None,
        client_id="client-1",
        binding="dpop",
        thumbprint="0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
        interaction_id="c770aef3-6784-41f7-8e0e-ff5f97bddb3a",
        upstream_status=201,
        upstream_latency_s=0.01,
        remote="127.0.0.1",
        jti="j1",
    )
    base.update(over)
    return AccessRecord(**base)  # type: ignore[arg-type]


def _lines(cfg: AccessLogConfig, *records: AccessRecord) -> list[dict[str, object]]:
    buf = io.StringIO()
    buf.close = lambda: None  # type: ignore[method-assign]
    log = AccessLog(cfg, stream=buf)
    for r in records:
        log.emit(r)
    log.close()
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_default_fields_one_line_per_request() -> None:
    """FAPI-03: the interaction id is in the line; the query (with its token) is not."""
    (line,) = _lines(AccessLogConfig(), _record())
    assert line["route"] == "accounts" and line["method"] == "POST" and line["status"] == 201
    assert line["path"] == "/accounts/1"
    assert line["latency_ms"] == 12.346 and line["upstream_latency_ms"] == 10.0
    assert line["interaction_id"] == "c770aef3-6784-41f7-8e0e-ff5f97bddb3a"
    assert line["binding"] == "dpop" and line["client_id"] == "client-1"
    assert str(line["time"]).endswith("Z")
    assert "SECRETTOKEN" not in json.dumps(line)
    assert "remote" not in line and "jti" not in line


def test_configured_fields_and_order() -> None:
    (line,) = _lines(
        AccessLogConfig(fields=("status", "reason", "remote")), _record(status=401, reason="dpop_replay")
    )
    assert list(line) == ["status", "reason", "remote"]
    assert line == {"status": 401, "reason": "dpop_replay", "remote": "127.0.0.1"}


def test_include_query_redacts_credentials() -> None:
    (line,) = _lines(AccessLogConfig(include_query=True), _record())
    assert line["path"] == "/accounts/1?access_token=redacted&page=2"
    assert redact_query("code=abc&client_secret=s3&x=1") == "code=redacted&client_secret=redacted&x=1"


def test_disabled_writes_nothing() -> None:
    assert _lines(AccessLogConfig(enabled=False), _record()) == []


def test_full_queue_drops_instead_of_blocking() -> None:
    gate = threading.Event()

    class Stalled(io.StringIO):
        def write(self, s: str) -> int:
            gate.wait(10)
            return super().write(s)

    stream = Stalled()
    log = AccessLog(AccessLogConfig(queue_size=100), stream=stream)
    for _ in range(1000):
        log.emit(_record())
    assert log.dropped >= 1000 - 100 - 2
    gate.set()
    log.close()


def test_file_destination(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "access.log"  # type: ignore[operator]
    log = AccessLog(AccessLogConfig(destination="file", file=str(path)))
    log.emit(_record())
    log.emit(_record(status=404))
    log.close()
    assert [json.loads(x)["status"] for x in path.read_text().splitlines()] == [201, 404]


def test_redact_scrubs_jwts_auth_values_and_pem() -> None:
    jwt = "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJhIn0.sig-part_1"
    pem = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----"
    text = f"failed for {jwt}; header DPoP abcdefgh12345678 {pem}"
    out = redact(text)
    assert jwt not in out and "abcdefgh12345678" not in out and "MIIB" not in out


def test_writes_are_whole_lines_within_pipe_buf() -> None:
    """Several workers share one stdout pipe: each write must be atomic (<= PIPE_BUF, whole lines)."""
    writes: list[str] = []

    class Recorder(io.StringIO):
        def write(self, s: str) -> int:
            writes.append(s)
            return len(s)

    log = AccessLog(AccessLogConfig(), stream=Recorder())
    for i in range(500):
        log.emit(_record(path=f"/accounts/{i}"))
    log.close()
    assert sum(w.count("\n") for w in writes) == 500
    assert all(w.endswith("\n") and len(w.encode()) <= 4096 for w in writes)
    assert len(writes) < 500  # batched, not one syscall per line


@pytest.mark.parametrize("include_query", [False, True])
def test_fast_default_line_equals_the_generic_encoding(include_query: bool) -> None:
    """The default field set has a hand-written formatter; it must match dict + json exactly."""
    from gateway.config.observability import DEFAULT_ACCESS_LOG_FIELDS

    records = [
        _record(),
        _record(route=None, client_id=None, binding=None, thumbprint=None, upstream_status=None,
                upstream_latency_s=None, reason="no_route", status=404),
        _record(path='/ünïcode/"quoted"\\back\nline', client_id="tpp\u2028x", latency_s=1e-7),
    ]
    fast = _lines(AccessLogConfig(include_query=include_query), *records)
    # Same fields in another order forces the generic path; compare as dicts minus the clock.
    generic_cfg = AccessLogConfig(include_query=include_query, fields=tuple(reversed(DEFAULT_ACCESS_LOG_FIELDS)))
    generic = _lines(generic_cfg, *records)
    for a, b in zip(fast, generic, strict=True):
        a.pop("time"), b.pop("time")
        assert a == b
