"""Request signatures: RFC 9421 HTTP Message Signatures under the FAPI 2.0 profile.

Steps, each with its refusal reason (metrics label, access log):

1. ``Signature-Input`` and ``Signature`` parsed as RFC 9651 Dictionaries (``http-sf``; duplicate
   keys refused) -> ``signature_missing`` / ``signature_malformed``.
2. The signature tagged ``fapi-2-request`` is selected (exactly one; others are ignored, as RFC 9421
   §4.3 allows several) -> ``signature_missing`` (none) / ``signature_ambiguous``.
3. Parameters: ``created`` and ``keyid`` required, ``created`` within ``max_age_s`` in the past and
   ``max_future_s`` in the future, ``expires`` not passed -> ``signature_expired``; only RFC 9421
   parameters -> ``signature_invalid``.
4. Coverage: ``@method``, ``@target-uri``, ``authorization``; ``dpop`` when the request has a DPoP
   header; ``content-digest`` when it has content -> ``signature_incomplete``.
5. Key: the token's ``client_id`` -> ``clients:`` -> ``keyid`` as JWK kid or thumbprint; ``alg``, when
   present, must be the RFC 9421 name of the key's algorithm -> ``unknown_key`` / ``signature_alg``.
6. The signature base (``http-message-signatures``, RFC 9421 §2.5) and the signature
   -> ``signature_invalid``.
7. ``nonce``, when present: first use only, in the DPoP ``jti`` replay store -> ``signature_replayed``.

The body's ``Content-Digest`` is checked later (``digest.py``), once the body has been read, and
before any of it goes upstream.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import http_sf
from http_message_signatures.algorithms import HTTPSignatureAlgorithm
from multidict import CIMultiDictProxy

from ..bind.replay import ReplayStore, replay_key
from ..config.signatures import HttpSignaturesConfig
from ..errors import HttpSignatureError
from . import base
from .algorithms import algorithm_for
from .keys import ClientKeys

__all__ = ("REQUEST_TAG", "RESPONSE_TAG", "RequestVerifier", "VerifiedSignature", "has_content", "signature_verifies")

REQUEST_TAG = "fapi-2-request"
RESPONSE_TAG = "fapi-2-response"
_PARAMS = frozenset(("alg", "created", "expires", "keyid", "nonce", "tag"))
_MAX_FIELD = 8192  # bytes per Signature / Signature-Input field: a few signatures, not a flood
_MAX_COMPONENTS = 32


@dataclass(frozen=True, slots=True)
class VerifiedSignature:
    label: str
    keyid: str
    client_id: str
    alg: str
    covered: tuple[str, ...]  # component names, as signed
    digest_covered: bool


def has_content(headers: Mapping[str, str]) -> bool:
    """RFC 9110 §6.4.1: a request has content when it says so in its framing."""
    length = headers.get("Content-Length")
    return "Transfer-Encoding" in headers or (length is not None and length.strip() not in ("", "0"))


def _reject_duplicate(key: str, context: str) -> None:
    raise ValueError(f"duplicate {context} key")


def _dictionary(value: str) -> dict[str, Any]:
    parsed = http_sf.parse(value.encode("latin-1"), tltype="dictionary", on_duplicate_key=_reject_duplicate)
    if not isinstance(parsed, dict):
        raise ValueError("not a dictionary")
    return parsed


_INT_PARAMS = ("created", "expires")
_STR_PARAMS = ("alg", "keyid", "nonce", "tag")


def _well_formed(inputs: Mapping[str, Any], sigs: Mapping[str, Any]) -> bool:
    """What the library's ``verify`` demands of every member, selected or not: the same labels in
    both fields, inner lists, byte sequences, typed parameters."""
    if inputs.keys() != sigs.keys():
        return False
    for label, (members, params) in inputs.items():
        if not isinstance(members, list) or not isinstance(sigs[label][0], bytes):
            return False
        for name in _INT_PARAMS:
            if name in params and type(params[name]) is not int:
                return False
        for name in _STR_PARAMS:
            if name in params and not isinstance(params[name], str):
                return False
    return True


def _verify_selected(
    method: str, target_uri: str, headers: Mapping[str, str], inputs: Mapping[str, Any], sigs: Mapping[str, Any],
    label: str, key: Any, algorithm: type[HTTPSignatureAlgorithm], max_future_s: float, now: float,
) -> bool:
    """RFC 9421 §3.2 for the signature ``label`` of parsed ``Signature-Input`` / ``Signature``
    fields: the library's checks (created / expires with ``max_future_s`` of skew, keyid, known
    parameters, ``alg``), the signature base built by ``http-message-signatures`` from the covered
    components, and the signature checked with ``key``."""
    if not _well_formed(inputs, sigs):
        return False
    members, params = inputs[label]
    created, expires = params.get("created"), params.get("expires")
    if created is None or created > now + max_future_s or (expires is not None and expires < now - max_future_s):
        return False
    if "keyid" not in params or not _PARAMS.issuperset(params):
        return False
    try:
        verifier = algorithm(public_key=key)
    except Exception:  # a key the algorithm refuses never verifies
        return False
    items = base.components(members)
    message = base.MessageView(method, target_uri, base.field_lines(headers, base.field_names(items, req=False)))
    return base.verify_parsed(message, items, params, sigs[label][0], verifier, algorithm)


def signature_verifies(
    method: str,
    target_uri: str,
    headers: Mapping[str, str],
    key: Any,
    algorithm: type[HTTPSignatureAlgorithm],
    *,
    label: str | None = None,
    tag: str | None = None,
    max_future_s: float = 10.0,
) -> bool:
    """RFC 9421 §3.2 for one signature of a request (the one tagged ``tag`` / labelled ``label``,
    else the only one): the same path as ``RequestVerifier`` after its profile checks. Freshness
    beyond the library's and the profile rules are the caller's."""
    try:
        inputs = _dictionary(", ".join(v for k, v in headers.items() if k.lower() == "signature-input"))
        sigs = _dictionary(", ".join(v for k, v in headers.items() if k.lower() == "signature"))
    except (ValueError, UnicodeError):
        return False
    if not inputs or not sigs:
        return False
    chosen = [lb for lb, (_, params) in inputs.items()
              if (tag is None or params.get("tag") == tag) and (label is None or lb == label)]
    if len(chosen) != 1 or (tag is None and label is None and len(inputs) > 1):
        return False
    return _verify_selected(method, target_uri, headers, inputs, sigs, chosen[0], key, algorithm, max_future_s,
                            time.time())


class RequestVerifier:
    def __init__(
        self,
        cfg: HttpSignaturesConfig,
        clients: ClientKeys,
        replay: ReplayStore | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = cfg
        self._clients = clients
        self._replay = replay
        self._clock = clock
        self._nonce_ttl = math.ceil(cfg.max_age_s + cfg.max_future_s) + 1

    @staticmethod
    def required_components(headers: Mapping[str, str]) -> tuple[str, ...]:
        need = ["@method", "@target-uri", "authorization"]
        if "DPoP" in headers:
            need.append("dpop")
        if has_content(headers):
            need.append("content-digest")
        return tuple(need)

    def accept_signature(self, headers: Mapping[str, str]) -> str:
        """RFC 9421 §5.1: what a signature for this request must cover."""
        comps = " ".join(f'"{c}"' for c in self.required_components(headers))
        return f'sig=({comps});created;keyid;tag="{REQUEST_TAG}"'

    def _fail(self, headers: Mapping[str, str], description: str, reason: str) -> HttpSignatureError:
        return HttpSignatureError(description, accept_signature=self.accept_signature(headers), reason=reason)

    async def verify(
        self, method: str, target_uri: str, headers: CIMultiDictProxy[str], client_id: str | None, *, required: bool
    ) -> VerifiedSignature | None:
        """The verified FAPI request signature; None when there is none and none is required."""
        inputs, sigs = headers.getall("Signature-Input", []), headers.getall("Signature", [])
        if not inputs and not sigs:
            if required:
                raise self._fail(headers, "the request must carry an HTTP message signature", "signature_missing")
            return None
        if not inputs or not sigs:
            raise self._fail(headers, "Signature-Input and Signature must be sent together", "signature_malformed")
        input_value, sig_value = ", ".join(inputs), ", ".join(sigs)
        if len(input_value) > _MAX_FIELD or len(sig_value) > _MAX_FIELD:
            raise self._fail(headers, "signature fields too large", "signature_malformed")
        try:
            parsed_inputs, parsed_sigs = _dictionary(input_value), _dictionary(sig_value)
        except (ValueError, UnicodeError):
            raise self._fail(headers, "Signature-Input or Signature is not a valid structured field",
                             "signature_malformed") from None
        tagged = [label for label, (_, params) in parsed_inputs.items() if params.get("tag") == REQUEST_TAG]
        if not tagged:
            if required:
                raise self._fail(headers, f"no signature tagged {REQUEST_TAG}", "signature_missing")
            return None
        if len(tagged) > 1:
            raise self._fail(headers, f"more than one signature tagged {REQUEST_TAG}", "signature_ambiguous")
        label = tagged[0]
        components, params = parsed_inputs[label]
        signature = parsed_sigs.get(label)
        if signature is None or not isinstance(signature[0], bytes):
            raise self._fail(headers, f"no Signature member {label} (a byte sequence)", "signature_malformed")
        if not isinstance(components, list) or len(components) > _MAX_COMPONENTS:
            raise self._fail(headers, f"Signature-Input {label} is not a list of components", "signature_malformed")
        keyid = self._check_params(headers, params)
        names = self._check_coverage(headers, components)
        if client_id is None:
            raise self._fail(headers, "no client to find the signing key of", "unknown_key")
        keys = await self._clients.find(client_id, keyid)
        if not keys:
            raise self._fail(headers, "keyid is not a signing key of this client", "unknown_key")
        alg_param = params.get("alg")
        fits = [(k, cls) for k in keys if (cls := algorithm_for(k.alg, alg_param)) is not None]
        if not fits:
            raise self._fail(headers, "alg does not fit the key", "signature_alg")
        now = self._clock()
        for key, cls in fits:
            if _verify_selected(method, target_uri, headers, parsed_inputs, parsed_sigs, label, key.key, cls,
                                self._cfg.max_future_s, now):
                break
        else:
            raise self._fail(headers, "the signature does not verify", "signature_invalid")
        nonce = params.get("nonce")
        if nonce is not None and self._replay is not None:
            first = await self._replay.first_use(replay_key(f"httpsig\x00{client_id}\x00{keyid}", nonce),
                                                 self._nonce_ttl)
            if not first:
                raise self._fail(headers, "the signature nonce was used before", "signature_replayed")
        return VerifiedSignature(label, keyid, client_id, key.alg, names, "content-digest" in names)

    def _check_params(self, headers: Mapping[str, str], params: Mapping[str, Any]) -> str:
        unknown = set(params) - _PARAMS
        if unknown:
            raise self._fail(headers, "unknown signature parameter", "signature_invalid")
        created, keyid, expires = params.get("created"), params.get("keyid"), params.get("expires")
        if type(created) is not int:
            raise self._fail(headers, "created is required (an integer)", "signature_invalid")
        if not isinstance(keyid, str) or not keyid:
            raise self._fail(headers, "keyid is required", "signature_invalid")
        for name in ("alg", "nonce"):
            if name in params and not isinstance(params[name], str):
                raise self._fail(headers, f"{name} must be a string", "signature_invalid")
        if expires is not None and type(expires) is not int:
            raise self._fail(headers, "expires must be an integer", "signature_invalid")
        now = self._clock()
        if created > now + self._cfg.max_future_s:
            raise self._fail(headers, "created is in the future", "signature_invalid")
        if created < now - self._cfg.max_age_s:
            raise self._fail(headers, "the signature is too old (created)", "signature_expired")
        if expires is not None and expires < now:
            raise self._fail(headers, "the signature has expired", "signature_expired")
        return keyid

    def _check_coverage(self, headers: Mapping[str, str], components: list[Any]) -> tuple[str, ...]:
        names: list[str] = []
        for item in components:
            value, comp_params = item
            if not isinstance(value, str):
                raise self._fail(headers, "a covered component is not a string", "signature_malformed")
            # Only plain components count towards the profile's coverage (a ;key or ;bs variant
            # signs something else than the whole field).
            names.append(value if not comp_params else f"{value};")
        missing = [c for c in self.required_components(headers) if c not in names]
        if missing:
            raise self._fail(headers, f"the signature must cover {', '.join(missing)}", "signature_incomplete")
        return tuple(names)
