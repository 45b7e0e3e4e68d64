"""Coverage-guided fuzzing (atheris) of every parser that reads attacker- or operator-supplied bytes.

One module per target: ``python -m benchmarks.fuzz.<target> [libFuzzer flags] [corpus dirs]``.
See ``benchmarks/FUZZING.md`` for the method, the long run and its figures.
"""

TARGETS = (
    "credentials",
    "dpop",
    "jwk",
    "htu",
    "jose",
    "introspection",
    "jwks",
    "front_proxy",
    "canonical",
    "origin",
    "config",
)
