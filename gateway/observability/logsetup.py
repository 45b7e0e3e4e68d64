"""Process logging: level from config, and a last-line filter that scrubs credentials.

Stages never log tokens or proofs (OPS-01); the filter is defence in depth for what a library
might put in an exception message (a JWT, an ``Authorization`` value, a PEM block).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Final

__all__ = ("RedactingFilter", "configure_logging", "redact")

_PATTERNS: Final = (
    # Compact JWS/JWT (access tokens, DPoP proofs): base64url header starting with '{"'.
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    (re.compile(r"(?i)\b(bearer|dpop)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 [redacted]"),
    (
        re.compile(r"-----BEGIN [A-Z ]+-----.*?-----END [A-Z ]+-----", re.DOTALL),
        "[redacted-pem]",
    ),
    (re.compile(r'(?i)("d"\s*:\s*)"[A-Za-z0-9_-]+"'), r'\1"[redacted]"'),
    # URL userinfo (``https://user:password@host``, ``rediss://:password@redis``).
    (re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s]+@"), r"\1[redacted]@"),
)


def redact(text: str) -> str:
    """``text`` with tokens, proofs, PEM blocks, private JWK members and URL credentials scrubbed:
    for logs, and for whatever the CLI prints."""
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's final message (and traceback text) with credentials scrubbed."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(text)
            record.exc_info = None
        return True


def configure_logging(level: str = "info") -> None:
    """Root logger at ``level``; every root handler scrubs credentials. Idempotent.

    Handlers someone already installed (``logging.basicConfig`` in the CLI) get the filter too;
    a stderr handler is added only when there is none.
    """
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    for h in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter())
