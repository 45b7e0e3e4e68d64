// A second, independent OAuth client: panva's oauth4webapi (its own DPoP proof implementation,
// WebCrypto keys) gets a DPoP-bound token from the AS and calls a resource through the gateway.
//
// Usage: node node_client.mjs '<json>' with
//   {"issuer", "clientId", "clientSecret", "resource", "scope", "url"?, "method"?, "alg"?}
//   (without url: only the token request; the token is then printed as "accessToken")
// Trust: NODE_EXTRA_CA_CERTS must name a PEM bundle with the AS's and the gateway's CAs.
// Prints one JSON line: {"status", "body", "tokenType", "jkt", "tokenNonceRetries",
//   "resourceNonceRetries", "challenge"}.

import * as oauth from 'oauth4webapi';
import { calculateJwkThumbprint, exportJWK } from 'jose';

const args = JSON.parse(process.argv[2]);

// Retrying once after use_dpop_nonce is the documented oauth4webapi pattern (RFC 9449 §8/§9).
async function withNonceRetry(fn, counter) {
  try {
    return await fn();
  } catch (err) {
    if (oauth.isDPoPNonceError(err)) {
      counter.n += 1;
      return fn();
    }
    throw err;
  }
}

const issuer = new URL(args.issuer);
const as = await oauth
  .discoveryRequest(issuer, { algorithm: 'oidc' })
  .then((response) => oauth.processDiscoveryResponse(issuer, response));

const client = { client_id: args.clientId };
const clientAuth = oauth.ClientSecretBasic(args.clientSecret);
// 'Ed25519' keys: oauth4webapi writes alg "Ed25519" in the proof (RFC 9864), never "EdDSA".
const keyPair = await oauth.generateKeyPair(args.alg ?? 'ES256');
const DPoP = oauth.DPoP(client, keyPair);
const tokenRetries = { n: 0 };
const resourceRetries = { n: 0 };

const tokenResponse = await withNonceRetry(async () => {
  const response = await oauth.clientCredentialsGrantRequest(
    as, client, clientAuth, { scope: args.scope, resource: args.resource }, { DPoP },
  );
  return oauth.processClientCredentialsResponse(as, client, response);
}, tokenRetries);

const out = {
  tokenType: tokenResponse.token_type,
  jkt: await calculateJwkThumbprint(await exportJWK(keyPair.publicKey)),
};

if (args.url) {
  try {
    const response = await withNonceRetry(
      () => oauth.protectedResourceRequest(
        tokenResponse.access_token, args.method ?? 'GET', new URL(args.url), new Headers(), null, { DPoP },
      ),
      resourceRetries,
    );
    out.status = response.status;
    out.body = await response.text();
  } catch (err) {
    if (!(err instanceof oauth.WWWAuthenticateChallengeError)) throw err;
    out.status = err.response.status;
    out.challenge = err.cause;
  }
} else {
  out.accessToken = tokenResponse.access_token;
}
out.tokenNonceRetries = tokenRetries.n;
out.resourceNonceRetries = resourceRetries.n;
process.stdout.write(`${JSON.stringify(out)}\n`);
