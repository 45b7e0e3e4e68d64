"""The RFC 9421 signature base, built by ``http-message-signatures`` from fields parsed once.

The library's ``HTTPMessageVerifier.verify`` / ``HTTPMessageSigner.prepare`` parse
``Signature-Input`` and ``Signature`` again (we already did, under stricter rules), build a
component resolver over every header of the message, and re-parse the component identifiers
of every response from strings. Here the library's own lower-level entry point,
``_build_signature_base`` (component resolution, every RFC 9421 §2.5 check, serialisation of
the component identifiers and of ``@signature-params``), gets what it needs directly:

- the covered component identifiers as the ``http_sf.compat.Item`` objects it expects, made
  from our ``http_sf`` parse (the same conversion its ``_parse_signature_dictionary`` does);
- a message view holding only the covered fields' lines, in wire order (the resolver reads
  nothing else; it normalises and combines them as before);
- the verifying / signing algorithm object, built once per key.

The canonicalisation stays the library's; nothing here builds a signature base line by hand.
Pinned to http-message-signatures 3.0 (pyproject), whose private method this calls; the RFC
9421 Appendix B vectors (tests/signatures/test_rfc_vectors.py) run through ``verify_parsed``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from http_message_signatures import HTTPMessageVerifier
from http_message_signatures.algorithms import HTTPSignatureAlgorithm
from http_sf.compat import Item

__all__ = ("FieldLines", "MessageView", "ResponseView", "components", "field_lines", "field_names",
           "signature_base", "verify_parsed")

_BUILDERS: dict[type[HTTPSignatureAlgorithm], HTTPMessageVerifier] = {}


class FieldLines:
    """Field lines as the library's component resolver reads them (``items()``, in order)."""

    __slots__ = ("_lines",)

    def __init__(self, lines: list[tuple[str, str]]) -> None:
        self._lines = lines

    def items(self) -> list[tuple[str, str]]:
        return self._lines


class MessageView:
    """A request: method, absolute target URI, the covered fields' lines."""

    __slots__ = ("headers", "method", "url")

    def __init__(self, method: str, url: str, headers: FieldLines) -> None:
        self.method = method
        self.url = url
        self.headers = headers


class ResponseView:
    """A response and the request it answers (``req`` components)."""

    __slots__ = ("headers", "request", "status_code")

    def __init__(self, status: int, headers: FieldLines, request: MessageView) -> None:
        self.status_code = status
        self.headers = headers
        self.request = request


def field_lines(headers: Mapping[str, str], names: Iterable[str]) -> FieldLines:
    """The lines of the fields ``names`` (lowercase), each field's lines in wire order."""
    lines: list[tuple[str, str]] = []
    getall = getattr(headers, "getall", None)
    for name in dict.fromkeys(names):
        if getall is not None:
            lines.extend((name, v) for v in getall(name, ()))
        else:  # a plain mapping (tests, RFC vectors): one line per name
            lines.extend((name, v) for k, v in headers.items() if k.lower() == name)
    return FieldLines(lines)


_SERIALISED: dict[Any, str] = {}
_MAX_SERIALISED = 512  # distinct component identifiers remembered (a client sends a handful)


class _Component(Item):
    """A component identifier whose serialisation (``http_sf``, called by the library for every
    line of the signature base) is remembered: clients cover the same few identifiers in every
    request. Keyed on types as well as values (a Token is a str, True == 1); only what ``http_sf``
    serialised without error is kept."""

    def __str__(self) -> str:
        value, params = self.value, self.params
        if type(value) is not str:
            return super().__str__()
        key: Any = value if not params else (value, *((k, type(v), v) for k, v in params.items()))
        try:
            text = _SERIALISED.get(key)
        except TypeError:  # an unhashable parameter value: serialise every time
            return super().__str__()
        if text is None:
            text = super().__str__()
            if len(_SERIALISED) >= _MAX_SERIALISED:
                _SERIALISED.clear()
            _SERIALISED[key] = text
        return text


def components(parsed: Sequence[tuple[Any, Mapping[str, Any]]]) -> list[Item]:
    """``http_sf`` inner-list members -> the library's component identifier items."""
    out: list[Item] = []
    for value, params in parsed:
        item = _Component(value)
        item.params.update(params)
        out.append(item)
    return out


def field_names(items: Iterable[Item], *, req: bool) -> list[str]:
    """Names of the HTTP fields (not derived components) ``items`` cover, of the request
    (``req``) or of the message itself."""
    return [str(i.value).lower() for i in items
            if isinstance(i.value, str) and not i.value.startswith("@") and ("req" in i.params) == req]


def _builder(algorithm: type[HTTPSignatureAlgorithm]) -> HTTPMessageVerifier:
    # The handler only carries the algorithm class and the resolver class: one per class.
    b = _BUILDERS.get(algorithm)
    if b is None:
        b = _BUILDERS[algorithm] = HTTPMessageVerifier(signature_algorithm=algorithm, key_resolver=None)
    return b


def signature_base(
    message: MessageView | ResponseView, items: list[Item], params: dict[str, Any],
    algorithm: type[HTTPSignatureAlgorithm],
) -> tuple[bytes, str]:
    """RFC 9421 §2.5 signature base (library) and the serialised ``@signature-params`` value."""
    base, _, elements = _builder(algorithm)._build_signature_base(
        message, covered_component_ids=items, signature_params=params)
    return base.encode(), elements['"@signature-params"']


def verify_parsed(
    message: MessageView, items: list[Item], params: dict[str, Any], signature: bytes, verifier: Any,
    algorithm: type[HTTPSignatureAlgorithm],
) -> bool:
    """One signature, already selected and its parameters checked by the caller: the base from the
    library, then ``verifier`` (an algorithm object holding the public key). Any error: False."""
    if "alg" in params and params["alg"] != algorithm.algorithm_id:
        return False
    try:
        base, _ = signature_base(message, items, params, algorithm)
        verifier.verify(signature=signature, message=base)
    except Exception:  # as the library's verify: every failure is "does not verify"
        return False
    return True
