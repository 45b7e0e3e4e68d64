"""Step 1: TLS termination and the client certificate (our own handshake or a trusted front proxy)."""
