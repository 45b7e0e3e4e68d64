"""The decision service (issue #15): the proxy's auth decision, served to Envoy/Istio ext_authz,
nginx auth_request and Traefik forwardAuth. ``core`` is front-independent; each front maps its
protocol onto ``OriginalRequest`` and a ``Verdict`` back."""
