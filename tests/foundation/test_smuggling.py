"""Request smuggling and HTTP/1.1 framing, both directions, against a real running gateway (issue #14).

* client -> gateway: raw bytes over real TLS sockets to the public listener (aiohttp, llhttp in C);
  each case asserts the exact statuses answered on the connection, whether the gateway closed it,
  and exactly which requests (request line, body) the raw recording upstream received.
* upstream -> gateway: a raw upstream (tests/foundation/rawupstream.py) answers scripted bytes to
  the gateway's own HTTP/1.1 client (gateway/proxy/http1.py, httptools/llhttp); the client must get
  the documented status, never another request's answer, and a bad upstream connection is never
  used again (the next request arrives on a new upstream connection).

The table of cases, outcomes and RFC 9112 rules is benchmarks/SMUGGLING.md
(``test_every_case_is_documented`` keeps the two in step). One gateway serves the whole module, so
the suite takes a few seconds. test_hardening.py keeps its older, looser checks (PRX-06..18).
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import pytest
import pytest_asyncio

from gateway.config import parse_config
from gateway.server import GatewayServer
from tests.conftest import Pki, gateway_yaml
from tests.foundation.rawupstream import Closing, Scripted, ok

pytestmark = pytest.mark.timeout(60)
# The async tests share the module's gateway, hence its event loop.
ON_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")

DOC = Path(__file__).resolve().parents[2] / "benchmarks" / "SMUGGLING.md"

ROUTES = """
routes:
  - id: open
    match: {{path_prefix: /o}}
    upstream: {url}
    auth: none
  - id: protected
    match: {{path_prefix: /p}}
    upstream: {url}
    auth:
      issuers: [as]
      audience: https://api.example
issuers:
  - name: as
    issuer: https://as.example
    jwks_file: {jwks}
