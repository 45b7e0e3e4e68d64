"""Operations: Prometheus metrics, the JSON access log and TLS handshake-failure accounting."""
