"""The whole request body, read and held before anything goes upstream.

For stages that must see the body before the upstream sees a byte of it (RFC 9530
``Content-Digest`` checked for an HTTP message signature, request-level authorisation): the
body is read here, bounded by the route's ``max_body_bytes``, under the same deadlines and with
the same refusals as the streaming forwarder (``gateway.proxy.forward``): 413 over the limit
(before any byte when Content-Length says so), 408 when it stalls or trickles, 400 when it
breaks off or does not parse. The bytes are then handed to ``Forwarder.forward(body=...)``, which
sends exactly them (no second read).

Memory: at most ``limit`` bytes (plus one read of at most 64 KiB) per request in flight.
"""

from __future__ import annotations

from aiohttp import web

from .forward import _BUFFER_LIMIT, BodyDeadlines, _chunks, _limited, _read_small, _too_large

__all__ = ("read_body",)


async def read_body(request: web.BaseRequest, limit: int, *, deadlines: BodyDeadlines | None = None) -> bytes:
    """The request's body (``b""`` when it has none), at most ``limit`` bytes.

    ``deadlines``: the listener's body deadlines (``Forwarder.deadlines``); the defaults otherwise.
    """
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large()  # refused before a byte is read
    if not request.body_exists:
        return b""
    limits = deadlines or BodyDeadlines()
    if length is not None and length <= _BUFFER_LIMIT:
        return await _read_small(request, length, limits)  # one read, one deadline: the usual API body
    parts = [chunk async for chunk in _limited(_chunks(request, limits), limit)]
    return b"".join(parts)