"""

H = b"Host: localhost\r\n"


def req(line: bytes, *headers: bytes, body: bytes = b"") -> bytes:
    return line + b"\r\n" + H + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


def chunked(line: bytes, body: bytes, *headers: bytes) -> bytes:
    return req(line, b"Transfer-Encoding: chunked", *headers, body=body)


NEXT = b"GET /o/next HTTP/1.1\r\n" + H + b"\r\n"  # an innocent request pipelined behind a bad one
INNER = b"GET /o/smuggled HTTP/1.1\r\n" + H + b"\r\n"  # a request hidden in a body


@dataclass(frozen=True)
class Case:
    raw: bytes
    statuses: tuple[int, ...]
    closed: bool  # the gateway closes the connection (at once) after its answers
    upstream: tuple[tuple[bytes, bytes], ...] = ()  # (request line, body) the upstream received
    conn_close: bool | None = None  # the last answer carries ``Connection: close``
    sni: str = "localhost"


U_POST = ((b"POST /o HTTP/1.1", b"hello"),)
U_GET = ((b"GET /o HTTP/1.1", b""),)
REFUSED = Case(b"", (400,), True)


def refused(raw: bytes, status: int = 400) -> Case:
    return Case(raw, (status,), True)


P = b"POST /o HTTP/1.1"
CLIENT: dict[str, Case] = {
    # -- §6.1/§6.3 Content-Length and Transfer-Encoding together, duplicates ----------------------
    "cl-te": refused(req(P, b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + NEXT)),
    "te-cl": refused(req(P, b"Transfer-Encoding: chunked", b"Content-Length: 5", body=b"0\r\n\r\n" + NEXT)),
    "cl-dup-same": refused(req(P, b"Content-Length: 5", b"Content-Length: 5", body=b"hello")),
    "cl-dup-diff": refused(req(P, b"Content-Length: 5", b"Content-Length: 6", body=b"hello!")),
    "cl-list": refused(req(P, b"Content-Length: 5, 5", body=b"hello")),
    "cl-plus": refused(req(P, b"Content-Length: +5", body=b"hello")),
    "cl-negative": refused(req(P, b"Content-Length: -1", body=b"hello")),
    "cl-hex": refused(req(P, b"Content-Length: 0x5", body=b"hello")),
    "cl-space-inside": refused(req(P, b"Content-Length: 5 5", body=b"hello")),
    "cl-overflow": refused(req(P, b"Content-Length: 99999999999999999999999", body=b"hello")),
    # -- §6.1 obfuscated Transfer-Encoding ---------------------------------------------------------
    "te-xchunked": refused(req(P, b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n")),
    "te-chunked-identity": refused(req(P, b"Transfer-Encoding: chunked, identity", body=b"0\r\n\r\n")),
    "te-identity-chunked": refused(req(P, b"Transfer-Encoding: identity, chunked", body=b"0\r\n\r\n"), 501),
    "te-gzip-chunked": refused(req(P, b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"), 501),
    "te-two-headers": refused(req(P, b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked",
                                  body=b"5\r\nhello\r\n0\r\n\r\n")),
    "te-gzip-then-chunked-headers": refused(req(P, b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked",
                                                body=b"0\r\n\r\n")),
    "te-name-space-before-colon": refused(req(P, b"Transfer-Encoding : chunked", body=b"0\r\n\r\n")),
    "te-name-leading-space": refused(req(P, b" Transfer-Encoding: chunked", body=b"0\r\n\r\n")),
    "te-obs-fold": refused(req(P, b"Transfer-Encoding:", b" chunked", body=b"0\r\n\r\n")),
    "te-no-chunked": refused(req(P, b"Transfer-Encoding: gzip", body=b"hello")),
    "te-empty-with-cl": refused(req(P, b"Transfer-Encoding: ", b"Content-Length: 5", body=b"hello"), 501),
    "te-http10": refused(b"POST /o HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    # Whitespace around a field value is not part of it (RFC 9110 §5.5), case does not matter:
    # these are plain chunked, framed the same way by every conforming parser.
    "te-tab-ows": Case(chunked(P, b"5\r\nhello\r\n0\r\n\r\n").replace(b"Encoding: ", b"Encoding:\t"),
                       (200,), False, U_POST),
    "te-two-spaces-ows": Case(chunked(P, b"5\r\nhello\r\n0\r\n\r\n").replace(b"Encoding: ", b"Encoding:  "),
                              (200,), False, U_POST),
    "te-trailing-space": Case(chunked(P, b"5\r\nhello\r\n0\r\n\r\n").replace(b"chunked", b"chunked "),
                              (200,), False, U_POST),
    "te-uppercase": Case(chunked(P, b"5\r\nhello\r\n0\r\n\r\n").replace(b"chunked", b"CHUNKED"),
                         (200,), False, U_POST),
    # -- §7.1 chunk sizes, extensions, framing ------------------------------------------------------
    "chunk-negative": refused(chunked(P, b"-5\r\nhello\r\n0\r\n\r\n")),
    "chunk-hex-overflow": refused(chunked(P, b"fffffffffffffffff5\r\nhello\r\n0\r\n\r\n")),
    "chunk-0x-prefix": refused(chunked(P, b"0x5\r\nhello\r\n0\r\n\r\n")),
    "chunk-space-after-size": refused(chunked(P, b"5 \r\nhello\r\n0\r\n\r\n")),
    "chunk-space-before-size": refused(chunked(P, b" 5\r\nhello\r\n0\r\n\r\n")),
    "chunk-empty-size": refused(chunked(P, b"\r\nhello\r\n0\r\n\r\n")),
    "chunk-ext-garbage": refused(chunked(P, b"5;\x01\x02\r\nhello\r\n0\r\n\r\n")),
    "chunk-ext-bare-lf": refused(chunked(P, b"5;a\nb\r\nhello\r\n0\r\n\r\n")),
    "chunk-data-no-crlf": refused(chunked(P, b"5\r\nhelloXX0\r\n\r\n")),
    "chunk-data-bare-lf": refused(chunked(P, b"5\r\nhello\n0\r\n\r\n")),
    "chunk-size-bare-lf": refused(chunked(P, b"5\nhello\r\n0\r\n\r\n")),
    "chunk-trailer-bare-lf": refused(chunked(P, b"5\r\nhello\r\n0\r\nX-T: 1\n\r\n")),
    "chunk-ext-valid": Case(chunked(P, b"5;name=value\r\nhello\r\n0\r\n\r\n"), (200,), False, U_POST),
    # The size line is parsed as it streams (nothing buffered) and is bounded by the body deadline.
    "chunk-ext-100k": Case(chunked(P, b"5;" + b"a" * 100_000 + b"\r\nhello\r\n0\r\n\r\n"), (200,), False, U_POST),
    "chunk-leading-zeros": Case(chunked(P, b"0" * 100 + b"5\r\nhello\r\n0\r\n\r\n"), (200,), False, U_POST),
    # Trailer fields are never forwarded nor merged into the head; framing ones are refused.
    "chunk-trailer-cl": refused(chunked(P, b"5\r\nhello\r\n0\r\nContent-Length: 99\r\n\r\n")),
    "chunk-trailer-benign": Case(chunked(P, b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"), (200,), False, U_POST),
    # -- §2.2 line endings: bare LF and bare CR ----------------------------------------------------
    "bare-lf-everywhere": refused(b"GET /o HTTP/1.1\n" + b"Host: localhost\n\n"),
    "bare-lf-one-header": refused(b"GET /o HTTP/1.1\r\nHost: localhost\nX-A: 1\r\n\r\n"),
    "bare-lf-request-line": refused(b"GET /o HTTP/1.1\nHost: localhost\r\n\r\n"),
    "bare-cr-request-line": refused(b"GET /o HTTP/1.1\rHost: localhost\r\n\r\n"),
    "bare-cr-in-value": refused(req(b"GET /o HTTP/1.1", b"X-A: a\rb")),
    "bare-cr-hides-te": refused(req(P, b"X-A: a\rTransfer-Encoding: chunked", body=b"0\r\n\r\n")),
    # -- §5.2 obs-fold in any header ----------------------------------------------------------------
    "obs-fold-space": refused(req(b"GET /o HTTP/1.1", b"X-A: a", b" b")),
    "obs-fold-tab": refused(req(b"GET /o HTTP/1.1", b"X-A: a", b"\tb")),
    "obs-fold-host": refused(b"GET /o HTTP/1.1\r\nHost:\r\n localhost\r\n\r\n"),
    # -- §5 field syntax ---------------------------------------------------------------------------
    "name-space-before-colon": refused(req(b"GET /o HTTP/1.1", b"X-A : 1")),
    "name-tab-before-colon": refused(req(b"GET /o HTTP/1.1", b"X-A\t: 1")),
    "name-empty": refused(req(b"GET /o HTTP/1.1", b": 1")),
    "name-no-colon": refused(req(b"GET /o HTTP/1.1", b"X-A")),
    "name-non-ascii": refused(req(b"GET /o HTTP/1.1", b"X-\xe9: 1")),
    "nul-in-name": refused(req(b"GET /o HTTP/1.1", b"X\x00A: 1")),
    "nul-in-value": refused(req(b"GET /o HTTP/1.1", b"X-A: a\x00b")),
    "nul-in-target": refused(b"GET /o\x00 HTTP/1.1\r\n" + H + b"\r\n"),
    "ctl-in-value": refused(req(b"GET /o HTTP/1.1", b"X-A: a\x01b")),
    "header-20k": refused(req(b"GET /o HTTP/1.1", b"X-Big: " + b"a" * 20_000)),
    # -- §3 request line ----------------------------------------------------------------------------
    # RFC 9112 §3 lets a recipient split on whitespace; the gateway sends its own request line.
    "two-spaces-after-method": Case(b"GET  /o HTTP/1.1\r\n" + H + b"\r\n", (200,), False, U_GET),
    "two-spaces-before-version": Case(b"GET /o  HTTP/1.1\r\n" + H + b"\r\n", (200,), False, U_GET),
    "method-lowercase": refused(b"get /o HTTP/1.1\r\n" + H + b"\r\n"),
    "method-invalid-char": refused(b"G@T /o HTTP/1.1\r\n" + H + b"\r\n"),
    "version-lowercase": refused(b"GET /o http/1.1\r\n" + H + b"\r\n"),
    "version-1.2": refused(b"GET /o HTTP/1.2\r\n" + H + b"\r\n"),
    "version-2.0": refused(b"GET /o HTTP/2.0\r\n" + H + b"\r\n", 505),
    "version-0.9": refused(b"GET /o HTTP/0.9\r\n" + H + b"\r\n", 505),
    "http-0.9-no-version": refused(b"GET /o\r\n\r\n", 505),
    "h2-preface": refused(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    "authority-form-get": refused(b"GET localhost:443 HTTP/1.1\r\n" + H + b"\r\n"),
    # -- §3.2 Host, §3.2.2 absolute-form, SNI -----------------------------------------------------
    "host-missing": refused(b"GET /o HTTP/1.1\r\n\r\n"),
    "host-two": refused(req(b"GET /o HTTP/1.1", b"Host: evil.example")),
    "host-empty": Case(b"GET /o HTTP/1.1\r\nHost: \r\n\r\n", (400,), False),
    "host-other": Case(b"GET /o HTTP/1.1\r\nHost: other.example\r\n\r\n", (421,), False),
    "host-not-sni": Case(b"GET /o HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", (421,), False),
    "absolute-form-other": Case(b"GET https://other.example/o HTTP/1.1\r\n" + H + b"\r\n", (400,), False),
    "absolute-form-same": Case(b"GET https://localhost/o HTTP/1.1\r\n" + H + b"\r\n", (400,), False),
    "asterisk-form": Case(b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", (400,), False),
    "connect": Case(b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n\r\n", (405,), False),
    "trace": Case(b"TRACE /o HTTP/1.1\r\n" + H + b"\r\n", (405,), False),
    # -- §9.3 pipelining, persistence -------------------------------------------------------------
    "pipelined-two": Case(b"GET /o HTTP/1.1\r\n" + H + b"\r\n" + NEXT, (200, 200), False,
                          ((b"GET /o HTTP/1.1", b""), (b"GET /o/next HTTP/1.1", b""))),
    # A body that looks like a request is a body: after the refusal it is read and dropped.
    "refused-cl-body-is-not-a-request": Case(
        req(b"POST /p HTTP/1.1", b"Content-Length: %d" % len(INNER), body=INNER) + NEXT, (401, 200), False,
        ((b"GET /o/next HTTP/1.1", b""),)),
    "refused-chunked-body-is-not-a-request": Case(
        chunked(b"POST /p HTTP/1.1", b"%x\r\n%b\r\n0\r\n\r\n" % (len(INNER), INNER)) + NEXT, (401, 200), False,
        ((b"GET /o/next HTTP/1.1", b""),)),
    # The next request is authorised on its own: a refusal never carries over, nor does a pass.
    "pipelined-after-refusal-refused": Case(
        req(b"POST /p HTTP/1.1", b"Content-Length: 5", body=b"hello") + b"GET /p/x HTTP/1.1\r\n" + H + b"\r\n",
        (401, 401), False),
    # The declared body never comes; what follows is read as that body, never as a request, and the
    # refusal says the connection closes.
    "refused-incomplete-body-eats-next": Case(
        req(b"POST /p HTTP/1.1", b"Content-Length: 1000") + NEXT, (401,), False, conn_close=True),
    "malformed-then-pipelined": refused(req(b"GET /o HTTP/1.1", b"X-A: a\x00b") + NEXT),
    "http10-keep-alive": Case(
        b"GET /o HTTP/1.0\r\n" + H + b"Connection: keep-alive\r\n\r\nGET /o/next HTTP/1.0\r\n" + H + b"\r\n",
        (200, 200), True, ((b"GET /o HTTP/1.1", b""), (b"GET /o/next HTTP/1.1", b""))),
    # llhttp refuses bytes after a message that ends the connection (HPE_CLOSED_CONNECTION): the
    # whole read is a parse error, so not even the first request is served.
    "http10-no-keep-alive-then-more": refused(b"GET /o HTTP/1.0\r\n" + H + b"\r\n" + NEXT),
    "connection-close-then-more": refused(req(b"GET /o HTTP/1.1", b"Connection: close") + NEXT),
    "http10-alone": Case(b"GET /o HTTP/1.0\r\n" + H + b"\r\n", (200,), True, U_GET),
    "get-with-body": Case(req(b"GET /o HTTP/1.1", b"Content-Length: 5", body=b"hello"), (200,), False,
                          ((b"GET /o HTTP/1.1", b"hello"),)),
}


# -- what the scripted upstream answers (path /o/up/<case>) -----------------------------------------

STOLEN = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstolen"


@dataclass(frozen=True)
class Answer:
    raw: bytes
    status: int  # what the client gets (0: the connection closes without a complete answer)
    body: bytes | None = None  # the body the client gets, when it gets one
    discarded: bool = True  # the upstream connection is not used again
    method: str = "GET"


UPSTREAM: dict[str, Answer] = {
    "cl-te": Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 502),
    "te-cl": Answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 502),
    "cl-dup-diff": Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!", 502),
    "cl-dup-same": Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", 502),
    "cl-negative": Answer(b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok", 502),
    "cl-plus": Answer(b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", 502),
    "te-gzip-chunked": Answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 502),
    "te-xchunked": Answer(Closing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"), 502),
    "chunk-bad-size": Answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n", 502),
    "chunk-negative": Answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\nok\r\n0\r\n\r\n", 502),
    "chunk-overflow": Answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"fffffffffffffffff2\r\nok\r\n0\r\n\r\n", 502),
    "chunk-no-crlf": Answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n", 502),
    "bare-lf": Answer(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", 502),
    "bare-cr": Answer(b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nok", 502),
    "obs-fold": Answer(b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok", 502),
    "nul-in-value": Answer(b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok", 502),
    "space-before-colon": Answer(b"HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 2\r\n\r\nok", 502),
    "status-garbage": Answer(b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok", 502),
    "not-http": Answer(b"SSH-2.0-OpenSSH\r\n\r\n", 502),
    "huge-header": Answer(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 2\r\n\r\nok", 502),
    "many-headers": Answer(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(300))
                           + b"Content-Length: 2\r\n\r\nok", 502),
    "upgrade-101": Answer(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                          502),
    "shorter-than-cl": Answer(Closing(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"), 502),
    # Framed by its Content-Length; the surplus is never an answer to anyone.
    "longer-than-cl": Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + STOLEN, 200, b"ok"),
    "extra-response": Answer(ok(b"ok") + STOLEN, 200, b"ok"),
    "informational": Answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                            + ok(b"ok"), 200, b"ok", discarded=False),
    "head-with-body": Answer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(STOLEN), STOLEN), 200,
                             b"", discarded=False, method="HEAD"),
    "204-with-body": Answer(b"HTTP/1.1 204 No Content\r\nContent-Length: %d\r\n\r\n%b" % (len(STOLEN), STOLEN),
                            204, b""),
    "304-with-body": Answer(b"HTTP/1.1 304 Not Modified\r\nContent-Length: %d\r\n\r\n%b" % (len(STOLEN), STOLEN),
                            304, b""),
    # Past the buffered size (64 KiB) the head is relayed before the body: a short body can only be
    # signalled by closing the client's connection before the declared length.
    "shorter-than-cl-large": Answer(Closing(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"x" * 1000), 0),
    "close-delimited": Answer(Closing(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nok"), 200, b"ok"),
}


def _reply(head: bytes, body: bytes, n: int) -> bytes | None:
    target = head.split(b" ", 2)[1].decode()
    if target.startswith("/o/up/"):
        return UPSTREAM[target.removeprefix("/o/up/")].raw
    return ok(b"up")


# -- the harness ------------------------------------------------------------------------------------


@dataclass
class Env:
    port: int
    pki: Pki
    up: Scripted
    server: GatewayServer

    def malformed(self) -> float:
        value = self.server.metrics.registry.get_sample_value(
            "gateway_http_malformed_requests_total", {"listener": "public"})
        return value or 0.0


@dataclass
class Message:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


class _Responses:
    """The answers on one connection, parsed by llhttp (httptools) as any client would."""

    def __init__(self, head: bool = False) -> None:
        self.done: list[Message] = []
        self._cur: Message | None = None
        self._head = head
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self._cur = Message(0)

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._cur is not None
        self._cur.headers.append((name, value))

    def on_headers_complete(self) -> bool | None:
        assert self._cur is not None
        self._cur.status = self.parser.get_status_code()
        if self._head and self._cur.status >= 200:
            self.done.append(self._cur)  # llhttp is not told about HEAD: no body follows
            self._cur = None
            self.parser = httptools.HttpResponseParser(self)
            raise _HeadDone
        return None

    def on_body(self, body: bytes) -> None:
        assert self._cur is not None
        self._cur.body += body

    def on_message_complete(self) -> None:
        if self._cur is not None:
            self.done.append(self._cur)
            self._cur = None


class _HeadDone(Exception):
    pass


PROBE = b"GET /o/probe HTTP/1.1\r\n" + H + b"\r\n"
PROBE_LINE = (b"GET /o/probe HTTP/1.1", b"")


async def exchange(
    env: Env, data: bytes, *, expect: int, until_closed: bool = False, probe: bool = False,
    sni: str = "localhost", head: bool = False,
) -> tuple[list[Message], bool]:
    """Send ``data`` at once; (answers, closed by the gateway). Reads ``expect`` answers, then
    (``until_closed``) until the gateway closes, or (``probe``) sends one more request and reads
    its answer, which shows the connection is still open and in step. No timing: only a 5 s cap."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", env.port, ssl=env.pki.client_context(), server_hostname=sni)
    got = _Responses(head)
    closed = False

    async def read_until(n: int | None) -> None:
        nonlocal closed
        while n is None or len(got.done) < n:
            chunk = await reader.read(65536)
            if not chunk:
                closed = True
                return
            try:
                got.parser.feed_data(chunk)
            except httptools.HttpParserCallbackError as exc:
                assert isinstance(exc.__context__, _HeadDone), exc

    try:
        async with asyncio.timeout(5):
            writer.write(data)
            await writer.drain()
            await read_until(expect)
            if until_closed and not closed:
                await read_until(None)
            elif probe and not closed:
                writer.write(PROBE)
                await writer.drain()
                await read_until(expect + 1)
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        closed = True
    finally:
        writer.close()
    return got.done, closed


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(pki: Pki) -> AsyncIterator[Env]:
    jwks = pki.dir / "smuggling-empty-jwks.json"
    jwks.write_text('{"keys": []}')
    async with Scripted(_reply) as up:
        cfg = parse_config(gateway_yaml(pki, ROUTES.format(url=up.url, jwks=jwks)), source="test.yaml")
        server = GatewayServer(cfg)
        await server.start()
        try:
            yield Env(server.port, pki, up, server)
        finally:
            await server.stop()


