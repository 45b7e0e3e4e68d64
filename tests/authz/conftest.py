"""The token tests' authorization server (real TLS, real signatures) for the authz end-to-end tests."""

from tests.tokens.conftest import auth_server, clock, signing_keys

__all__ = ("auth_server", "clock", "signing_keys")
