// The Node peer: express + express-oauth2-jwt-bearer (JWT + DPoP, RFC 9449) behind an mTLS
// listener, proxying allowed requests to the upstream over a keep-alive agent.
// The library checks the proof (typ, alg, jwk, htm, htu, iat, ath) and cnf.jkt; it keeps no
// jti replay cache (documented), so it does less work per request than the gateway.
// Usage: node server.js config.json
'use strict';
const fs = require('fs');
const http = require('http');
const https = require('https');
const express = require('express');
const { auth } = require('express-oauth2-jwt-bearer');

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const upstream = new URL(cfg.upstream);
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
const HOP = new Set(['connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'te',
  'trailer', 'transfer-encoding', 'upgrade', 'host']);

const app = express();
app.disable('x-powered-by');
app.set('etag', false);
app.use(auth({
  issuer: cfg.issuer,
  audience: cfg.audience,
  publicKey: JSON.parse(fs.readFileSync(cfg.jwks, 'utf8')),
  tokenSigningAlg: 'ES256',
  dpop: { enabled: true, required: true },
}));
app.use((req, res) => {
  const headers = {};
  for (const [k, v] of Object.entries(req.headers)) if (!HOP.has(k)) headers[k] = v;
  headers.host = upstream.host;
  const preq = http.request({
    host: upstream.hostname, port: upstream.port, method: req.method, path: req.originalUrl, headers, agent,
  }, (pres) => {
    const out = {};
    for (const [k, v] of Object.entries(pres.headers)) if (!HOP.has(k)) out[k] = v;
    res.writeHead(pres.statusCode, out);
    pres.pipe(res);
  });
  preq.on('error', () => { if (!res.headersSent) res.status(502).end(); else res.destroy(); });
  req.pipe(preq);
});
app.use((err, req, res, next) => {  // eslint-disable-line no-unused-vars
  res.status(err.status || 500);
  if (err.headers) res.set(err.headers);
  res.json({ error: err.code || 'error' });
});

const server = https.createServer({
  key: fs.readFileSync(cfg.key), cert: fs.readFileSync(cfg.cert), ca: fs.readFileSync(cfg.ca),
  requestCert: true, rejectUnauthorized: true,
}, app);
server.keepAliveTimeout = 120000;
server.headersTimeout = 125000;
server.listen(cfg.port, '127.0.0.1');