def _lines(up: Scripted, start: int) -> list[tuple[bytes, bytes]]:
    return [(h.split(b"\r\n", 1)[0], b) for h, b in up.requests[start:]]


# -- client -> gateway --------------------------------------------------------------------------------


@ON_MODULE_LOOP
@pytest.mark.parametrize("name", list(CLIENT))
async def test_client_framing(env: Env, name: str) -> None:
    case = CLIENT[name]
    seen = len(env.up.requests)
    # A connection left open must still be in step: a request sent after it is answered normally.
    probe = not case.closed and not case.conn_close
    answers, closed = await exchange(env, case.raw, expect=len(case.statuses), until_closed=case.closed,
                                     probe=probe, sni=case.sni)
    if probe:
        assert (answers[-1].status, answers[-1].body) == (200, b"up"), answers
        answers = answers[:-1]
    assert [a.status for a in answers] == list(case.statuses), answers
    assert closed == case.closed
    assert _lines(env.up, seen) == [*case.upstream, *([PROBE_LINE] if probe else [])]
    if case.conn_close is not None:
        assert (answers[-1].header(b"Connection") == b"close") == case.conn_close
    for a in answers:
        if a.status >= 400:
            assert a.body.startswith(b"{"), a.body  # a fixed JSON error, nothing of the input
            assert b"\x00" not in a.body and b"smuggled" not in a.body


