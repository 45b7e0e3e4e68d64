// A real authorization server for the interop suite: node-oidc-provider (OpenID-certified,
// FAPI-capable) over HTTPS, asking for client certificates.
//
// Usage: node server.mjs <config.json>
//   The config file is written by tests/interop/interop_as.py (keys and certificates are made in
//   the test session; nothing secret is committed). Shape:
//   {
//     "host": "127.0.0.1", "port": 0,
//     "tls": {"cert": PEM, "key": PEM, "clientCa": PEM},
//     "jwks": {"keys": [private JWKs]},          // first key of an alg signs
//     "clients": [oidc-provider client metadata],
//     "resources": {"<resource indicator>": {"scope": "...", "format": "jwt"|"opaque",
//                                            "alg": "PS256", "ttl": 300}},
//     "adminToken": "random string",               // guards /admin/*
//     "nonceSecret": "64 hex chars", "requireNonce": false
//   }
//   Once listening it prints one JSON line on stdout: {"ready": true, "issuer": ..., "port": ...}.
//
// Admin routes (bearer adminToken, test use only):
//   POST /admin/state   {"jwks"?: ..., "clients"?: ..., "requireNonce"?: bool}
//     rebuilds the Provider with the new settings, same process, same port, same token storage
//     (the memory adapter is module-level), so key rotation looks to the gateway exactly like an
//     AS publishing a new key at its jwks_uri.
// Directory route (public, like an Open Banking directory):
//   GET /directory/clients/<client_id>/jwks.json   the registered client's public JWKS (with x5c)

import { readFileSync } from 'node:fs';
import * as https from 'node:https';
import { timingSafeEqual, createHash } from 'node:crypto';

import Provider, { errors } from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));

const state = {
  jwks: config.jwks,
  clients: config.clients,
  requireNonce: Boolean(config.requireNonce),
};

function getCertificate(ctx) {
  // The provider runs on our own https server: the client certificate is on the TLS socket, not
  // in a header (so no front-proxy header can ever speak for a certificate here).
  const cert = ctx.socket.getPeerX509Certificate?.();
  return cert || undefined;
}

function certificateAuthorized(ctx) {
  // rejectUnauthorized is false so self-signed clients can connect; PKI clients must chain.
  return ctx.socket.authorized === true;
}

function certificateSubjectMatches(ctx, property, expected) {
  // The suite registers PKI clients by SAN dNSName (tls_client_auth_san_dns); other
  // tls_client_auth_* properties are not used, so they never match.
  const cert = getCertificate(ctx);
  if (!cert || property !== 'tls_client_auth_san_dns') return false;
  return (cert.subjectAltName || '').split(', ').includes(`DNS:${expected}`);
}

function resourceServerInfo(indicator) {
  const rs = config.resources[indicator];
  if (!rs) throw new errors.InvalidTarget();
  const info = {
    scope: rs.scope,
    audience: indicator,
    accessTokenTTL: rs.ttl ?? 300,
    accessTokenFormat: rs.format,
  };
  if (rs.format === 'jwt') info.jwt = { sign: { alg: rs.alg ?? 'PS256' } };
  return info;
}

function validateDetail(_ctx, detail) {
  if (!Array.isArray(detail.actions) || detail.actions.length === 0) {
    throw new errors.InvalidAuthorizationDetails('actions are required');
  }
}

