"""Every way a request can be refused, one exception type per outcome.

The class fixes the HTTP status and the OAuth error code; an instance carries only a short,
client-safe description and a stable ``reason`` code (a low-cardinality metrics label and the
access log's ``reason`` field). ``gateway.challenge`` is the only code that turns these into
``WWW-Authenticate`` headers, so no stage ever writes an auth header by hand.

    GatewayError                          status, reason
    ├── OAuthError                        error code, scheme that failed; rendered as a challenge
    │   ├── MissingCredentialsError       401, challenge with NO error (RFC 6750 §3.1, RFC 9449 §7.1)
    │   ├── InvalidRequestError           400 invalid_request
    │   ├── InvalidTokenError             401 invalid_token (also binding failures, RFC 8705 §3)
    │   ├── InsufficientScopeError        403 insufficient_scope (+ scope)
    │   ├── InsufficientAuthorizationDetailsError 403 insufficient_authorization_details (authz rules)
    │   ├── InsufficientAuthorizationError 401 insufficient_authorization (+ authorization_remediation)
    │   ├── InvalidDpopProofError         401 invalid_dpop_proof (RFC 9449 §7.1)
    │   └── UseDpopNonceError             401 use_dpop_nonce (+ DPoP-Nonce, RFC 9449 §9)
    ├── DependencyError                   never blames the client; fail closed
    │   ├── KeySourceUnavailableError     503 (JWKS unreachable and no cached key)
    │   ├── IntrospectionUnavailableError 503
    │   │   └── IntrospectionBusyError    503 (shed before calling the AS: slots, queue, source budget)
    │   ├── ReplayStoreUnavailableError   503
    │   ├── RevocationDataStaleError      503 (the client certificate's CRL is past nextUpdate)
    │   ├── UpstreamUnavailableError      502
    │   ├── UpstreamTimeoutError          504
    │   └── DecisionBusyError             503 (decision front: max_concurrent checks in flight)
    ├── RouteNotFoundError                404
    ├── CorsRefusedError                  403 (preflight from an origin not allowed)
    ├── ClientCertificateRefusedError     403 (refused certificate on a route that does not authenticate)
    ├── MethodNotAllowedError             405
    ├── MisdirectedRequestError           421
    ├── RequestTimeoutError               408 (the request body stalled), connection closed
    ├── PayloadTooLargeError              413
    ├── HeaderRefusedError                400 (underscore names, bad Max-Forwards/Host for forwarding)
    ├── TransferCodingNotImplementedError 501 (RFC 9112 §6.1), connection closed
    ├── LoopDetectedError                 508 (our own Via pseudonym came back, RFC 9110 §7.6)
    ├── ClientBodyError                   400 (the request body broke off or did not parse)
    ├── UntrustedCallerError              403 (a decision check from a peer not trusted to ask)
    ├── RateLimitedError                  429 + Retry-After, RateLimit fields (names the limit)
    ├── DecisionBodyNotAllowedError       413 (a decision check carrying a body), connection closed
    ├── HttpSignatureError                401 + Accept-Signature (RFC 9421 §5.1), an OAuthError
    ├── DigestMismatchError               400 (RFC 9530 Content-Digest missing or wrong)
    └── SignedRouteNotDecidableError      403 (a signed route asked of a decision front)

``ConfigError`` is not a ``GatewayError``: it only happens at start-up or reload.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:
    from .model import Decision, VerifiedToken

Scheme = Literal["Bearer", "DPoP"]

__all__ = (
    "ClientBodyError",
    "ClientCertificateRefusedError",
    "ConfigError",
    "CorsRefusedError",
    "DecisionBodyNotAllowedError",
    "DecisionBusyError",
    "DependencyError",
    "DigestMismatchError",
    "ExpectationFailedError",
    "GatewayError",
    "HeaderRefusedError",
    "HttpSignatureError",
    "InsufficientAuthorizationDetailsError",
    "InsufficientAuthorizationError",
    "InsufficientScopeError",
    "IntrospectionBusyError",
    "IntrospectionUnavailableError",
    "InvalidDpopProofError",
    "InvalidRequestError",
    "InvalidTokenError",
    "KeySourceUnavailableError",
    "LoopDetectedError",
    "MethodNotAllowedError",
    "MisdirectedRequestError",
    "MissingCredentialsError",
    "OAuthError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "ReplayStoreUnavailableError",
    "RequestTimeoutError",
    "RevocationDataStaleError",
    "RouteNotFoundError",
    "Scheme",
    "SignedRouteNotDecidableError",
    "TransferCodingNotImplementedError",
    "UntrustedCallerError",
    "UpstreamTimeoutError",
    "UpstreamUnavailableError",
    "UseDpopNonceError",
)


class GatewayError(Exception):
    """A refusal. ``description`` is shown to the client, so it must never contain secrets."""

    status: ClassVar[int] = 500
    default_reason: ClassVar[str] = "internal"
    # The connection cannot serve another request (e.g. a body left unread in an unknown framing).
    close_connection: ClassVar[bool] = False

    def __init__(self, description: str = "", *, reason: str | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.reason = reason or self.default_reason


class OAuthError(GatewayError):
    """An RFC 6750 / RFC 9449 error, rendered as a ``WWW-Authenticate`` challenge.

    ``scheme`` is the scheme the client used, when it could be told unambiguously: the error
    parameters go into that scheme's challenge only (RFC 9449 §7.2). ``None`` puts them into
    every challenge the route offers (e.g. two conflicting Authorization headers).
    """

    error: ClassVar[str | None] = None
    # The verified token a binding or policy refusal is about (set by the pipeline): the access
    # log names whose token it was (a binding mismatch is the stolen-token signal). Never shown
    # to the client.
    token: VerifiedToken | None = None

    def __init__(
        self, description: str = "", *, reason: str | None = None, scheme: Scheme | None = None
    ) -> None:
        super().__init__(description, reason=reason)
        self.scheme: Scheme | None = scheme


class MissingCredentialsError(OAuthError):
    status = 401
    error = None
    default_reason = "missing_credentials"


class InvalidRequestError(OAuthError):
    status = 400
    error = "invalid_request"
    default_reason = "invalid_request"


class InvalidTokenError(OAuthError):
    status = 401
    error = "invalid_token"
    default_reason = "invalid_token"


class InsufficientScopeError(OAuthError):
    status = 403
    error = "insufficient_scope"
    default_reason = "insufficient_scope"

    def __init__(
        self,
        description: str = "",
        *,
        scope: str = "",
        reason: str | None = None,
        scheme: Scheme | None = None,
    ) -> None:
        super().__init__(description, reason=reason, scheme=scheme)
        self.scope = scope


class InsufficientAuthorizationDetailsError(OAuthError):
    """The token is valid for the route but does not grant this request: no matching RFC 9396
    ``authorization_details`` entry, a consent id that does not match, or a CEL rule that is not
    true (``gateway.authz``). RFC 9396 defines no resource-server error; the error code is the one
    draft-zehavi-oauth-rar-metadata proposes. A route may select ``insufficient_scope`` instead."""

    status = 403
    error = "insufficient_authorization_details"
    default_reason = "insufficient_authorization_details"


class InsufficientAuthorizationError(OAuthError):
    """The same refusal as draft-zehavi-oauth-rar-metadata-05/-06 signal it (route option
    ``authz.error: insufficient_authorization``): 401 ``insufficient_authorization`` with an
    ``authorization_remediation`` parameter, base64url JSON of the authorization details a new
    token needs (built from the rule and the request, never from the token)."""

    status = 401
    error = "insufficient_authorization"
    default_reason = "insufficient_authorization"

    def __init__(
        self, description: str = "", *, remediation: str = "", reason: str | None = None,
        scheme: Scheme | None = None,
    ) -> None:
        super().__init__(description, reason=reason, scheme=scheme)
        self.remediation = remediation


class InvalidDpopProofError(OAuthError):
    status = 401
    error = "invalid_dpop_proof"
    default_reason = "dpop_invalid_proof"

    def __init__(self, description: str = "", *, reason: str | None = None) -> None:
        super().__init__(description, reason=reason, scheme="DPoP")


class UseDpopNonceError(OAuthError):
    status = 401
    error = "use_dpop_nonce"
    default_reason = "dpop_nonce_required"

    def __init__(self, description: str = "", *, nonce: str, reason: str | None = None) -> None:
        super().__init__(description, reason=reason, scheme="DPoP")
        self.nonce = nonce


class DependencyError(GatewayError):
    """Something the gateway depends on failed: the client is not to blame, the request is refused."""

    status = 503
    default_reason = "dependency_unavailable"
    retry_after_s: ClassVar[int | None] = 5


class KeySourceUnavailableError(DependencyError):
    default_reason = "jwks_unavailable"


class IntrospectionUnavailableError(DependencyError):
    default_reason = "introspection_unavailable"


class IntrospectionBusyError(IntrospectionUnavailableError):
    """Shed before calling the AS: no slot free in time, the queue full, or the source's budget used."""

    default_reason = "introspection_busy"
    retry_after_s = 1