async def _open(env: Env) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", env.port, ssl=env.pki.client_context(),
                                         server_hostname="localhost")


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)


@ON_MODULE_LOOP
async def test_expect_continue_refused_gets_final_status_only_and_close(env: Env) -> None:
    """RFC 9110 §10.1.1: no 100 before the decision; the 401 says the connection closes, and the
    request that the client then sends instead of the body is read as that body, never served."""
    seen = len(env.up.requests)
    reader, writer = await _open(env)
    try:
        writer.write(req(b"POST /p HTTP/1.1", b"Expect: 100-continue", b"Content-Length: %d" % len(INNER)))
        head = await _read_head(reader)
        assert head.startswith(b"HTTP/1.1 401 "), head
        assert b"\r\nConnection: close\r\n" in head
        writer.write(INNER)  # exactly the declared length: it is the body
        await writer.drain()
        rest = b""
        try:
            async with asyncio.timeout(3):
                while chunk := await reader.read(65536):
                    rest += chunk
        except (ConnectionResetError, ssl.SSLError):
            pass
        assert b"HTTP/1.1" not in rest.split(b"\r\n\r\n", 1)[-1], rest  # no second answer
    finally:
        writer.close()
    assert _lines(env.up, seen) == []


@ON_MODULE_LOOP
async def test_expect_continue_authorised_gets_100_then_forwards(env: Env) -> None:
    seen = len(env.up.requests)
    reader, writer = await _open(env)
    try:
        writer.write(req(P, b"Expect: 100-continue", b"Content-Length: 5"))
        assert (await _read_head(reader)).startswith(b"HTTP/1.1 100 ")
        writer.write(b"hello" + NEXT)
        first = await _read_head(reader)
        assert first.startswith(b"HTTP/1.1 200 "), first
    finally:
        writer.close()
    assert _lines(env.up, seen)[:1] == list(U_POST)  # recorded before it answered


