"""Fine-grained authorization after the policy stage (issue #16): RFC 9396 ``authorization_details``,
consent / intent binding to the request, and CEL expression rules. ``stage.check_authz`` is the
pipeline step (``gateway.pipeline``); its configuration is ``gateway.config.authz``."""

from .stage import authz_step, check_authz

__all__ = ("authz_step", "check_authz")
