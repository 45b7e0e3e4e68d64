"""Header names a client must never send through the gateway, matched by normalised name.

Why normalised: many upstream stacks read ``X_Auth_Subject`` as ``X-Auth-Subject`` (CGI/WSGI and
Django's ``HTTP_X_AUTH_SUBJECT``, ASGI servers, PHP, some Java filters). A strip list compared
byte for byte lets the underscore form through (issue #13 finding 5), so every comparison here
is on ``normalise(name)``: lower case, ``_`` read as ``-``.

The tables list what the major proxies, identity-aware proxies and clouds set for their
upstreams. An upstream behind any of them may trust these blindly, and the gateway may one day
sit in front of such an upstream, so a client-sent copy is always removed (RFC 9700 §4.13,
checklist PRX-05, MTLS-13, AUTHZ-04). Families that grow new members are matched by prefix.
"""

from __future__ import annotations

from typing import Final

__all__ = (
    "IDENTITY_EXACT",
    "IDENTITY_PREFIXES",
    "OVERRIDE_EXACT",
    "is_identity_header",
    "is_override_header",
    "normalise",
)


def normalise(name: str) -> str:
    """The name as most upstream stacks read it: case-insensitive, ``_`` equal to ``-``."""
    return name.lower().replace("_", "-")


IDENTITY_EXACT: Final = frozenset(
    (
        # RFC 7239 and de-facto client-address headers
        "forwarded",
        "x-real-ip",
        "true-client-ip",  # Akamai, Cloudflare Enterprise
        "x-client-ip",  # Azure App Service, many frameworks' "real IP" lookups
        "x-cluster-client-ip",  # Rackspace, Riverbed
        "cf-connecting-ip",
        "cf-connecting-ipv6",
        "cf-ipcountry",
        "fastly-client-ip",
        "x-originating-ip",
        "x-remote-ip",
        "x-remote-addr",
        "x-proxyuser-ip",
        "client-ip",
        "x-host",
        "x-original-host",  # Azure Front Door / App Gateway
        # client certificates (RFC 9440, nginx, HAProxy, IIS/ARR, WSO2, Traefik, Envoy)
        "client-cert",
        "client-cert-chain",
        "x-client-verify",
        "x-client-dn",
        "x-client-s-dn",
        "x-client-i-dn",
        "x-clientcert",
        "x-wso2-client-certificate",
        # user identity (oauth2-proxy, Authelia, Pomerium, Grafana auth proxy, Kong, Tyk, IdPs)
        "remote-user",
        "remote-groups",
        "remote-email",
        "remote-name",
        "gap-auth",
        "x-id-token",
        "x-access-token",
        "x-client-id",
        "x-anonymous-consumer",
        "x-principal",
        "x-endpoint-api-userinfo",  # GCP Cloud Endpoints (ESP)
        "x-apigateway-api-userinfo",  # GCP API Gateway
        "x-serverless-authorization",  # GCP Cloud Run
        "x-amzn-vpce-id",  # AWS API Gateway private endpoints (resource policies key on it)
        "x-amzn-vpc-id",
        "x-istio-attributes",
    )
)

IDENTITY_PREFIXES: Final = (
    "x-forwarded-",  # -for/-host/-proto/-port/-prefix/-path/-uri/-user/-email/-client-cert/-tls-*
    "x-original-forwarded-",
    "x-envoy-",  # Envoy trusts x-envoy-internal, -external-address, -original-path from "internal" peers
    "x-auth-",  # x-auth-request-* (oauth2-proxy), x-auth-subject, and the gateway's own x-auth-*
    "x-authenticated-",  # Kong x-authenticated-userid/-scope, others
    "x-user",  # x-user, x-user-id, x-username, x-userinfo, x-user-email (not x-user-agent, below)
    "x-jwt",  # x-jwt-assertion (WSO2), x-jwt-claims, x-jwt-payload
    "x-remote-",  # x-remote-user/-group/-extra-* (Kubernetes authenticating proxy)
    "x-consumer-",  # Kong, Tyk
    "x-credential-",  # Kong
    "x-webauth-",  # Grafana auth proxy
    "x-pomerium-",
    "x-amzn-oidc-",  # AWS ALB authentication
    "x-amzn-mtls-",  # AWS ALB mTLS passthrough
    "x-ms-client-principal",  # Azure App Service Easy Auth (-id, -name, -idp)
    "x-ms-token-",  # Azure Easy Auth token store (x-ms-token-aad-access-token, ...)
    "x-azure-",  # Azure Front Door x-azure-clientip, -socketip, -fdid (access restrictions key on it)
    "x-goog-authenticated-user-",  # GCP IAP
    "x-goog-iap-",  # GCP IAP x-goog-iap-jwt-assertion
    "x-appengine-",  # App Engine x-appengine-user-email, -inbound-appid
    "cf-access-",  # Cloudflare Access cf-access-authenticated-user-email, -jwt-assertion
    "x-ssl-",  # nginx/HAProxy conventions: x-ssl-client-cert, -verify, -s-dn, x-ssl-cert
    "ssl-client-",
    "x-client-cert",  # x-client-cert, x-client-certificate, x-client-cert-chain
    "x-arr-client",  # IIS Application Request Routing x-arr-clientcert
    "x-arr-ssl",
    "x-tls-client-",
)

# Not identity, though a prefix above would catch them.
_NOT_IDENTITY: Final = frozenset(("x-user-agent",))

# Headers by which a framework or upstream acts on another method or path than the one the
# gateway authorised (issue #13 finding 6). X-Forwarded-Path/-Prefix/-Uri and X-Envoy-Original-Path
# are in the identity prefixes above and always removed.
OVERRIDE_EXACT: Final = frozenset(
    (
        "x-http-method-override",  # Google APIs, Express method-override, Spring HiddenHttpMethodFilter kin
        "x-http-method",  # OData, Microsoft
        "x-method-override",
        "x-original-method",
        "x-original-url",  # IIS URL Rewrite, Symfony/Laravel (older)
        "x-rewrite-url",  # IIS / Zend
        "x-original-uri",
        "x-original-path",
        "x-override-url",
    )
)


def is_identity_header(normalised: str) -> bool:
    if normalised in IDENTITY_EXACT:
        return True
    return normalised.startswith(IDENTITY_PREFIXES) and normalised not in _NOT_IDENTITY


def is_override_header(normalised: str) -> bool:
    return normalised in OVERRIDE_EXACT