@ON_MODULE_LOOP
async def test_wire_refusals_are_counted_as_malformed(env: Env) -> None:
    before = env.malformed()
    for name in ("version-2.0", "te-http10"):
        answers, closed = await exchange(env, CLIENT[name].raw, expect=1, until_closed=True)
        assert closed and answers[0].body.startswith(b'{"error": "')
    assert env.malformed() == before + 2


# -- upstream -> gateway ------------------------------------------------------------------------------


@ON_MODULE_LOOP
@pytest.mark.parametrize("name", list(UPSTREAM))
async def test_upstream_framing(env: Env, name: str) -> None:
    answer = UPSTREAM[name]
    seen = len(env.up.requests)
    raw = f"{answer.method} /o/up/{name} HTTP/1.1\r\n".encode() + H + b"\r\n"
    answers, closed = await exchange(env, raw, expect=1, head=answer.method == "HEAD")
    if answer.status == 0:
        assert closed and answers == []  # the answer never completes
    else:
        assert [a.status for a in answers] == [answer.status], answers
        if answer.body is not None:
            assert answers[0].body == answer.body
        if answer.status == 502:
            assert b"upstream" in answers[0].body and b"ok" not in answers[0].body.split(b'"')[-2:]
    # The next request, on a new client connection, gets its own answer: never the surplus of the
    # bad one, and on a new upstream connection when the bad one was to be discarded.
    after, _ = await exchange(env, NEXT, expect=1)
    assert [(a.status, a.body) for a in after] == [(200, b"up")]
    lines = _lines(env.up, seen)
    assert [line for line, _ in lines] == [raw.split(b"\r\n", 1)[0], b"GET /o/next HTTP/1.1"]
    bad_conn, next_conn = env.up.conn_of[seen], env.up.conn_of[seen + 1]
    assert (next_conn != bad_conn) == answer.discarded


