"""What every fuzz target shares: instrumentation, the allowed-refusal check, seeds, libFuzzer flags.

A target is a function ``one(data: bytes) -> None`` and a tuple of exception types that are
documented refusals (``GatewayError`` subclasses, ``ConfigError``, or the typed errors a parser's
caller translates). Anything else escaping is a crash: it would be a 5xx (or a start-up traceback).
A hang is caught by libFuzzer's per-input ``-timeout`` (default here: 10 s).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import atheris

Target = Callable[[bytes], None]

# Defaults a caller can override on the command line (libFuzzer: the last flag wins).
_DEFAULT_FLAGS = ("-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1")


@contextlib.contextmanager
def instrumented() -> Iterator[None]:
    """Coverage instrumentation for the gateway's own code imported inside the block."""
    with atheris.instrument_imports(include=["gateway"]):
        yield


def work_dir() -> Path:
    root = Path(os.environ.get("FUZZ_WORK_DIR") or Path(tempfile.gettempdir()) / "fapi-gateway-fuzz")
    root.mkdir(parents=True, exist_ok=True)
    return root


def write_seeds(name: str, seeds: Iterable[bytes], directory: Path | None = None) -> Path:
    """The seed corpus (built from valid inputs) in a directory libFuzzer can grow; not committed."""
    out = directory or work_dir() / "corpus" / name
    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (out / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    return out


def run(name: str, one: Target, allowed: tuple[type[BaseException], ...], seeds: Callable[[], Iterable[bytes]],
        *, max_len: int = 4096) -> None:
    """Fuzz ``one``; a refusal in ``allowed`` is fine, any other exception is a crash (exit != 0)."""

    def test_one_input(data: bytes) -> None:
        with contextlib.suppress(*allowed):
            one(data)

    logging.disable(logging.CRITICAL)  # refusals log warnings: millions of lines otherwise
    argv = [sys.argv[0], *_DEFAULT_FLAGS, f"-max_len={max_len}"]
    args = sys.argv[1:]
    if not any(a.startswith("-artifact_prefix=") for a in args):
        crashes = work_dir() / "crashes"
        crashes.mkdir(exist_ok=True)
        argv.append(f"-artifact_prefix={crashes}/{name}-")
    corpus_given = any(not a.startswith("-") for a in args)
    reproducing = any(not a.startswith("-") and Path(a).is_file() for a in args)
    argv += args
    if not corpus_given and not reproducing:
        argv.append(str(write_seeds(name, seeds())))
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


def split(data: bytes, parts: int) -> list[bytes]:
    """``parts`` fields separated by NUL bytes (missing ones empty): structured seeds stay readable."""
    out = data.split(b"\x00", parts - 1)
    return out + [b""] * (parts - len(out))


def text(data: bytes) -> str:
    # Header values reach the gateway as str decoded by aiohttp (latin-1 for non-UTF-8 bytes, or
    # surrogateescape): both kinds of non-ASCII code points are produced here.
    return data.decode("utf-8", "surrogateescape")
