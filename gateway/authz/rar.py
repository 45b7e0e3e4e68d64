"""RFC 9396 ``authorization_details``: is there one entry granting this request?

The claim (a JWT claim or an introspection response member, RFC 9396 §9.1/§9.2) must be a JSON
array of objects; anything else (absent, an object, a string, an entry that is not an object)
refuses. An entry grants when, all in the same entry: ``type`` is one of the rule's types,
``actions`` / ``datatypes`` (arrays of strings) contain every required one, ``locations`` contains
one of the rule's, ``identifier`` equals the request value, and each named field equals it (a field
that is an array must contain it). A member of the wrong JSON type never matches (type confusion:
``"actions": "read"`` is not ``["read"]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config.authz import RarCheck
from ..model import AuthRequest
from .refs import ref_value, same_value

__all__ = ("expected_values", "grants", "malformed")

# More entries than any real consent: refused rather than scanned (bounds the work per request).
MAX_ENTRIES = 64


def malformed(details: object) -> bool:
    if type(details) is not list or not details or len(details) > MAX_ENTRIES:
        return True
    return any(type(entry) is not dict for entry in details)


def _contains_all(value: object, required: frozenset[str]) -> bool:
    # A JSON array whose strings include every required one; set() refuses unhashable members
    # (an array of arrays or objects) and a non-string member never equals a required string.
    if type(value) is not list:
        return False
    try:
        return required <= set(value)
    except TypeError:
        return False


def _contains_any(value: object, accepted: frozenset[str]) -> bool:
    if type(value) is not list:
        return False
    try:
        return not accepted.isdisjoint(value)
    except TypeError:
        return False


def _field(entry: Mapping[str, Any], dotted: str) -> object:
    value: object = entry
    for part in dotted.split("."):
        if type(value) is not dict:
            return None
        value = value.get(part)
    return value


def _entry_grants(entry: Mapping[str, Any], check: RarCheck, expected: tuple[str | int | None, ...]) -> bool:
    kind = entry.get("type")
    if type(kind) is not str or kind not in check.type_set:
        return False
    if check.actions and not _contains_all(entry.get("actions"), check.action_set):
        return False
    if check.datatypes and not _contains_all(entry.get("datatypes"), check.datatype_set):
        return False
    if check.locations and not _contains_any(entry.get("locations"), check.location_set):
        return False
    k = 0
    if check.identifier is not None:
        want = expected[0]
        k = 1
        if want is None or not same_value(entry.get("identifier"), want):
            return False
    for fm in check.fields:
        want = expected[k]
        k += 1
        if want is None:
            return False
        value = _field(entry, fm.field)
        if type(value) is list:
            if not any(same_value(v, want) for v in value):
                return False
        elif not same_value(value, want):
            return False
    return True


def expected_values(check: RarCheck, req: AuthRequest) -> tuple[str | int | None, ...]:
    """The request values the check compares with (identifier first, then each field)."""
    refs = check.refs
    if not refs:
        return ()
    return tuple(ref_value(ref, req) for ref in refs)


def grants(details: object, check: RarCheck, expected: tuple[str | int | None, ...]) -> bool:
    """Whether ``details`` (the token's ``authorization_details``) grants a request whose values
    are ``expected`` (``expected_values``)."""
    if malformed(details):
        return False
    assert isinstance(details, list)
    return any(_entry_grants(entry, check, expected) for entry in details)
