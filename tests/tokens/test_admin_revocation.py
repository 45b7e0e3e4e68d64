"""Issue #13, the kill switch: the admin API (admin listener only, bearer secret) and the deny list.

Real gateway over TLS, real AS (JWKS + introspection over TLS), real signatures, real Redis for the
multi-replica case.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.server import GatewayServer
from tests.conftest import GatewayFactory, Pki, Upstream, gateway_yaml

from .authserver import AuthServer
from .conftest import AUD

pytestmark = pytest.mark.timeout(60)

ADMIN_TOKEN = "adm-" + "x7Kq2" * 8  # 44 characters
ADMIN_LINE = "admin: {host: 127.0.0.1, port: 0}"


def body(auth_server: AuthServer, pki: Pki, upstream: Upstream, extra: str = "") -> str:
    return f"""
    issuers:
      - name: bank-as
        issuer: {auth_server.issuer}
        jwks_uri: {auth_server.url}/jwks
        ca: {pki.ca_pem}
    routes:
      - id: accounts
        match: {{path_prefix: /accounts}}
        upstream: {upstream.url}
        auth: {{issuers: [bank-as], audience: {AUD}, sender_constraint: none}}
    """ + extra


async def start(gateway: GatewayFactory, pki: Pki, text: str, *, token: str | None = ADMIN_TOKEN) -> GatewayServer:
    yaml = gateway_yaml(pki, text)
    if token is not None:
        yaml = yaml.replace(ADMIN_LINE, f'admin: {{host: 127.0.0.1, port: 0, token: "{token}"}}')
    return await gateway(yaml, raw=True)


async def api(gw: GatewayServer, method: str, path: str, payload: Any = None,
              token: str | None = ADMIN_TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as s, s.request(
        method, f"http://127.0.0.1:{gw.admin_port}{path}", json=payload, headers=headers
    ) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


async def get(gw: GatewayServer, pki: Pki, token: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(
        f"https://localhost:{gw.port}/accounts/1", ssl=pki.client_context(),
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        await r.read()
        return r.status, r.headers.get("WWW-Authenticate", "")


@pytest.fixture
def text(auth_server: AuthServer, pki: Pki, upstream: Upstream) -> str:
    return body(auth_server, pki, upstream)


async def test_deny_a_jti(gateway: GatewayFactory, pki: Pki, auth_server: AuthServer, text: str,
                          caplog: pytest.LogCaptureFixture) -> None:
    """JWT-15 (denylist by jti): a leaked token, accepted (and cached), denied -> 401 invalid_token at
    once; others pass. OPS-01: the audit log names the jti, never the admin secret."""
    gw = await start(gateway, pki, text)
    leaked, other = auth_server.token("ec-1", jti="leaked-1"), auth_server.token("ec-1", jti="fine-1")
    assert (await get(gw, pki, leaked))[0] == 200
    caplog.set_level(logging.INFO, logger="gateway.audit")
    status, doc = await api(gw, "POST", "/admin/revocation/deny", {"issuer": "bank-as", "jti": "leaked-1"})
    assert status == 200, doc
    status, www = await get(gw, pki, leaked)
    assert status == 401 and 'error="invalid_token"' in www
    assert (await get(gw, pki, other))[0] == 200
    status, listing = await api(gw, "GET", "/admin/revocation")
    assert status == 200 and listing["jtis"][0]["jti"] == "leaked-1" and listing["jtis"][0]["issuer"] == "bank-as"
    assert listing["jtis"][0]["until"] > 0 and listing["store"] == "memory"
    # Undo a mistake.
    assert (await api(gw, "POST", "/admin/revocation/allow", {"issuer": "bank-as", "jti": "leaked-1"}))[0] == 200
    assert (await get(gw, pki, leaked))[0] == 200
    audit = [r.getMessage() for r in caplog.records if r.name == "gateway.audit"]
    assert any('"action": "deny_jti"' in line and "leaked-1" in line for line in audit), audit
    assert all(ADMIN_TOKEN not in line for line in audit)


async def test_deny_a_kid(gateway: GatewayFactory, pki: Pki, auth_server: AuthServer, text: str) -> None:
    """OPS-06: an AS signing key leaked: every token signed with it is refused, even cached ones and
    even while the AS still publishes the key; tokens of the other keys pass."""
    gw = await start(gateway, pki, text)
    ec_tok, rsa_tok = auth_server.token("ec-1"), auth_server.token("rsa-1")
    assert (await get(gw, pki, ec_tok))[0] == 200
    status, _ = await api(gw, "POST", "/admin/revocation/deny", {"issuer": "bank-as", "kid": "ec-1"})
    assert status == 200
    assert (await get(gw, pki, ec_tok))[0] == 401
    assert (await get(gw, pki, auth_server.token("ec-1")))[0] == 401  # a new token with that key
    assert (await get(gw, pki, rsa_tok))[0] == 200
    fetches = auth_server.jwks_fetches
    for _ in range(5):
        assert (await get(gw, pki, auth_server.token("ec-1")))[0] == 401
    assert auth_server.jwks_fetches == fetches  # a denied kid is not an unknown kid: no refetch
    status, listing = await api(gw, "GET", "/admin/revocation")
    assert listing["kids"] == [{"issuer": "bank-as", "kid": "ec-1", "source": "admin"}]


async def test_flush_refetches_jwks_and_drops_cache(gateway: GatewayFactory, pki: Pki, auth_server: AuthServer,
                                                   text: str) -> None:
    gw = await start(gateway, pki, text)
    tok = auth_server.token("ec-1")
    assert (await get(gw, pki, tok))[0] == 200
    auth_server.published = [auth_server.key("rsa-1").public_jwk()]
    fetches = auth_server.jwks_fetches
    status, doc = await api(gw, "POST", "/admin/revocation/flush", {"issuer": "bank-as"})
    assert status == 200 and doc["jwks_loaded"] is True
    assert auth_server.jwks_fetches == fetches + 1
    assert (await get(gw, pki, tok))[0] == 401


async def test_admin_api_disabled_without_a_token(gateway: GatewayFactory, pki: Pki, auth_server: AuthServer,
                                                  text: str) -> None:
    """Safe default: no admin.token, no write operations (and nothing is denied)."""
    gw = await start(gateway, pki, text, token=None)
    tok = auth_server.token("ec-1", jti="j-1")
    status, doc = await api(gw, "POST", "/admin/revocation/deny", {"issuer": "bank-as", "jti": "j-1"})
    assert status == 403 and doc["error"] == "admin_api_disabled"
    assert (await get(gw, pki, tok))[0] == 200
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{gw.admin_port}/healthz") as r:
        assert r.status == 200  # health stays open


@pytest.mark.parametrize("presented", [None, "wrong", ADMIN_TOKEN[:-1], ADMIN_TOKEN + "x", ADMIN_TOKEN.upper()])
async def test_admin_api_needs_the_secret(gateway: GatewayFactory, pki: Pki, auth_server: AuthServer, text: str,
                                          presented: str | None) -> None:
    gw = await start(gateway, pki, text)
    for method, path, payload in (("POST", "/admin/revocation/deny", {"issuer": "bank-as", "jti": "j"}),
                                  ("POST", "/admin/revocation/flush", {"issuer": "bank-as"}),
                                  ("GET", "/admin/revocation", None)):
        status, doc = await api(gw, method, path, payload, token=presented)
        assert status == 401, (method, path, doc)
        assert ADMIN_TOKEN not in json.dumps(doc)


async def test_admin_api_never_on_the_public_listener(gateway: GatewayFactory, pki: Pki, auth_server: AuthServer,
                                                      text: str) -> None:
    gw = await start(gateway, pki, text)
    async with aiohttp.ClientSession() as s, s.post(
        f"https://localhost:{gw.port}/admin/revocation/deny", ssl=pki.client_context(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, json={"issuer": "bank-as", "jti": "j"},
    ) as r:
        assert r.status == 404
    assert (await api(gw, "GET", "/admin/revocation"))[1]["jtis"] == []


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"issuer": "nobody", "jti": "j"}, 404),
        ({"issuer": "bank-as"}, 400),
        ({"issuer": "bank-as", "jti": "j", "kid": "k"}, 400),
        ({"issuer": "bank-as", "jti": "j" * 2000}, 400),
        ({"issuer": "bank-as", "jti": "j", "ttl_s": -1}, 400),
        ({"issuer": "bank-as", "jti": "j", "ttl_s": 10**9}, 400),
        ({"issuer": "bank-as", "jti": 5}, 400),
        ({"issuer": "bank-as", "jti": "j", "extra": 1}, 400),
        ("not an object", 400),
    ],
)
async def test_admin_api_bad_input(gateway: GatewayFactory, pki: Pki, auth_server: AuthServer, text: str,
                                   payload: Any, status: int) -> None:
    gw = await start(gateway, pki, text)
    got, doc = await api(gw, "POST", "/admin/revocation/deny", payload)
    assert got == status, doc
    assert isinstance(doc, dict) and "error" in doc


async def test_jti_denials_are_bounded(gateway: GatewayFactory, pki: Pki, auth_server: AuthServer,
                                       upstream: Upstream, clock: Any) -> None:
    """At most max_denied_jtis: beyond it the API says so (507) and evicts nothing; expired go first."""
    gw = await start(gateway, pki, body(auth_server, pki, upstream, "revocation: {max_denied_jtis: 2}"))
    deny = "/admin/revocation/deny"
    assert (await api(gw, "POST", deny, {"issuer": "bank-as", "jti": "a", "ttl_s": 0.2}))[0] == 200
    assert (await api(gw, "POST", deny, {"issuer": "bank-as", "jti": "b"}))[0] == 200
    status, doc = await api(gw, "POST", deny, {"issuer": "bank-as", "jti": "c"})
    assert status == 507 and doc["error"] == "deny_list_full"
    await asyncio.sleep(0.3)  # "a" expires: its slot is reused
    assert (await api(gw, "POST", deny, {"issuer": "bank-as", "jti": "c"}))[0] == 200
    jtis = {e["jti"] for e in (await api(gw, "GET", "/admin/revocation"))[1]["jtis"]}
    assert jtis == {"b", "c"}


async def test_config_deny_list(gateway: GatewayFactory, pki: Pki, auth_server: AuthServer, upstream: Upstream) -> None:
    """The durable way: ``revocation.deny`` in the file (hot-reloaded like the rest of it)."""
    extra = """
    revocation:
      deny:
        - {issuer: bank-as, kid: rsa-1}
        - {issuer: bank-as, jti: cfg-denied}
        - {issuer: bank-as, jti: expired-denial, until: "2001-01-01T00:00:00Z"}
    """
    gw = await start(gateway, pki, body(auth_server, pki, upstream, extra))
    assert (await get(gw, pki, auth_server.token("rsa-1")))[0] == 401
    assert (await get(gw, pki, auth_server.token("ec-1", jti="cfg-denied")))[0] == 401
    assert (await get(gw, pki, auth_server.token("ec-1", jti="expired-denial")))[0] == 200
    assert (await get(gw, pki, auth_server.token("ec-1")))[0] == 200
    _, listing = await api(gw, "GET", "/admin/revocation")
    assert {"issuer": "bank-as", "kid": "rsa-1", "source": "config"} in listing["kids"]


def test_config_deny_list_errors(pki: Pki) -> None:
    base = """
    routes:
      - {id: r, match: {path_prefix: /}, upstream: "http://127.0.0.1:1", auth: none}
    issuers:
      - {name: bank-as, issuer: https://as.example, jwks_uri: https://as.example/j}
    revocation:
      deny:
    """
    for entry, message in (
        ("- {issuer: nobody, kid: k}", "revocation.deny[0].issuer"),
        ("- {issuer: bank-as}", "exactly one of kid or jti"),
        ("- {issuer: bank-as, kid: k, until: '2030-01-01T00:00:00Z'}", "until applies to jti"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_config(gateway_yaml(pki, base + "        " + entry))
        assert message in str(info.value), str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_config(gateway_yaml(pki, base + "        []").replace(ADMIN_LINE, 'admin: {token: "short"}'))
    assert "admin.token" in str(info.value)


async def test_denial_reaches_every_replica_through_redis(
    gateway: GatewayFactory, pki: Pki, auth_server: AuthServer, upstream: Upstream,
    redis_url: str, redis_key_prefix: str,
) -> None:
    """OPS-02a: two gateways sharing the Redis replay store: a denial made on one is enforced by the other."""
    extra = f"""
    dpop:
      replay: {{backend: redis, redis: {{url: "{redis_url}", key_prefix: "{redis_key_prefix}jti:"}}}}
    revocation:
      redis_key_prefix: "{redis_key_prefix}revocation:"
      sync_interval_s: 0.1
    """
    text = body(auth_server, pki, upstream, extra)
    a = await start(gateway, pki, text)
    b = await start(gateway, pki, text)
    tok = auth_server.token("ec-1", jti="shared-leak")
    assert (await get(b, pki, tok))[0] == 200
    status, doc = await api(a, "POST", "/admin/revocation/deny", {"issuer": "bank-as", "jti": "shared-leak"})
    assert status == 200 and doc["store"] == "redis"
    for _ in range(100):
        if (await get(b, pki, tok))[0] == 401:
            break
        await asyncio.sleep(0.05)
    assert (await get(b, pki, tok))[0] == 401
    status, listing = await api(b, "GET", "/admin/revocation")
    assert listing["jtis"][0]["jti"] == "shared-leak" and listing["store"] == "redis"
    # A flush made on A also reaches B: B drops its cache and refetches its JWKS.
    fetches = auth_server.jwks_fetches
    assert (await api(a, "POST", "/admin/revocation/flush", {"issuer": "bank-as"}))[0] == 200
    for _ in range(100):
        if auth_server.jwks_fetches >= fetches + 2:
            break
        await asyncio.sleep(0.05)
    assert auth_server.jwks_fetches >= fetches + 2
    # A third replica started later loads the existing denials.
    c = await start(gateway, pki, text)
    assert (await get(c, pki, tok))[0] == 401
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url)
    await client.delete(*[f"{redis_key_prefix}revocation:{k}"
                          for k in ("kids", "jtis", "flush", "version", "generation")])
    await client.aclose()


async def test_deny_list_hot_reload_keeps_runtime_denials(pki: Pki, auth_server: AuthServer, upstream: Upstream,
                                                          tmp_path: Any) -> None:
    """A reload applies the file's deny list (both ways) and keeps the denials made through the API."""
    from gateway.config import load_config

    path = tmp_path / "gw.yaml"
    plain = gateway_yaml(pki, body(auth_server, pki, upstream)).replace(
        ADMIN_LINE, f'admin: {{host: 127.0.0.1, port: 0, token: "{ADMIN_TOKEN}"}}')
    path.write_text(plain)
    gw = GatewayServer(load_config(path), config_path=str(path))
    await gw.start()
    try:
        rsa_tok, runtime_tok = auth_server.token("rsa-1"), auth_server.token("ec-1", jti="runtime-1")
        assert (await api(gw, "POST", "/admin/revocation/deny", {"issuer": "bank-as", "jti": "runtime-1"}))[0] == 200
        assert (await get(gw, pki, rsa_tok))[0] == 200
        path.write_text(plain + "\nrevocation:\n  deny:\n    - {issuer: bank-as, kid: rsa-1}\n")
        assert await gw.reload()
        assert (await get(gw, pki, rsa_tok))[0] == 401
        assert (await get(gw, pki, runtime_tok))[0] == 401
        assert (await get(gw, pki, auth_server.token("ec-1")))[0] == 200
        path.write_text(plain)
        assert await gw.reload()
        assert (await get(gw, pki, rsa_tok))[0] == 200
        assert (await get(gw, pki, runtime_tok))[0] == 401
    finally:
        await gw.stop()


async def test_redis_down_denial_still_enforced_here(gateway: GatewayFactory, pki: Pki, auth_server: AuthServer,
                                                     upstream: Upstream, own_redis: Any) -> None:
    """Redis unreachable: the API says 503 (retry), but this process enforces the denial at once."""
    extra = f"""
    dpop:
      replay: {{backend: redis, redis: {{url: "{own_redis.url}", timeout_s: 0.2, connect_timeout_s: 0.2}}}}
    revocation: {{sync_interval_s: 0.1}}
    """
    gw = await start(gateway, pki, body(auth_server, pki, upstream, extra))
    tok = auth_server.token("ec-1", jti="during-outage")
    assert (await get(gw, pki, tok))[0] == 200
    own_redis.stop()
    status, doc = await api(gw, "POST", "/admin/revocation/deny", {"issuer": "bank-as", "jti": "during-outage"})
    assert status == 503 and doc["error"] == "store_unavailable"
    assert (await get(gw, pki, tok))[0] == 401
    await asyncio.sleep(0.3)  # failed syncs keep the last copy
    assert (await get(gw, pki, tok))[0] == 401
    own_redis.start()
    status, doc = await api(gw, "POST", "/admin/revocation/deny", {"issuer": "bank-as", "jti": "during-outage"})
    assert status == 200 and doc["store"] == "redis"
