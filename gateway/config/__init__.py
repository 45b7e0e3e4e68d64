"""Configuration: one YAML file, parsed once into immutable typed objects, validated at load."""

from .auth import AuthPolicy, SenderConstraint
from .loader import load_config, parse_config
from .schema import GatewayConfig, ListenerTls, RouteConfig, UpstreamConfig

__all__ = (
    "AuthPolicy",
    "GatewayConfig",
    "ListenerTls",
    "RouteConfig",
    "SenderConstraint",
    "UpstreamConfig",
    "load_config",
    "parse_config",
)
