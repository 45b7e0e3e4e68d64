"""Fuzz target: the YAML config loader (``gateway.config.loader.parse_config``).

Whatever the file holds, the answer is a valid ``GatewayConfig`` or a ``ConfigError`` naming the
problem: never a traceback at start-up or reload, never a hang (aliases, deep nesting).
"""

from __future__ import annotations

from pathlib import Path

from ._harness import instrumented, run

with instrumented():
    from gateway.config.loader import parse_config
    from gateway.config.schema import GatewayConfig
    from gateway.errors import ConfigError

_ROOT = Path(__file__).resolve().parents[2]


def one(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # load_config reads UTF-8 text; a decode error there is not the loader's
    cfg = parse_config(text, source="fuzz.yaml")
    assert isinstance(cfg, GatewayConfig)


def seeds() -> list[bytes]:
    files = [_ROOT / "config" / "dev.yaml", *sorted((_ROOT / "config" / "examples").glob("*.yaml"))]
    out = [f.read_bytes() for f in files if f.stat().st_size <= 16384]
    out += [
        b"listen: {host: 127.0.0.1, port: 8080}\nroutes:\n  - id: open\n    match: {path_prefix: /}\n"
        b"    upstream: http://127.0.0.1:9\n    auth: none\n",
        b"listen: {port: ${PORT:-8443}}\nroutes: []\n",
        b"a: &a [1, 2]\nb: [*a, *a]\n",
        b"routes: [[[[[]]]]]\n",
    ]
    return out


if __name__ == "__main__":
    run("config", one, (ConfigError,), seeds, max_len=16384)
