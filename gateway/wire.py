"""What the gateway's HTTP/1.1 listeners say on their own behalf (issue #13, finding 19).

aiohttp answers a request its parser refuses (bad request line, bad header, header too long) by
itself: a text/plain 400 echoing the offending line (an ``Authorization`` value included), an
ERROR with a traceback per request (a log flood anyone can cause), and, like every response, a
``Server: Python/3.x aiohttp/3.y`` banner. Here, for the public and the admin listener:

* ``GatewayRequestHandler.handle_error``: a short fixed JSON 400 (nothing of the input), an
  ``x-fapi-interaction-id``, ``Connection: close``; one DEBUG line without the input; counted in
  ``gateway_http_malformed_requests_total{listener}``. A handler bug (500) is still logged with its
  traceback (through the redaction filter), but answered with a fixed body too.
* HTTP versions (issue #14, request smuggling): llhttp accepts ``HTTP/0.9`` and ``HTTP/2.0`` in a
  request line, and aiohttp would answer with that version in its status line. Only HTTP/1.0 and
  HTTP/1.1 are served: anything else gets a ``505`` (status line ``HTTP/1.1``) and the connection
  closes (RFC 9112 §2.3, RFC 9110 §15.6.6). An HTTP/1.0 request with ``Transfer-Encoding`` has
  faulty framing (RFC 9112 §6.1: the sender may not have meant it): ``400``, connection closed,
  before any of its body is read. Both are counted as malformed.
* no ``Server`` header: aiohttp adds its banner when it prepares the headers and then runs the
  request's prepare hook (``on_response_prepare`` for an application), where it is removed. An
  upstream's own ``Server`` header, relayed by the proxy, is left to the header policy.

Built on aiohttp's ``web.Server`` / ``RequestHandler`` seams (3.12+); tests/ops/test_leaks.py pins
the behaviour with raw bytes over real sockets, so an aiohttp upgrade that moves them fails there.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, Final, Literal

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import SERVER_SOFTWARE, HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from .proxy.headers import new_interaction_id

__all__ = ("AdminRunner", "GatewayRequestHandler", "GatewayWebServer", "Listener", "refusal_response")

log = logging.getLogger("gateway.wire")

Listener = Literal["public", "admin"]
OnMalformed = Callable[[str], None]
# The configured ``proxy.server_header`` (read per response: it follows reloads), or None.
ServerHeader = Callable[[], str | None]


def _body(error: str, description: str) -> bytes:
    return json.dumps({"error": error, "error_description": description}).encode()


_BODIES: Final[dict[int, bytes]] = {
    400: _body("bad_request", "malformed HTTP request"),
    500: _body("internal", "internal error"),
    504: _body("timeout", "request handling timed out"),
    505: _body("http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served"),
}
_VERSIONS: Final = frozenset((HttpVersion10, HttpVersion11))


def _drop_banner(response: web.StreamResponse) -> None:
    if response.headers.get(hdrs.SERVER) == SERVER_SOFTWARE:
        del response.headers[hdrs.SERVER]


def _server_policy(response: web.StreamResponse, server_header: ServerHeader | None) -> None:
    """One Server-header policy for every response of a listener: never aiohttp's banner; the
    configured value on what does not carry one already (a 404 before any route matched, a 400 at
    the wire...), as on proxied responses and a route's refusals."""
    _drop_banner(response)
    if server_header is not None and hdrs.SERVER not in response.headers:
        value = server_header()
        if value is not None:
            response.headers[hdrs.SERVER] = value


async def _drop_banner_signal(_request: web.Request, response: web.StreamResponse) -> None:
    _drop_banner(response)


class _Request(web.BaseRequest):
    """The public listener's request: its prepare hook runs after aiohttp set the banner.
    ``wire_refusal``: the status this request gets without being handled (version, framing)."""

    ATTRS = web.BaseRequest.ATTRS | frozenset(["wire_refusal", "server_header"])
    wire_refusal: int | None = None
    server_header: ServerHeader | None = None

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        _server_policy(response, self.server_header)