class ReplayStoreUnavailableError(DependencyError):
    default_reason = "replay_store_unavailable"


class RevocationDataStaleError(DependencyError):
    """The issuer's CRL is past its nextUpdate: whether the certificate was revoked is unknown."""

    default_reason = "client_cert_crl_stale"
    retry_after_s = 60  # a new CRL takes an operator or a CronJob, not a few seconds


class UpstreamUnavailableError(DependencyError):
    status = 502
    default_reason = "upstream_unavailable"
    retry_after_s = None


class UpstreamTimeoutError(DependencyError):
    status = 504
    default_reason = "upstream_timeout"
    retry_after_s = None


class RouteNotFoundError(GatewayError):
    status = 404
    default_reason = "no_route"


class CorsRefusedError(GatewayError):
    """A CORS preflight from an origin the route does not allow."""

    status = 403
    default_reason = "cors_origin_refused"


class ClientCertificateRefusedError(GatewayError):
    """The connection's client certificate is refused on a route that does not authenticate.

    Routes that authenticate answer 401 ``invalid_token`` with a challenge; one without auth has
    no challenge to offer, and a 401 without ``WWW-Authenticate`` is not HTTP (RFC 9110 §15.5.2).
    """

    status = 403
    default_reason = "client_cert_refused"


class MisdirectedRequestError(GatewayError):
    """The Host names a server this listener is not (RFC 9110 §15.5.20; checklist PRX-10, DPOP-14)."""

    status = 421
    default_reason = "misdirected_request"


