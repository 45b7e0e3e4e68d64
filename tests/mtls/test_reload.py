"""Hot reload of the listener's TLS context, proven with real handshakes (issue 4; MTLS-07, TLS-01)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import ssl
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from gateway.config.mtls import ClientCertConfig
from gateway.model import sha256_b64url
from gateway.tls.peer import peer_certificate
from gateway.tls.reload import TlsContextManager

from .conftest import Pki, connect, handshake_fails, leaf_der, make_self_signed, serve


def echo_app() -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        peer = peer_certificate(request)
        return web.Response(text=peer.x5t_s256 if peer else "none")

    app = web.Application()
    app.router.add_get("/", handler)
    return app


def replace_file(path: Path, data: bytes) -> None:
    """Like a Kubernetes secret update: a new file moved into place (new inode)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


async def test_rotated_server_cert_for_new_connections_old_connection_kept(mpki: Pki) -> None:
    mgr = TlsContextManager(mpki.listener(), ClientCertConfig())
    old_der = leaf_der(mpki.server)
    async with serve(echo_app(), mgr.listening_context) as port:
        old_conn = await connect(port, mpki.client_ctx(mpki.client_a))
        assert old_conn.server_cert_der == old_der
        assert (await old_conn.get())[0] == 200

        assert await mgr.check_files() is False  # nothing changed yet
        rotated = mpki.ca.issue_cert("localhost", "127.0.0.1")
        replace_file(mpki.server_cert, rotated.cert_chain_pems[0].bytes())
        replace_file(mpki.server_key, rotated.private_key_pem.bytes())
        assert await mgr.check_files() is True
        assert mgr.generation == 1

        for sni in (None, "localhost"):  # with and without SNI in the ClientHello
            new_conn = await connect(port, mpki.client_ctx(mpki.client_a), server_hostname=sni)
            assert new_conn.server_cert_der == leaf_der(rotated)
            status, body = await new_conn.get()
            assert status == 200
            assert body.decode() == sha256_b64url(leaf_der(mpki.client_a))
            await new_conn.close()

        # The connection opened before the rotation is still up and still served.
        status, body = await old_conn.get()
        assert status == 200 and body.decode() == sha256_b64url(leaf_der(mpki.client_a))
        assert old_conn.server_cert_der == old_der
        await old_conn.close()


async def test_reloaded_ca_bundle_is_what_verifies_client_certs(mpki: Pki) -> None:
    """The swapped context's CA store (not only its certificate) applies to new handshakes."""
    other_ca = trustme.CA()
    client_c = other_ca.issue_cert("client-c@example.com")
    mgr = TlsContextManager(mpki.listener(), ClientCertConfig())
    async with serve(echo_app(), mgr.listening_context) as port:
        assert await handshake_fails(port, mpki.client_ctx(client_c))
        assert not await handshake_fails(port, mpki.client_ctx(mpki.client_a))

        replace_file(mpki.ca_file, mpki.ca.cert_pem.bytes() + other_ca.cert_pem.bytes())
        assert await mgr.check_files()
        conn = await connect(port, mpki.client_ctx(client_c))
        assert (await conn.get())[1].decode() == sha256_b64url(leaf_der(client_c))
        await conn.close()

        # Drop the first CA: its clients are refused, so verification uses the new store alone.
        replace_file(mpki.ca_file, other_ca.cert_pem.bytes())
        assert await mgr.check_files()
        assert await handshake_fails(port, mpki.client_ctx(mpki.client_a))
        assert not await handshake_fails(port, mpki.client_ctx(client_c))


async def test_broken_files_keep_the_current_context(mpki: Pki) -> None:
    mgr = TlsContextManager(mpki.listener(), ClientCertConfig())
    async with serve(echo_app(), mgr.listening_context) as port:
        replace_file(mpki.server_key, b"-----BEGIN PRIVATE KEY-----\nhalf written")
        assert await mgr.check_files() is False
        assert mgr.generation == 0
        conn = await connect(port, mpki.client_ctx(mpki.client_a))
        assert conn.server_cert_der == leaf_der(mpki.server)
        await conn.close()
        # The rotation completes: the next poll picks it up.
        rotated = mpki.ca.issue_cert("localhost", "127.0.0.1")
        replace_file(mpki.server_cert, rotated.cert_chain_pems[0].bytes())
        replace_file(mpki.server_key, rotated.private_key_pem.bytes())
        assert await mgr.check_files() is True


