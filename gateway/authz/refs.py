"""The request values rules compare token fields with: a path parameter or a single header."""

from __future__ import annotations

from ..config.authz import ValueRef
from ..model import AuthRequest

__all__ = ("ref_value", "same_value")


def ref_value(ref: ValueRef, req: AuthRequest) -> str | int | None:
    """The value named by ``ref``; None when it is absent or ambiguous (the rule then fails)."""
    if ref.path is not None:
        return req.path_params.get(ref.path)
    assert ref.header is not None
    values = req.headers.getall(ref.header, None)
    if values is None or len(values) != 1 or not values[0]:
        return None  # absent, empty, or sent twice: never pick one
    return values[0]


def same_value(token_value: object, expected: str | int) -> bool:
    """Strict JSON equality: a string equals a string; an ``int`` path parameter also equals a JSON
    integer (never a boolean, never a float). No case folding, no trimming, no coercion."""
    if isinstance(expected, int):
        if type(token_value) is int:
            return token_value == expected
        return type(token_value) is str and token_value == str(expected)
    return type(token_value) is str and token_value == expected