class MethodNotAllowedError(GatewayError):
    status = 405
    default_reason = "method_not_allowed"


class ExpectationFailedError(GatewayError):
    """An ``Expect`` other than ``100-continue`` (RFC 9110 §10.1.1)."""

    status = 417
    default_reason = "expectation_failed"


class RequestTimeoutError(GatewayError):
    """The client stopped sending its request body (RFC 9110 §15.5.9); the connection is closed."""

    status = 408
    default_reason = "body_timeout"
    close_connection = True


class PayloadTooLargeError(GatewayError):
    status = 413
    default_reason = "body_too_large"


class HeaderRefusedError(GatewayError):
    """A request header the gateway will not carry to the upstream (RFC 9110 §5; issue #13)."""

    status = 400
    default_reason = "header_refused"


class TransferCodingNotImplementedError(GatewayError):
    """A transfer coding other than ``chunked`` (RFC 9112 §6.1: 501). The body is left unread, so
    the connection is closed after the answer."""

    status = 501
    default_reason = "transfer_coding_not_implemented"
    close_connection = True


class LoopDetectedError(GatewayError):
    """The request already passed through this gateway (its pseudonym is in ``Via``): PRX-04."""

    status = 508
    default_reason = "forwarding_loop"


class ClientBodyError(GatewayError):
    """The client's body broke off or was malformed (aiohttp's payload parser) while being
    forwarded: the client's fault, not a bug, so no traceback (anyone could flood the log)."""

    status = 400
    default_reason = "bad_request_body"


class UntrustedCallerError(GatewayError):
    """A decision check (auth_request, forwardAuth, ext_authz HTTP) from a peer not in the
    front's ``trusted_peers``/``trusted_identities``: its original-request headers are not read."""

    status = 403
    default_reason = "untrusted_caller"


class DecisionBodyNotAllowedError(GatewayError):
    """A decision check carries no body; one that does is refused unread."""

    status = 413
    default_reason = "decision_body"
    close_connection = True


class DecisionBusyError(DependencyError):
    """The decision front's ``max_concurrent`` checks are in flight: shed at once."""

    default_reason = "decision_busy"
    retry_after_s = 1


class RateLimitedError(GatewayError):
    """A limit of ``rate_limits:`` refused the request (RFC 6585 §4). ``limit_id`` names it (body,
    access log, metrics); ``fields`` are its ``RateLimit-Policy`` / ``RateLimit`` header fields."""

    status = 429
    default_reason = "rate_limited"

    def __init__(
        self,
        description: str = "",
        *,
        limit_id: str,
        retry_after_s: int,
        fields: tuple[tuple[str, str], ...] = (),
        reason: str | None = None,
        decision: Decision | None = None,
    ) -> None:
        super().__init__(description, reason=reason)
        self.limit_id = limit_id
        self.retry_after_s = max(1, retry_after_s)
        self.fields = fields
        # Who was throttled (verified: identity limits run after the decision), for the access log.
        self.decision = decision
class HttpSignatureError(OAuthError):
    """The request's HTTP message signature (RFC 9421, FAPI 2.0 profile) is missing or does not
    verify. A 401 carrying the route's bare challenge (no ``error``: the token was fine) and an
    ``Accept-Signature`` field saying what to sign (RFC 9421 §5.1); ``reason`` says which check
    failed (signature_missing, signature_invalid, signature_expired, unknown_key, ...)."""

    status = 401
    error = None
    default_reason = "signature_invalid"

    def __init__(self, description: str = "", *, accept_signature: str, reason: str | None = None) -> None:
        super().__init__(description, reason=reason)
        self.accept_signature = accept_signature


class DigestMismatchError(GatewayError):
    """The request body does not match its signed ``Content-Digest`` (RFC 9530), or the digest is
    missing or unusable. Refused before the upstream receives any of the body."""

    status = 400
    default_reason = "digest_mismatch"


class SignedRouteNotDecidableError(GatewayError):
    """A decision front (ext_authz, auth_request, forwardAuth) was asked about a route with HTTP
    message signatures: it never sees the body (no Content-Digest check) and cannot sign the
    response, so the answer is a denial, never an allow. Serve such routes through the proxy."""

    status = 403
    default_reason = "signatures_need_proxy"


class ConfigError(Exception):
    """Invalid configuration. ``problems`` are ``path: message`` lines, each naming the YAML field."""

    def __init__(self, problems: list[str], *, source: str = "") -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "invalid configuration:\n  " + "\n  ".join(problems))