function buildProvider(issuer) {
  const scopes = new Set();
  for (const rs of Object.values(config.resources)) {
    for (const s of rs.scope.split(' ')) scopes.add(s);
  }
  const provider = new Provider(issuer, {
    clients: state.clients,
    jwks: state.jwks,
    scopes: [...scopes],
    cookies: { keys: [config.adminToken] },
    clientAuthMethods: [
      'client_secret_basic', 'client_secret_post', 'private_key_jwt',
      'tls_client_auth', 'self_signed_tls_client_auth', 'none',
    ],
    enabledJWA: {
      dPoPSigningAlgValues: ['ES256', 'PS256', 'EdDSA', 'Ed25519'],
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      dPoP: {
        enabled: true,
        nonceSecret: Buffer.from(config.nonceSecret, 'hex'),
        requireNonce: () => state.requireNonce,
      },
      mTLS: {
        enabled: true,
        certificateBoundAccessTokens: true,
        selfSignedTlsClientAuth: true,
        tlsClientAuth: true,
        getCertificate,
        certificateAuthorized,
        certificateSubjectMatches,
      },
      // RFC 9396 for client_credentials (tests/interop/test_interop_rar.py): the details the
      // client asked for go into the access token (JWT claim / introspection response) as they
      // are, after a shape check per type; a real AS would also ask the customer.
      richAuthorizationRequests: {
        enabled: true,
        types: {
          account_information: { validate: validateDetail },
          payment_initiation: { validate: validateDetail },
        },
        authorizationDetailsForAccessToken(ctx, _token, source) {
          const requested = ctx.oidc.params.authorization_details;
          return requested === undefined ? source?.rar : JSON.parse(requested);
        },
        authorizationDetailsForIntrospection: (_ctx, token) => token.rar,
      },
      resourceIndicators: {
        enabled: true,
        // client_credentials without a resource gets no audience: refuse instead (the gateway
        // audience check would refuse such a token anyway; failing here gives a clearer error).
        defaultResource: (_ctx, _client, oneOf) => oneOf,
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, indicator) => resourceServerInfo(indicator),
      },
    },
  });
  provider.on('server_error', (_ctx, err) => {
    process.stderr.write(`server_error: ${err?.stack || err}\n`);
  });
  return provider;
}

function sameSecret(given, expected) {
  const a = createHash('sha256').update(given || '').digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
}

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

function publicJwks(jwks) {
  const privateMembers = new Set(['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k']);
  return {
    keys: (jwks?.keys || []).map(
      (k) => Object.fromEntries(Object.entries(k).filter(([n]) => !privateMembers.has(n))),
    ),
  };
}

let issuer;
let handler;

async function adminOrDirectory(req, res) {
  const url = new URL(req.url, issuer);
  const dir = url.pathname.match(/^\/directory\/clients\/([^/]+)\/jwks\.json$/);
  if (dir && req.method === 'GET') {
    const client = state.clients.find((c) => c.client_id === decodeURIComponent(dir[1]));
    if (!client?.jwks) return send(res, 404, { error: 'not_found' });
    return send(res, 200, publicJwks(client.jwks));
  }
  if (url.pathname === '/admin/state' && req.method === 'POST') {
    const auth = req.headers.authorization || '';
    if (!auth.startsWith('Bearer ') || !sameSecret(auth.slice(7), config.adminToken)) {
      return send(res, 401, { error: 'unauthorized' });
    }
    const body = await readJson(req);
    if (body.jwks) state.jwks = body.jwks;
    if (body.clients) state.clients = body.clients;
    if (typeof body.requireNonce === 'boolean') state.requireNonce = body.requireNonce;
    handler = buildProvider(issuer).callback();
    return send(res, 200, { ok: true });
  }
  return false;
}

const server = https.createServer({
  cert: config.tls.cert,
  key: config.tls.key,
  ca: config.tls.clientCa,
  requestCert: true,
  // Self-signed client certificates must reach the provider (self_signed_tls_client_auth);
  // tls_client_auth checks socket.authorized through certificateAuthorized above.
  rejectUnauthorized: false,
  minVersion: 'TLSv1.2',
});

server.on('request', (req, res) => {
  Promise.resolve(adminOrDirectory(req, res))
    .then((handled) => {
      if (handled === false) handler(req, res);
    })
    .catch((err) => {
      process.stderr.write(`admin error: ${err?.stack || err}\n`);
      if (!res.headersSent) send(res, 400, { error: 'invalid_request' });
    });
});

server.listen(config.port ?? 0, config.host ?? '127.0.0.1', () => {
  const { port } = server.address();
  issuer = `https://${config.host ?? '127.0.0.1'}:${port}`;
  handler = buildProvider(issuer).callback();
  process.stdout.write(`${JSON.stringify({ ready: true, issuer, port })}\n`);
});

// The test process holds our stdin: when it goes away (even by SIGKILL) we go too.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.closeAllConnections?.();
    server.close(() => process.exit(0));
  });
}
