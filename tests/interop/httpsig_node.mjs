// An independent RFC 9421 implementation: the npm http-message-signatures package (not the
// Python library the gateway uses) signs FAPI 2.0 requests and verifies the gateway's response
// signatures, so the two sides agree on the signature base by construction, not by sharing code.
//
// Usage: node httpsig_node.mjs < job.json, one JSON object:
//   {"mode": "sign", "method", "url", "headers", "keyPem", "alg", "keyid", "fields",
//    "tag", "params"?, "nonce"?, "created"? (unix s)}
//       -> prints {"headers": {...}} (the input headers plus Signature-Input / Signature)
//   {"mode": "verify", "request": {method, url, headers}, "response": {status, headers},
//    "jwk" | "keyPem", "alg", "keyid", "requiredFields"}
//       -> prints {"ok": true|false, "error"?}

import { readFileSync } from 'node:fs';
import { createPublicKey } from 'node:crypto';
import { httpbis, createSigner, createVerifier } from 'http-message-signatures';

const job = JSON.parse(readFileSync(0, 'utf8'));

if (job.mode === 'sign') {
  const request = { method: job.method, url: job.url, headers: { ...job.headers } };
  const paramValues = { tag: job.tag };
  if (job.nonce) paramValues.nonce = job.nonce;
  if (job.created) paramValues.created = new Date(job.created * 1000);
  const signed = await httpbis.signMessage({
    key: createSigner(job.keyPem, job.alg, job.keyid),
    name: 'sig',
    fields: job.fields,
    params: job.params ?? ['created', 'keyid', 'tag', ...(job.nonce ? ['nonce'] : [])],
    paramValues,
  }, request);
  process.stdout.write(JSON.stringify({ headers: signed.headers }));
} else if (job.mode === 'verify') {
  // The gateway's key as it publishes it (its JWKS), or a PEM.
  const publicKey = job.jwk ? createPublicKey({ key: job.jwk, format: 'jwk' }) : createPublicKey(job.keyPem);
  try {
    const ok = await httpbis.verifyMessage({
      keyLookup: async (params) => (params.keyid === job.keyid
        ? { id: job.keyid, algs: [job.alg], verify: createVerifier(publicKey, job.alg) }
        : null),
      requiredFields: job.requiredFields,
      requiredParams: ['created', 'keyid', 'tag'],
      maxAge: 60,
      tolerance: 5,
    }, job.response, job.request);
    process.stdout.write(JSON.stringify({ ok: ok === true }));
  } catch (err) {
    process.stdout.write(JSON.stringify({ ok: false, error: String(err && err.message) }));
  }
} else {
  throw new Error(`unknown mode ${job.mode}`);
}