# -- the table and the start-up check ------------------------------------------------------------------


def test_every_case_is_documented() -> None:
    doc = DOC.read_text()
    missing = [n for n in [*CLIENT, *UPSTREAM] if not re.search(rf"`{re.escape(n)}`", doc)]
    assert not missing, f"cases not in {DOC.name}: {missing}"


def test_gateway_refuses_to_start_with_the_pure_python_parser(tmp_path: Path) -> None:
    """``AIOHTTP_NO_EXTENSIONS=1`` makes aiohttp parse with its laxer pure-Python parser: the
    gateway process must exit at start-up with a clear error instead of serving."""
    config = tmp_path / "gateway.yaml"
    config.write_text("listen: {host: 127.0.0.1, port: 0}\nadmin: {host: 127.0.0.1, port: 0}\n"
                      "routes:\n  - id: open\n    match: {path_prefix: /}\n    upstream: http://127.0.0.1:9\n"
                      "    auth: none\n")
    env = {k: v for k, v in os.environ.items() if k != "AIOHTTP_NO_EXTENSIONS"}
    check = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(config)], env=env,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr  # the config itself is fine
    run = subprocess.run([sys.executable, "-m", "gateway", "run", "--config", str(config)],
                         env=env | {"AIOHTTP_NO_EXTENSIONS": "1"}, capture_output=True, text=True, timeout=60)
    assert run.returncode == 78, (run.returncode, run.stderr)
    assert "pure-Python HTTP parser" in run.stderr and "AIOHTTP_NO_EXTENSIONS" in run.stderr
    assert "listening" not in run.stderr + run.stdout
