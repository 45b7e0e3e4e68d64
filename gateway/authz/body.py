"""Bounded JSON body inspection for CEL rules (``auth.authz.body``; issue #16).

Only on the proxy listener, only for a route that opts in, and only once the token has passed
every earlier stage (so an anonymous client cannot make the gateway buffer bodies): the body is
read whole (``gateway.proxy.buffered.read_body``: 413 over ``authz.body.max_bytes``, 408 when it
stalls, 400 when it breaks off), kept, and forwarded as those exact bytes, so the upstream acts on
the same body the rule saw. It is parsed with the strict decoder (``gateway.strictjson``: a
duplicate member, which two parsers could read differently, is not JSON). A body that is not a
JSON object gives the rule no ``request.body``: the rule then refuses (fail closed).

The decision fronts never see bodies (the config refuses body rules there, ``config.authz``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..model import AuthRequest
from ..proxy.buffered import read_body
from ..proxy.forward import BodyDeadlines
from ..strictjson import STRICT_JSON

__all__ = ("BufferedBody", "json_body")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class BufferedBody:
    """The public listener's request body, read at most once, on demand (``AuthRequest.body``)."""

    __slots__ = ("_deadlines", "_request", "continued", "data")

    def __init__(self, request: web.BaseRequest, deadlines: BodyDeadlines) -> None:
        self._request = request
        self._deadlines = deadlines
        # The bytes once read: the forwarder then sends exactly these (``Forwarder.forward(body=)``).
        self.data: bytes | None = None
        # 100 Continue already sent (RFC 9110 §10.1.1): the handler must not send it again.
        self.continued = False

    async def read(self, limit: int) -> bytes:
        if self.data is not None:
            return self.data
        request = self._request
        expect = request.headers.get("Expect")
        if expect is not None and expect.lower() == "100-continue" and request.version >= (1, 1):
            # The client waits for this before sending the body it asked permission for.
            await request.writer.write(_CONTINUE)
            self.continued = True
        self.data = await read_body(request, limit, deadlines=self._deadlines)
        return self.data


async def json_body(req: AuthRequest, limit: int) -> Any:
    """The request body as a JSON object, or None (no body source, empty, not JSON, not an object)."""
    source = req.body
    if source is None:
        return None
    data = await source.read(limit)
    if not data:
        return None
    try:
        value = STRICT_JSON.decode(data.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return value if isinstance(value, dict) else None