def refusal_response(status: int) -> web.Response:
    """The fixed answer to a request refused at the wire (400, 505): nothing of the input, and
    the connection closes (its framing cannot be trusted)."""
    resp = _ErrorResponse(
        status=status, body=_BODIES[status], content_type="application/json",
        headers={"x-fapi-interaction-id": new_interaction_id(), "Cache-Control": "no-store",
                 "Connection": "close"},
    )
    resp.force_close()
    return resp


class _ErrorResponse(web.Response):
    """For error answers, whose request may carry no prepare hook (no route matched)."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        _drop_banner(self)


class GatewayRequestHandler(RequestHandler):
    """One connection; differs from aiohttp's only in how it answers what it cannot handle."""

    __slots__ = ("_listener", "_on_malformed")

    def __init__(self, manager: web.Server, *, listener: Listener, on_malformed: OnMalformed | None,
                 **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._listener = listener
        self._on_malformed = on_malformed

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # As aiohttp: the response has started, so the connection is all that can be dropped.
            raise ConnectionError("response already started; cannot send an error response")
        fapi_id = new_interaction_id()
        if isinstance(exc, HttpProcessingError):
            status = 400
            if self._on_malformed is not None:
                self._on_malformed(self._listener)
            # The class name only: aiohttp's message quotes the offending bytes (credentials).
            log.debug("malformed HTTP request refused on the %s listener: %s (x-fapi-interaction-id %s)",
                      self._listener, type(exc).__name__, fapi_id)
        elif status == 504:
            log.debug("request handler timed out (x-fapi-interaction-id %s)", fapi_id)
        else:
            status = 500
            log.error("error handling a request on the %s listener (x-fapi-interaction-id %s)",
                      self._listener, fapi_id, exc_info=exc)
        resp = _ErrorResponse(
            status=status, body=_BODIES.get(status, _BODIES[500]), content_type="application/json",
            # Said explicitly: the answer to an unparsable request goes out as HTTP/1.0, where
            # aiohttp would leave the close implicit.
            headers={"x-fapi-interaction-id": fapi_id, "Cache-Control": "no-store", "Connection": "close"},
        )
        resp.force_close()  # the parser's state is unknown after a bad message: never reuse it
        return resp


class GatewayWebServer(web.Server):
    """aiohttp's low-level server with ``GatewayRequestHandler`` connections and no banner."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Any],
        *,
        listener: Listener = "public",
        on_malformed: OnMalformed | None = None,
        request_factory: Any = None,
        loop: asyncio.AbstractEventLoop | None = None,
        server_header: ServerHeader | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, request_factory=request_factory or self._bare_request, loop=loop, **kwargs)
        self._listener: Listener = listener
        self.server_header = server_header
        self._on_malformed = on_malformed
        self._handler_kwargs = kwargs

    def _bare_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        refusal: int | None = None
        if message.version not in _VERSIONS:
            refusal = 505
            # The answer's status line repeats the request's version: make it one we speak.
            message = message._replace(version=HttpVersion11, should_close=True)
        elif message.version == HttpVersion10 and hdrs.TRANSFER_ENCODING in message.headers:
            refusal = 400
        request = _Request(message, payload, protocol, writer, task, self._loop)
        request.server_header = self.server_header
        if refusal is not None:
            request.wire_refusal = refusal
            if self._on_malformed is not None:
                self._on_malformed(self._listener)
            log.debug("request refused at the wire on the %s listener: %d", self._listener, refusal)
        return request

    def __call__(self) -> RequestHandler:
        return GatewayRequestHandler(self, loop=self._loop, listener=self._listener,
                                     on_malformed=self._on_malformed, **self._handler_kwargs)


class AdminRunner(web.AppRunner):
    """``web.AppRunner`` for the admin application, served by a ``GatewayWebServer``."""

    def __init__(self, app: web.Application, *, on_malformed: OnMalformed | None = None, **kwargs: Any) -> None:
        app.on_response_prepare.append(_drop_banner_signal)
        super().__init__(app, **kwargs)
        self._on_malformed = on_malformed

    async def _make_server(self) -> web.Server:
        app_server = await super()._make_server()  # runs the app's startup, freezes it
        return GatewayWebServer(
            app_server.request_handler, request_factory=app_server.request_factory, listener="admin",
            on_malformed=self._on_malformed, access_log=None,
        )
