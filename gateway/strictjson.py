"""One strict JSON decoder for everything that parses attacker-supplied JOSE (RFC 8725 §3.7).

Duplicate member names are refused (Python keeps the last of two, another parser may keep the
first: DPOP-23, JWT-14), and so are NaN/Infinity, which are not JSON.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ("STRICT_JSON",)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError("duplicate JSON member")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Built once: json.loads(...) with hooks would build a new decoder on every call.
STRICT_JSON = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