def jwks_app(doc: dict[str, object]) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(doc)

    app = web.Application()
    app.router.add_get("/jwks", handler)
    return app


def x5c_key(der: bytes) -> dict[str, object]:
    return {"kty": "EC", "use": "sig", "x5c": [base64.b64encode(der).decode()]}


async def test_self_signed_cert_from_jwks_x5c_refused_before_and_accepted_after_refresh(
    mpki: Pki, tmp_path: Path
) -> None:
    """RFC 8705 §2.2 self_signed_tls_client_auth (MTLS-07 a/b)."""
    client_s = make_self_signed("self-signed-client")
    rogue_ca = make_self_signed("rogue-ca", ca=True)
    doc: dict[str, object] = {"keys": []}
    async with serve(jwks_app(doc), None) as jwks_port:
        cfg = ClientCertConfig.model_validate(
            {"self_signed": {"jwks_urls": [f"http://127.0.0.1:{jwks_port}/jwks"], "refresh_interval_s": 3600}}
        )
        mgr = TlsContextManager(mpki.listener(), cfg)
        await mgr.start()
        try:
            async with serve(echo_app(), mgr.listening_context) as port:
                ctx_s = mpki.client_ctx()
                client_s.configure_cert(ctx_s, tmp_path)
                assert await handshake_fails(port, ctx_s)

                doc["keys"] = [x5c_key(client_s.der), x5c_key(rogue_ca.der)]
                assert await mgr.refresh_anchors() is True
                conn = await connect(port, ctx_s)
                status, body = await conn.get()
                assert status == 200 and body.decode() == sha256_b64url(client_s.der)
                # A CA certificate in a client's JWKS never becomes a trust anchor.
                assert sha256_b64url(rogue_ca.der) not in mgr._anchors.fingerprint()  # type: ignore[union-attr]
                # CA-issued clients still work next to the anchors.
                assert not await handshake_fails(port, mpki.client_ctx(mpki.client_a))

                assert await mgr.refresh_anchors() is False  # same document: no rebuild
                doc["keys"] = []
                assert await mgr.refresh_anchors() is True
                assert await handshake_fails(port, ctx_s)
                # The connection made while it was registered stays open.
                assert (await conn.get())[0] == 200
                await conn.close()
        finally:
            await mgr.close()


async def test_jwks_outage_keeps_previous_anchors(mpki: Pki, tmp_path: Path) -> None:
    client_s = make_self_signed("self-signed-client")
    doc: dict[str, object] = {"keys": [x5c_key(client_s.der)]}
    async with serve(jwks_app(doc), None) as jwks_port:
        url = f"http://127.0.0.1:{jwks_port}/jwks"
        cfg = ClientCertConfig.model_validate({"self_signed": {"jwks_urls": [url]}})
        mgr = TlsContextManager(mpki.listener(), cfg)
        await mgr.start()
    # The JWKS server is gone now.
    try:
        assert await mgr.refresh_anchors() is False
        async with serve(echo_app(), mgr.listening_context) as port:
            ctx_s = mpki.client_ctx()
            client_s.configure_cert(ctx_s, tmp_path)
            assert not await handshake_fails(port, ctx_s)
    finally:
        await mgr.close()


async def test_self_signed_anchor_directory_reloaded(mpki: Pki, tmp_path: Path) -> None:
    anchors = tmp_path / "anchors"
    anchors.mkdir()
    client_s = make_self_signed("dir-client")
    cfg = ClientCertConfig.model_validate({"self_signed": {"directory": str(anchors)}})
    mgr = TlsContextManager(mpki.listener(), cfg)
    async with serve(echo_app(), mgr.listening_context) as port:
        ctx_s = mpki.client_ctx()
        client_s.configure_cert(ctx_s, tmp_path)
        assert await handshake_fails(port, ctx_s)
        (anchors / "client.pem").write_bytes(client_s.cert_pem)
        (anchors / "junk.pem").write_text("not a certificate")
        assert await mgr.check_files() is True
        assert not await handshake_fails(port, ctx_s)
        (anchors / "client.pem").unlink()
        assert await mgr.check_files() is True
        assert await handshake_fails(port, ctx_s)


