"""Hot reload of the listener's TLS context: new certificates and trust anchors, no restart.

An asyncio server's ``SSLContext`` is fixed when the server is created. What can change per
connection is the context an ``SSLObject`` uses: the listening context gets an ``sni_callback``
(which OpenSSL calls for every ClientHello, with or without SNI) that switches the connection to
the current context (``SSL_set_SSL_CTX``, what NGINX and Apache do for SNI virtual hosts). After
the switch the connection uses the new context's certificate and key and, for the client
certificate, the new context's CA store (OpenSSL verifies against ``SSL_get_SSL_CTX(s)->cert_store``).
What stays from the listening context: verify mode, options, protocol versions, verify flags and
the session cache; these come from configuration, which is not reloaded, so they never differ.
Open connections keep the context they started with and are never dropped. Session resumption
is looked up before the switch, so sessions older than the last trust-store change are refused
(see ``_on_client_hello``).

Triggers: the server cert/key and CA bundle files change (polled by ``os.stat``; Kubernetes
secret rotation swaps a symlink), the self-signed anchor directory changes, a client JWKS lists
different certificates. A context that fails to build (e.g. a half-written key during rotation)
is logged and the current one kept; the next poll retries.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from ..config.mtls import ClientCertConfig
from ..config.schema import ListenerTls
from ..tasks import stop_tasks
from .anchors import TrustAnchorSet
from .crl import FileStamp, file_stamp
from .names import remember_sni
from .pinning import NO_PINS, Pins

__all__ = ("ContextBuilder", "TlsContextManager")

log = logging.getLogger(__name__)

# build_server_context(tls, extra_trust_anchors_pem=[pem, ...], x509_strict=...) -> SSLContext
ContextBuilder = Callable[[ListenerTls, Sequence[str]], ssl.SSLContext]


def _default_builder(x509_strict: bool) -> ContextBuilder:
    from .context import build_server_context

    def build(tls: ListenerTls, anchors: Sequence[str]) -> ssl.SSLContext:
        return build_server_context(tls, extra_trust_anchors_pem=anchors, x509_strict=x509_strict)

    return build


class TlsContextManager:
    """Owns the listening context (give ``listening_context`` to the server) and swaps in new ones."""

    def __init__(
        self,
        tls: ListenerTls,
        certs: ClientCertConfig,
        *,
        build: ContextBuilder | None = None,
    ) -> None:
        self._tls = tls
        if not certs.x509_strict and tls.client_auth != "none":
            log.warning("client_certs.x509_strict is false: client certificate chains are verified "
                        "without VERIFY_X509_STRICT (legacy PKI opt-in)")
        self._build = build or _default_builder(certs.x509_strict)
        # The registrations each context was built with (a connection keeps the context it
        # started on, so its pins are that context's, not the newest ones).
        self._pins: weakref.WeakKeyDictionary[ssl.SSLContext, Pins] = weakref.WeakKeyDictionary()
        self._interval_s = certs.watch_interval_s
        self._anchors = TrustAnchorSet(certs.self_signed) if certs.self_signed else None
        self._jwks_interval_s = certs.self_signed.refresh_interval_s if certs.self_signed else 0.0
        self._files = (tls.cert, tls.key, *tls.client_ca)
        self._stamps = self._stamp()
        if self._anchors is not None:
            self._anchors.load_directory()  # start-up: blocking is fine, nothing serves yet
        self._anchor_fp = self._anchors.fingerprint() if self._anchors else frozenset()
        ctx = self._build(tls, self._anchor_pem())
        self._current_pins = self._pins[ctx] = self._make_pins()
        ctx.sni_callback = self._on_client_hello
        self._listening = ctx
        self._current = ctx
        self.generation = 0
        self._trust_changed_at = 0  # whole seconds, like SSLSession.time
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def listening_context(self) -> ssl.SSLContext:
        """Pass this to ``web.TCPSite(ssl_context=...)`` / ``loop.create_server(ssl=...)``."""
        return self._listening

    @property
    def current_context(self) -> ssl.SSLContext:
        return self._current

    def pins_for(self, ctx: ssl.SSLContext | None) -> Pins:
        """The self-signed registrations ``ctx`` trusts (the current ones if ``ctx`` is not ours)."""
        if ctx is not None:
            pins = self._pins.get(ctx)
            if pins is not None:
                return pins
        return self._current_pins

    def _make_pins(self) -> Pins:
        return Pins(self._anchors.all()) if self._anchors is not None else NO_PINS

    def _on_client_hello(self, ssl_object: Any, server_name: str | None, ctx: ssl.SSLContext) -> int | None:
        remember_sni(ssl_object, server_name)  # Host is compared with it (gateway.origin)
        current = self._current
        if current is not ctx:
            ssl_object.context = current
        # OpenSSL looks the session up before this callback, so a resumed session skips the new
        # trust store. A session older than the last trust change is refused; the fatal alert
        # also evicts it from the session cache, so the client's retry is a full handshake.
        if self._trust_changed_at and ssl_object.session_reused:
            try:
                created = ssl_object.session.time
            except (ValueError, AttributeError):
                created = 0
            if created <= self._trust_changed_at:
                return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        return None

    def _stamp(self) -> list[FileStamp]:
        return [file_stamp(p) for p in self._files]

    def _anchor_pem(self) -> list[str]:
        return self._anchors.pem() if self._anchors else []

    async def check_files(self) -> bool:
        """Rebuild if a certificate, key, CA bundle or anchor file changed. True if swapped."""
        stamps = await asyncio.to_thread(self._stamp)
        dir_changed = False
        if self._anchors is not None:
            dir_changed = await asyncio.to_thread(self._anchors.load_directory)
        if stamps == self._stamps and not dir_changed:
            return False
        return await self._rebuild(stamps)

    async def refresh_anchors(self) -> bool:
        """Fetch client JWKS documents now; rebuild if the anchors changed. True if swapped."""
        if self._anchors is None:
            return False
        await self._anchors.refresh_jwks()
        if self._anchors.fingerprint() == self._anchor_fp:
            return False
        return await self._rebuild(None)

    async def _rebuild(self, stamps: list[FileStamp] | None) -> bool:
        async with self._lock:
            fp = self._anchors.fingerprint() if self._anchors else frozenset()
            pem = self._anchor_pem()
            # Snapshot on the loop (the JWKS refresh mutates the set there); parse off it.
            ders = self._anchors.all() if self._anchors is not None else {}
            pins = await asyncio.to_thread(Pins, ders) if ders else NO_PINS
            try:
                ctx = await asyncio.to_thread(self._build, self._tls, pem)
            except (OSError, ssl.SSLError, ValueError) as exc:
                log.error("TLS context rebuild failed, keeping the current one: %s", exc)
                return False
            if stamps is None:
                stamps = await asyncio.to_thread(self._stamp)
            if stamps[2:] != self._stamps[2:] or fp != self._anchor_fp:
                # CA bundles or anchors changed (not just the server cert): see _on_client_hello.
                self._trust_changed_at = int(time.time())
            self._current_pins = self._pins[ctx] = pins
            self._current = ctx
            self._stamps = stamps
            self._anchor_fp = fp
            self.generation += 1
            log.info("TLS context reloaded (generation %d, %d self-signed anchors)", self.generation, len(fp))
            return True

    async def start(self) -> None:
        """First JWKS fetch (so registered clients work from the first connection), then the watchers."""
        if self._tasks:
            return
        await self.refresh_anchors()
        files = self._every(self._interval_s, self.check_files)
        self._tasks.append(asyncio.create_task(files, name="tls-files"))
        if self._anchors is not None and self._jwks_interval_s:
            self._tasks.append(
                asyncio.create_task(self._every(self._jwks_interval_s, self.refresh_anchors), name="tls-jwks")
            )

    async def close(self) -> None:
        await stop_tasks(*self._tasks)
        self._tasks.clear()
        if self._anchors is not None:
            await self._anchors.close()

    @staticmethod
    async def _every(interval_s: float, job: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await job()
            except Exception:  # a watcher must never die
                log.exception("TLS reload watcher error")
