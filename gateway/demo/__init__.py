"""The embedded demo: an echo upstream and a demo issuer, started next to the gateway. DEV ONLY."""
