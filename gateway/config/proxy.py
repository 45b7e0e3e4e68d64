"""``proxy:`` — how this gateway presents itself as a hop, and which header names it accepts.

* ``pseudonym``: the ``received-by`` name this gateway writes in ``Via`` (RFC 9110 §7.6.3) and
  looks for to detect a forwarding loop (PRX-04). Default: derived from the deployment's public
  identity (``listen.external_origin``, else the listener certificate's public key, else the
  machine's host name and port; see ``gateway.proxy.headers.default_pseudonym``), so replicas of one
  deployment share it and two gateways chained on purpose do not collide. Set it explicitly when
  several deployments share one certificate and are chained.
* ``underscore_headers``: what to do with a request header whose name contains ``_``. Many
  upstream stacks read ``X_Auth_User`` as ``X-Auth-User``. ``reject`` (default): 400.
  ``drop``: removed, the request passes (nginx's ``underscores_in_headers off``). ``forward``:
  passed on, except names that normalise to a stripped header (always removed).
* ``server_header``: the ``Server`` header clients get. Default: none at all; the upstream's own
  (``Python/3.11 aiohttp/...``, ``nginx/1.25``: a version list for a scanner) is removed too.
  A value (e.g. ``bank-api``) is sent instead, on every response of the public listener (also
  those made before a route matched: 404, 400/405/505 at the wire, 408).
  ``relay_upstream_server: true`` passes the upstream's through (the behaviour before).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .base import Model

__all__ = ("ProxyConfig",)


class ProxyConfig(Model):
    # RFC 9110 §7.6.3 ``pseudonym`` is a token; no commas, spaces or parentheses that would split Via.
    pseudonym: Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")] | None = None
    underscore_headers: Literal["reject", "drop", "forward"] = "reject"
    # RFC 9110 §10.2.4 product tokens; printable ASCII only (a header value).
    server_header: Annotated[str, Field(pattern=r"^[\x20-\x7e]{1,100}$")] | None = None
    relay_upstream_server: bool = False
