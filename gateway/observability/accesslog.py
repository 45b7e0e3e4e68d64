"""The structured access log: one JSON line per request, written off the event loop.

The line is built only from typed fields of ``AccessRecord`` (route id, status, reason code,
client id, binding thumbprint, ...), never from raw headers, so no token, DPoP proof, secret or
PEM can reach it (OPS-01), and every request's ``x-fapi-interaction-id`` is in it (FAPI-03).

Cost on the event loop: one dict comprehension (C-level getters), one encode with a prebuilt
``JSONEncoder`` and one ``deque.append`` (lock-free). A daemon thread drains the deque every few
milliseconds and does the I/O in batches. When the backlog is full (stalled disk or stdout pipe)
lines are dropped and counted rather than blocking request handling.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _esc
from operator import attrgetter
from typing import IO, Any, Final
from urllib.parse import parse_qsl, quote

from ..config.observability import DEFAULT_ACCESS_LOG_FIELDS, AccessLogConfig, AccessLogField

__all__ = ("AccessLog", "AccessRecord", "redact_query")

log = logging.getLogger(__name__)

_MAX_PATH: Final = 2048
# Query parameters whose values are credentials somewhere (RFC 6750 §2.3, OAuth flows).
_SECRET_PARAMS: Final = frozenset(
    {
        "access_token",
        "refresh_token",
        "id_token",
        "token",
        "code",
        "client_secret",
        "client_assertion",
        "assertion",
        "password",
        "dpop",
        "request",
        "state",
        "api_key",
        "apikey",
        "key",
        "signature",
        "sig",
    }
)
# One encoder for the process: ``json.dumps`` with non-default arguments builds a new one per call.
_ENCODE: Final = json.JSONEncoder(separators=(",", ":")).encode
_DRAIN_INTERVAL_S: Final = 0.02
_PIPE_BUF: Final = 4096  # POSIX: pipe writes up to this size are atomic (lines are ASCII: json escapes)


@dataclass(slots=True)
class AccessRecord:
    """What is known about a finished request. Every field is already safe to log."""

    method: str
    path: str
    status: int
    latency_s: float
    route: str | None = None
    query: str = ""
    reason: str | None = None
    client_id: str | None = None
    binding: str | None = None
    thumbprint: str | None = None
    interaction_id: str | None = None
    upstream_status: int | None = None
    upstream_latency_s: float | None = None
    remote: str | None = None
    jti: str | None = None
    mode: str = "proxy"
    sub: str | None = None  # opt-in field: a subject can be personal data
    would_refuse: str | None = None
    limit: str | None = None
    signature_keyid: str | None = None
    signature_label: str | None = None


def redact_query(query: str) -> str:
    """The query with the values of credential-like parameters replaced by ``redacted``."""
    if not query:
        return ""
    out = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        shown = "redacted" if name.lower() in _SECRET_PARAMS else value
        out.append(f"{quote(name, safe='')}={quote(shown, safe='')}")
    return "&".join(out)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


_second: list[Any] = [-1, ""]  # (whole second, its formatted prefix): strftime once per second


def _iso_now() -> str:
    now = time.time()
    sec = int(now)
    if sec != _second[0]:
        _second[0], _second[1] = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_second[1]}.{int((now - sec) * 1000):03d}Z"


def _path(rec: AccessRecord, include_query: bool) -> str:
    path = rec.path if len(rec.path) <= _MAX_PATH else rec.path[:_MAX_PATH] + "..."
    if include_query and rec.query:
        return f"{path}?{redact_query(rec.query)}"
    return path


_GETTERS: Final[dict[AccessLogField, Callable[[AccessRecord], Any]]] = {
    "time": lambda r: _iso_now(),
    "route": attrgetter("route"),
    "method": attrgetter("method"),
    "path": lambda r: _path(r, False),
    "status": attrgetter("status"),
    "latency_ms": lambda r: _ms(r.latency_s),
    "reason": attrgetter("reason"),
    "client_id": attrgetter("client_id"),
    "binding": attrgetter("binding"),
    "thumbprint": attrgetter("thumbprint"),
    "interaction_id": attrgetter("interaction_id"),
    "upstream_status": attrgetter("upstream_status"),
    "upstream_latency_ms": lambda r: _ms(r.upstream_latency_s),
    "mode": attrgetter("mode"),
    "remote": attrgetter("remote"),
    "jti": attrgetter("jti"),
    "sub": attrgetter("sub"),
    "would_refuse": attrgetter("would_refuse"),
    "limit": attrgetter("limit"),
    "signature_keyid": attrgetter("signature_keyid"),
    "signature_label": attrgetter("signature_label"),
}


def _str(v: str | None) -> str:
    return "null" if v is None else _esc(v)


def _num(v: float | None) -> str:
    return "null" if v is None else repr(v)


def _default_line(r: AccessRecord, include_query: bool) -> str:
    """The default field set, formatted directly: about twice as fast as dict + JSONEncoder.

    Must produce the same JSON as the generic path (a test compares the two).
    """
    return (
        '{"time":' + _str(_iso_now())
        + ',"route":' + _str(r.route)
        + ',"method":' + _str(r.method)
        + ',"path":' + _str(_path(r, include_query))
        + ',"status":' + repr(r.status)
        + ',"latency_ms":' + _num(_ms(r.latency_s))
        + ',"reason":' + _str(r.reason)
        + ',"client_id":' + _str(r.client_id)
        + ',"binding":' + _str(r.binding)
        + ',"thumbprint":' + _str(r.thumbprint)
        + ',"interaction_id":' + _str(r.interaction_id)
        + ',"upstream_status":' + _num(r.upstream_status)
        + ',"upstream_latency_ms":' + _num(_ms(r.upstream_latency_s))
        + ',"mode":' + _str(r.mode)
        + ',"would_refuse":' + _str(r.would_refuse)
        + "}\n"
    )


class _Writer(threading.Thread):
    """Drains the deque into a stream in batches: one write and one flush per batch."""

    def __init__(
        self, lines: deque[str], stream: IO[str], owns_stream: bool, lost: Callable[[int], None] | None = None
    ) -> None:
        super().__init__(name="gateway-access-log", daemon=True)
        self._lost = lost
        self._lines = lines
        self._stream = stream
        self._owns = owns_stream
        self.stopping = threading.Event()

    def run(self) -> None:
        lines, stream, stopping = self._lines, self._stream, self.stopping
        failed = False
        while True:
            stop = stopping.wait(_DRAIN_INTERVAL_S)
            while lines:
                # Chunks of whole lines, each at most PIPE_BUF bytes in one write + flush: with
                # several workers on one stdout pipe, no line is ever split by another's output.
                chunk = [lines.popleft()]
                size = len(chunk[0])
                while lines and size + len(lines[0]) <= _PIPE_BUF:
                    size += len(lines[0])
                    chunk.append(lines.popleft())
                try:
                    stream.write("".join(chunk))
                    stream.flush()
                except (OSError, ValueError) as exc:
                    # A broken pipe or closed file must not kill the gateway; say so once and go on.
                    if not failed:
                        log.warning("access log write failed: %s", type(exc).__name__)
                    failed = True
                    if self._lost is not None:  # those lines are gone: counted like a full queue
                        self._lost(len(chunk))
            if stop and not lines:
                if self._owns:
                    stream.close()
                return


class AccessLog:
    """``emit(record)`` from the request handler; ``close()`` at shutdown flushes what is queued.

    ``AccessLog(cfg.observability.access_log)`` writes where the config says; tests may pass a
    ``stream``.
    """

    def __init__(self, cfg: AccessLogConfig | None = None, *, stream: IO[str] | None = None) -> None:
        cfg = cfg or AccessLogConfig()
        self.enabled = cfg.enabled
        self.dropped = 0
        # Called with the number of lines lost (queue full, or a failed write): the server points it
        # at gateway_access_log_dropped_lines_total. From the writer thread too: must be thread-safe.
        self.on_drop: Callable[[int], None] | None = None
        fields: tuple[AccessLogField, ...] = cfg.fields or DEFAULT_ACCESS_LOG_FIELDS
        getters = dict(_GETTERS)
        if cfg.include_query:
            getters["path"] = lambda r: _path(r, True)
        self._getters: tuple[tuple[str, Callable[[AccessRecord], Any]], ...] = tuple(
            (f, getters[f]) for f in fields
        )
        self._fast = fields == DEFAULT_ACCESS_LOG_FIELDS
        self._include_query = cfg.include_query
        self._max = cfg.queue_size
        self._lines: deque[str] = deque()
        owns = False
        if stream is None:
            if cfg.destination == "file" and cfg.file:
                stream = open(cfg.file, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115
                owns = True
            else:
                stream = sys.stderr if cfg.destination == "stderr" else sys.stdout
        self._writer = _Writer(self._lines, stream, owns, self._lost) if self.enabled else None
        if self._writer is not None:
            self._writer.start()

    def emit(self, rec: AccessRecord) -> None:
        if self._writer is None:
            return
        if len(self._lines) >= self._max:
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop(1)
            return
        if self._fast:
            self._lines.append(_default_line(rec, self._include_query))
        else:
            self._lines.append(_ENCODE({name: get(rec) for name, get in self._getters}) + "\n")

    def _lost(self, n: int) -> None:
        on_drop = self.on_drop
        if on_drop is not None:
            on_drop(n)

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush queued lines and stop the writer (idempotent)."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        writer.stopping.set()
        writer.join(timeout_s)
