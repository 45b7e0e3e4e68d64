"""``client_certs:`` — where client certificates come from besides our own handshake (issue: mTLS).

Placeholder: the certificate-bound-token work fills this in.
"""

from __future__ import annotations

from .base import Model


class ClientCertConfig(Model):
    pass
