"""Certificates made in-session and small real-TLS helpers for the mTLS tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.config.schema import GatewayConfig, ListenerTls
from gateway.errors import GatewayError
from gateway.tls.clientcerts import ClientCertificates

UTC = dt.UTC


@dataclass
class SelfSigned:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_pem: bytes
    key_pem: bytes

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def configure_cert(self, ctx: ssl.SSLContext, tmp: Path) -> None:
        path = tmp / f"ss-{self.cert.serial_number}.pem"
        path.write_bytes(self.cert_pem + self.key_pem)
        ctx.load_cert_chain(path)


def make_self_signed(
    cn: str,
    *,
    ca: bool = False,
    eku: tuple[x509.ObjectIdentifier, ...] | None = (ExtendedKeyUsageOID.CLIENT_AUTH,),
    not_after: dt.datetime | None = None,
) -> SelfSigned:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(not_after or now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    return SelfSigned(
        cert=cert,
        key=key,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def leaf_der(leaf: trustme.LeafCert) -> bytes:
    pem = leaf.cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


@dataclass
class Pki:
    ca: trustme.CA
    server: trustme.LeafCert
    client_a: trustme.LeafCert
    client_b: trustme.LeafCert
    dir: Path
    server_cert: Path
    server_key: Path
    ca_file: Path

    def listener(self, client_auth: str = "optional", **kw: object) -> ListenerTls:
        return ListenerTls(
            cert=str(self.server_cert),
            key=str(self.server_key),
            client_ca=(str(self.ca_file),),
            client_auth=client_auth,
            **kw,
        )

    def client_ctx(self, leaf: trustme.LeafCert | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        if leaf is not None:
            leaf.configure_cert(ctx)
        return ctx


@pytest.fixture
def mpki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client_a = ca.issue_cert("client-a@example.com", common_name="client-a")
    client_b = ca.issue_cert("client-b@example.com", common_name="client-b")
    d = tmp_path / "pki"
    d.mkdir()
    server_cert, server_key, ca_file = d / "server.crt", d / "server.key", d / "ca.pem"
    server.cert_chain_pems[0].write_to_path(str(server_cert))
    server.private_key_pem.write_to_path(str(server_key))
    ca.cert_pem.write_to_path(str(ca_file))
    return Pki(ca, server, client_a, client_b, d, server_cert, server_key, ca_file)


@asynccontextmanager
async def serve(app: web.Application, ssl_context: ssl.SSLContext | None) -> AsyncIterator[int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    server = site._server
    assert server is not None
    port: int = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        yield port
    finally:
        await runner.cleanup()


class Conn:
    """One raw HTTP/1.1 keep-alive connection over TLS (so a test controls which connection is used)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @property
    def server_cert_der(self) -> bytes:
        sslobj = self.writer.get_extra_info("ssl_object")
        der: bytes = sslobj.getpeercert(binary_form=True)
        return der

    async def get(self, path: str = "/", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        lines = [f"GET {path} HTTP/1.1", "Host: localhost"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("connection closed")
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


async def connect(port: int, ctx: ssl.SSLContext, server_hostname: str | None = None) -> Conn:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=server_hostname or "127.0.0.1"
    )
    return Conn(reader, writer)


async def handshake_fails(port: int, ctx: ssl.SSLContext) -> bool:
    """True when the server refuses us (TLS 1.3 reports a client-cert refusal on first read)."""
    try:
        conn = await connect(port, ctx)
        try:
            await conn.get("/")
        finally:
            await conn.close()
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return True
    return False


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def gateway_config(client_certs: dict[str, object], listen: dict[str, object] | None = None) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "listen": listen or {},
            "routes": [{"id": "r", "match": {"path_prefix": "/"}, "upstream": "http://127.0.0.1:9", "auth": "none"}],
            "client_certs": client_certs,
        }
    )


def certs_app(certs: ClientCertificates) -> web.Application:
    """Answers with what the certificate stage decided: the x5t (or "none"), or the refusal."""

    async def handler(request: web.Request) -> web.Response:
        try:
            peer = certs.peer_certificate(request)
        except GatewayError as exc:
            return web.json_response({"reason": exc.reason, "description": exc.description}, status=exc.status)
        fwd = certs.upstream_header(peer)
        return web.json_response(
            {"x5t": peer.x5t_s256 if peer else None, "source": peer.source if peer else None, "forward": fwd}
        )

    app = web.Application()
    app.router.add_get("/", handler)
    return app


def make_crl(ca: trustme.CA, serials: list[int]) -> bytes:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    now = dt.datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(now + dt.timedelta(days=1))
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    crl = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
    return crl.public_bytes(serialization.Encoding.PEM)


def serial_of(leaf: trustme.LeafCert) -> int:
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number
