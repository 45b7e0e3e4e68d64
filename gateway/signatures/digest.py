"""RFC 9530 ``Content-Digest``: ``sha-256`` and ``sha-512`` over the message content.

The request's field is parsed as a Structured Field Dictionary (``http-sf``); every member with
an algorithm we know must match the body, at least one must be there, unknown algorithms are
ignored (RFC 9530 §2: a recipient uses the ones it supports; insecure ones, e.g. ``md5``, never
count). Compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import http_sf

from ..errors import DigestMismatchError

__all__ = ("ALGORITHMS", "check_content_digest", "content_digest")

ALGORITHMS: dict[str, Callable[[bytes], Any]] = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
_MAX_FIELD = 4096


def content_digest(body: bytes, alg: str = "sha-256") -> str:
    """The ``Content-Digest`` field value for ``body``."""
    return f"{alg}=:{base64.b64encode(ALGORITHMS[alg](body).digest()).decode('ascii')}:"


def check_content_digest(value: str | None, body: bytes) -> None:
    """Raise ``DigestMismatchError`` (400) unless ``value`` is a Content-Digest that matches ``body``."""
    if value is None:
        raise DigestMismatchError("Content-Digest is required for a request with content", reason="digest_missing")
    if len(value) > _MAX_FIELD:
        raise DigestMismatchError("Content-Digest is too long", reason="digest_invalid")
    try:
        parsed = http_sf.parse(value.encode("latin-1"), tltype="dictionary", on_duplicate_key=_duplicate)
    except (ValueError, UnicodeError):
        raise DigestMismatchError("Content-Digest is not a structured field dictionary",
                                  reason="digest_invalid") from None
    assert isinstance(parsed, dict)
    checked = 0
    for alg, member in parsed.items():
        hasher = ALGORITHMS.get(alg)
        if hasher is None:
            continue
        digest = member[0] if isinstance(member, tuple) else None
        if not isinstance(digest, bytes):
            raise DigestMismatchError(f"Content-Digest {alg} is not a byte sequence", reason="digest_invalid")
        if not hmac.compare_digest(digest, hasher(body).digest()):
            raise DigestMismatchError("Content-Digest does not match the content", reason="digest_mismatch")
        checked += 1
    if not checked:
        raise DigestMismatchError("Content-Digest has no sha-256 or sha-512 member", reason="digest_invalid")


def _duplicate(key: str, context: str) -> None:
    raise ValueError(f"duplicate {context} key {key}")