async def test_watcher_task_picks_up_rotation(mpki: Pki) -> None:
    """start() runs the poller: no explicit call needed (bounded wait on the generation, not timing)."""
    mgr = TlsContextManager(mpki.listener(), ClientCertConfig(watch_interval_s=0.5))
    await mgr.start()
    try:
        rotated = mpki.ca.issue_cert("localhost", "127.0.0.1")
        replace_file(mpki.server_cert, rotated.cert_chain_pems[0].bytes())
        replace_file(mpki.server_key, rotated.private_key_pem.bytes())
        for _ in range(100):
            if mgr.generation:
                break
            await asyncio.sleep(0.1)
        assert mgr.generation == 1
    finally:
        await mgr.close()


def test_json_helper_roundtrip() -> None:
    assert json.loads(json.dumps(x5c_key(b"\x30\x00")))["x5c"] == ["MAA="]


def _fetch_blocking(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> tuple[
    bytes | None, ssl.SSLSession | None, bool
]:
    """One request on a fresh connection (blocking socket: it can offer a session to resume)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := tls.recv(4096):
                    data += chunk
                if not data.startswith(b"HTTP/1.1 200"):
                    return None, None, False  # TLS 1.3: a refused client cert shows up after the handshake
                return data.split(b"\r\n\r\n", 1)[-1], tls.session, bool(tls.session_reused)
        except (ssl.SSLError, ConnectionError):
            return None, None, False


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_session_resumption_cannot_skip_a_reloaded_trust_store(mpki: Pki, version: ssl.TLSVersion) -> None:
    other_ca = trustme.CA()
    client_c = other_ca.issue_cert("client-c@example.com")
    replace_file(mpki.ca_file, mpki.ca.cert_pem.bytes() + other_ca.cert_pem.bytes())
    mgr = TlsContextManager(mpki.listener(), ClientCertConfig())
    async with serve(echo_app(), mgr.listening_context) as port:
        ctx_c, ctx_a = mpki.client_ctx(client_c), mpki.client_ctx(mpki.client_a)
        for ctx in (ctx_c, ctx_a):
            ctx.maximum_version = version
        body, sess_c, _ = await asyncio.to_thread(_fetch_blocking, port, ctx_c)
        assert body == sha256_b64url(leaf_der(client_c)).encode()
        _, sess_a, _ = await asyncio.to_thread(_fetch_blocking, port, ctx_a)
        # Resumption works while nothing changed (so the refusals below are caused by the reload).
        body, sess_c, reused = await asyncio.to_thread(_fetch_blocking, port, ctx_c, sess_c)
        assert reused and body == sha256_b64url(leaf_der(client_c)).encode()

        await asyncio.sleep(1.01)  # session times have a one-second resolution
        replace_file(mpki.ca_file, mpki.ca.cert_pem.bytes())  # other_ca removed
        assert await mgr.check_files()
        assert (await asyncio.to_thread(_fetch_blocking, port, ctx_c, sess_c))[0] is None
        assert (await asyncio.to_thread(_fetch_blocking, port, ctx_c))[0] is None
        # A still-trusted client loses its old session once, then a full handshake works.
        assert (await asyncio.to_thread(_fetch_blocking, port, ctx_a, sess_a))[0] is None
        body, _, reused = await asyncio.to_thread(_fetch_blocking, port, ctx_a)
        assert body == sha256_b64url(leaf_der(mpki.client_a)).encode() and not reused


def test_reload_under_uvloop(mpki: Pki) -> None:
    """`gateway run` uses uvloop when installed: its SSL layer must honour the context switch too."""
    uvloop = pytest.importorskip("uvloop")
    other_ca = trustme.CA()
    client_c = other_ca.issue_cert("client-c@example.com")

    async def scenario() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        mgr = TlsContextManager(mpki.listener(), ClientCertConfig())
        async with serve(echo_app(), mgr.listening_context) as port:
            old = await connect(port, mpki.client_ctx(mpki.client_a))
            assert await handshake_fails(port, mpki.client_ctx(client_c))
            rotated = mpki.ca.issue_cert("localhost", "127.0.0.1")
            replace_file(mpki.server_cert, rotated.cert_chain_pems[0].bytes())
            replace_file(mpki.server_key, rotated.private_key_pem.bytes())
            replace_file(mpki.ca_file, other_ca.cert_pem.bytes())
            assert await mgr.check_files()
            new = await connect(port, mpki.client_ctx(client_c))
            assert new.server_cert_der == leaf_der(rotated)
            assert (await new.get())[0] == 200
            assert await handshake_fails(port, mpki.client_ctx(mpki.client_a))
            assert (await old.get())[0] == 200
            await new.close()
            await old.close()

    uvloop.run(scenario())
