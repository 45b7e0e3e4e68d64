"""The public listener's defences against slow and idle clients (issue #13, finding 14).

aiohttp's low-level server gives a keep-alive timer (``idle_timeout_s`` here) but no deadline for
a request head, for a TLS handshake, for a stalled body or for a client that stops reading, and
no cap on connections. This module adds them, around aiohttp rather than inside it:

* **handshake** — ``ssl_handshake_timeout`` on the listening socket (``GuardedSite``).
* **header** — a connection must deliver a complete request head within ``header_timeout_s`` of
  being established, and later within ``header_timeout_s`` of the first byte of each new head.
  The timer is not moved by further bytes, so one header line every few seconds does not keep a
  connection (slowloris). A head begun and not finished gets ``408`` and the connection closes; a
  connection that never sent anything is closed silently.
* **idle** — aiohttp's keep-alive timer, set to ``idle_timeout_s``.
* **body** — the forwarder reads the request body with a per-read deadline (``proxy/forward.py``).
* **send** — writing the response must be done within ``body_timeout_s`` of its start
  (``GuardedServer``), so a client that stops reading cannot pin a handler and an upstream
  connection. The deadline is armed only while the transport has stopped taking writes
  (``pause_writing``): a send can only wait on the client then, and a response that goes out at
  once costs no timer.
* **cap** — at most ``max_connections`` established connections per listener (and process). At the
  cap a new connection closes the oldest *idle* one (no request under way, no head begun: a
  client may always see an idle keep-alive connection closed); if none is idle, the new
  connection is closed at once. The cap bounds memory; the price is that while every connection
  is busy, new clients are refused (counted, so it shows).

Connections still in their TLS handshake are not counted (asyncio only hands a connection to the
application once it is established); ``handshake_timeout_s`` bounds them instead.

The hooks on aiohttp are its public protocol methods (``connection_made``, ``data_received``,
``connection_lost``), the ``request_factory`` argument of ``web.Server`` (called as each complete
head is taken up) and a wrapper around the request handler: nothing reaches into its internals.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .config.listener import ListenerLimits
from .wire import GatewayRequestHandler, GatewayWebServer, OnMalformed, ServerHeader, refusal_response

__all__ = ("ConnectionGuard", "GuardedRequestHandler", "GuardedServer", "GuardedSite")

# Reasons for ``gateway_connections_closed_total`` (a closed set: a metric label).
HEADER_TIMEOUT: Final = "header_timeout"
IDLE_EVICTED: Final = "idle_evicted"
OVER_CAPACITY: Final = "over_capacity"
SEND_TIMEOUT: Final = "send_timeout"
CLOSE_REASONS: Final = (HEADER_TIMEOUT, IDLE_EVICTED, OVER_CAPACITY, SEND_TIMEOUT)

# After a 408 the TLS close may wait on a peer that does not read: abort after this grace.
_CLOSE_GRACE_S: Final = 1.0
_HEAD_TIMEOUT_BODY: Final = b'{"error": "header_timeout"}'
_HEAD_TIMEOUT_RESPONSE: Final = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: application/json\r\n"
    b"Cache-Control: no-store\r\nContent-Length: %d\r\n\r\n%b" % (len(_HEAD_TIMEOUT_BODY), _HEAD_TIMEOUT_BODY)
)


def _head_timeout_response(server: str | None) -> bytes:
    # The same Server-header policy as every other response of the listener (wire._server_policy).
    if server is None:
        return _HEAD_TIMEOUT_RESPONSE
    return _HEAD_TIMEOUT_RESPONSE.replace(b"\r\n", b"\r\nServer: " + server.encode("ascii") + b"\r\n", 1)


class ConnectionGuard:
    """One listener's connections: how many are open, which are idle (oldest first), the cap."""

    def __init__(
        self,
        limits: ListenerLimits,
        *,
        on_close: Callable[[str], None] | None = None,
        on_open_change: Callable[[int], None] | None = None,
    ) -> None:
        self.limits = limits
        self.open = 0
        self._idle: OrderedDict[GuardedRequestHandler, None] = OrderedDict()
        self._on_close = on_close
        self._on_open_change = on_open_change

    @property
    def idle(self) -> int:
        """Connections that could be closed to make room (no request under way, no head begun)."""
        return len(self._idle)

    def closed_by_us(self, reason: str) -> None:
        if self._on_close is not None:
            self._on_close(reason)

    def admit(self, conn: GuardedRequestHandler) -> bool:
        """Count a new connection in; False: over the cap with nothing idle to make room."""
        if self.open >= self.limits.max_connections:
            if not self._idle:
                self.closed_by_us(OVER_CAPACITY)
                return False
            victim, _ = self._idle.popitem(last=False)
            self.release(victim)
            victim.evict()
            self.closed_by_us(IDLE_EVICTED)
        self.open += 1
        self._changed()
        return True

    def release(self, conn: GuardedRequestHandler) -> None:
        if conn.counted:
            conn.counted = False
            self.open -= 1
            self._changed()
        self._idle.pop(conn, None)

    def mark_idle(self, conn: GuardedRequestHandler) -> None:
        if conn.counted:
            self._idle[conn] = None
            self._idle.move_to_end(conn)

    def mark_busy(self, conn: GuardedRequestHandler) -> None:
        self._idle.pop(conn, None)

    def _changed(self) -> None:
        if self._on_open_change is not None:
            self._on_open_change(self.open)


