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

__all__ = ("grants", "malformed")

# More entries than any real consent: refused rather than scanned (bounds the work per request).
MAX_ENTRIES = 64


def malformed(details: object) -> bool:
    if not isinstance(details, list) or not details or len(details) > MAX_ENTRIES:
        return True
    return not all(isinstance(d, dict) for d in details)


def _strings(value: object) -> list[str] | None:
    if not isinstance(value, list) or not all(type(v) is str for v in value):
        return None
    return value


def _field(entry: Mapping[str, Any], dotted: str) -> object:
    value: object = entry
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _entry_grants(entry: Mapping[str, Any], check: RarCheck, req: AuthRequest) -> bool:
    if type(entry.get("type")) is not str or entry["type"] not in check.types:
        return False
    if check.actions:
        actions = _strings(entry.get("actions"))
        if actions is None or not set(check.actions) <= set(actions):
            return False
    if check.datatypes:
        datatypes = _strings(entry.get("datatypes"))
        if datatypes is None or not set(check.datatypes) <= set(datatypes):
            return False
    if check.locations:
        locations = _strings(entry.get("locations"))
        if locations is None or not any(loc in locations for loc in check.locations):
            return False
    if check.identifier is not None:
        expected = ref_value(check.identifier, req)
        if expected is None or not same_value(entry.get("identifier"), expected):
            return False
    for fm in check.fields:
        expected = ref_value(fm, req)
        if expected is None:
            return False
        value = _field(entry, fm.field)
        if isinstance(value, list):
            if not any(same_value(v, expected) for v in value):
                return False
        elif not same_value(value, expected):
            return False
    return True


def grants(details: object, check: RarCheck, req: AuthRequest) -> bool:
    """Whether ``details`` (the token's ``authorization_details``) grants this request."""
    if malformed(details):
        return False
    assert isinstance(details, list)
    return any(_entry_grants(entry, check, req) for entry in details)