class GuardedRequestHandler(GatewayRequestHandler):
    """The gateway's per-connection protocol (``wire``: no echo, no banner on errors) plus the
    header deadline and the connection cap."""

    def __init__(
        self, manager: web.Server, *, guard: ConnectionGuard, loop: asyncio.AbstractEventLoop, **kwargs: Any
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self.guard = guard
        self._guard_loop = loop
        self.counted = False
        self._rejected = False
        self._busy = False  # a complete head was taken up and its response is not yet written
        self._head_bytes = False  # bytes of a new head arrived since the last request
        self._pipelined = False  # bytes after the current request's body: the next head
        self._payload: Any = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._raw: asyncio.Transport | None = None
        self._send_deadline: float | None = None  # loop time by which the response being sent is out
        self._send_timer: asyncio.TimerHandle | None = None

    # -- asyncio protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw: asyncio.Transport = transport  # type: ignore[assignment]
        if not self.guard.admit(self):
            # Never handed to aiohttp: no task, no parser, nothing to clean up but the socket.
            self._rejected = True
            raw.abort()
            return
        self.counted = True
        self._raw = raw
        super().connection_made(transport)
        # A new connection gets header_timeout_s for its first head (idle time included).
        self._arm_head_timer()
        self.guard.mark_idle(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._rejected:
            return
        self._cancel_head_timer()
        self.send_finished()
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        self.guard.release(self)
        self._raw = None
        self._payload = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        if data:
            if not self._busy:
                # The first bytes of a head start its deadline; later bytes do not move it.
                self._head_bytes = True
                if self._head_timer is None:
                    self._arm_head_timer()
                self.guard.mark_busy(self)
            elif self._payload is not None and self._payload.is_eof():
                self._pipelined = True  # the current body is complete: this is the next head
        super().data_received(data)

    # -- called by GuardedServer --------------------------------------------------------------

    def request_started(self, payload: Any) -> None:
        self._busy = True
        self._head_bytes = False
        self._pipelined = False
        self._payload = payload
        self._cancel_head_timer()
        self.guard.mark_busy(self)

    def request_finished(self) -> None:
        self._busy = False
        self._payload = None
        if self._pipelined:
            self._head_bytes = True
            self._arm_head_timer()
        elif not self._head_bytes:
            self.guard.mark_idle(self)

    # -- the send deadline --------------------------------------------------------------------

    def send_started(self, timeout_s: float) -> None:
        """The response is being written: it must be out within ``timeout_s``. Only a paused
        transport can make the writer wait on the client, so the timer is armed only then."""
        self._send_deadline = self._guard_loop.time() + timeout_s
        if self.writing_paused:
            self._arm_send_timer()

    def send_finished(self) -> None:
        self._send_deadline = None
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_deadline is not None:
            self._arm_send_timer()

    def resume_writing(self) -> None:
        super().resume_writing()
        # Progress: the writer runs on; a later pause re-arms at the same (absolute) deadline.
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _arm_send_timer(self) -> None:
        if self._send_timer is None and self._send_deadline is not None:
            self._send_timer = self._guard_loop.call_at(self._send_deadline, self._send_timeout)

    def _send_timeout(self) -> None:
        self._send_timer = None
        self._send_deadline = None
        self.guard.closed_by_us(SEND_TIMEOUT)
        # The writer waiting on drain is woken by connection_lost and returns; nothing more is sent.
        if self._raw is not None:
            self._raw.abort()

    def evict(self) -> None:
        """Close an idle connection to make room for a new one: at once (no TLS close_notify
        exchange that a silent peer could stretch), since nothing is in flight on it."""
        self._cancel_head_timer()
        raw = self._raw
        self.force_close()
        if raw is not None:
            raw.abort()

    # -- the header deadline ------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self._guard_loop.call_later(self.guard.limits.header_timeout_s, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        raw = self._raw
        if self._busy or raw is None or raw.is_closing():
            return
        self.guard.closed_by_us(HEADER_TIMEOUT)
        self.guard.release(self)
        if self._head_bytes:
            # RFC 9110 §15.5.9: a client that was merely slow learns why.
            server = getattr(self._manager, "server_header", None)
            raw.write(_head_timeout_response(server() if server is not None else None))
        self.force_close()
        self._abort_timer = self._guard_loop.call_later(_CLOSE_GRACE_S, raw.abort)


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class GuardedServer(GatewayWebServer):
    """The public listener's server (``wire.GatewayWebServer``) whose connections are
    ``GuardedRequestHandler``s sharing one guard."""

    def __init__(
        self, handler: Handler, *, guard: ConnectionGuard, on_malformed: OnMalformed | None = None,
        server_header: ServerHeader | None = None, **kwargs: Any
    ) -> None:
        self._inner = handler
        self._guard = guard
        self._protocol_kwargs = dict(kwargs, keepalive_timeout=guard.limits.idle_timeout_s)
        self._own_loop = asyncio.get_running_loop()
        super().__init__(self._handle, listener="public", on_malformed=on_malformed,
                         request_factory=self._new_request, server_header=server_header, **self._protocol_kwargs)

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, guard=self._guard, loop=self._own_loop, listener=self._listener,
                                     on_malformed=self._on_malformed, **self._protocol_kwargs)

    def _new_request(
        self, message: Any, payload: Any, protocol: RequestHandler, writer: Any, task: Any
    ) -> web.BaseRequest:
        if isinstance(protocol, GuardedRequestHandler):
            protocol.request_started(payload)
        return self._bare_request(message, payload, protocol, writer, task)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        try:
            refusal = getattr(request, "wire_refusal", None)
            resp = refusal_response(refusal) if refusal is not None else await self._inner(request)
            if resp.status >= 400 and request.body_exists and not request.content.is_eof() and not resp.prepared:
                # Refused before the whole body arrived (e.g. a 401 to an Expect: 100-continue
                # upload): say the connection closes (RFC 9110 §10.1.1, RFC 9112 §9.6), so a client
                # that withholds the body does not send its next request into it. aiohttp still reads
                # and discards what comes within its lingering time, so the answer is not lost to a
                # reset, and those bytes are body, never a request. An upstream's early success keeps
                # the connection: its body completes as usual (test_hop_limits).
                resp.force_close()
            # Sent here rather than by aiohttp after we return, so that (a) the connection counts
            # as idle only once its answer is out, and (b) a client that stops reading is cut off.
            try:
                if isinstance(protocol, GuardedRequestHandler):
                    protocol.send_started(self._guard.limits.body_timeout_s)
                    try:
                        await resp.prepare(request)
                        await resp.write_eof()
                    finally:
                        protocol.send_finished()
                else:
                    async with asyncio.timeout(self._guard.limits.body_timeout_s):
                        await resp.prepare(request)
                        await resp.write_eof()
            except TimeoutError:
                self._guard.closed_by_us(SEND_TIMEOUT)
                if request.transport is not None:
                    request.transport.abort()
            except ConnectionError:
                pass  # the client went away; aiohttp notices on its own
            else:
                if resp.status == 408 and isinstance(protocol, RequestHandler):
                    # The client stopped sending: aiohttp's lingering close would wait up to 10 s
                    # for the rest of a body that is not coming.
                    protocol.force_close()
            return resp
        finally:
            if isinstance(protocol, GuardedRequestHandler):
                protocol.request_finished()


class GuardedSite(web.BaseSite):
    """``web.TCPSite`` with a TLS handshake deadline (aiohttp's site has no such argument)."""

    __slots__ = ("_handshake_s", "_host", "_port", "_reuse_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        ssl_context: Any,
        backlog: int,
        reuse_port: bool | None,
        handshake_timeout_s: float,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._handshake_s = handshake_timeout_s

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        tls = self._ssl_context is not None
        self._server = await asyncio.get_running_loop().create_server(
            server, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_port=self._reuse_port, ssl_handshake_timeout=self._handshake_s if tls else None,
        )
