"""Start-up check: both HTTP/1.1 parsers must be llhttp, compiled (issue #14, request smuggling).

The listener parses requests with aiohttp, the upstream client parses responses with httptools;
both are llhttp in C. aiohttp silently falls back to a pure-Python parser when its extension is
missing or when ``AIOHTTP_NO_EXTENSIONS`` is set, and that parser is laxer (it is what the
framing tests in tests/foundation/test_smuggling.py were not run against): a gateway that
disagrees with its upstream about where a message ends is a request-smuggling gateway. So the
gateway refuses to start without them. There is deliberately no opt-in: a development machine gets
the same wheels as production, and a laxer parser is not a setting a bank's gateway should have.
"""

from __future__ import annotations

import importlib.machinery

__all__ = ("ParserUnavailableError", "parser_problem", "require_c_parsers")


class ParserUnavailableError(RuntimeError):
    """The C HTTP parser of aiohttp or httptools is not in use."""


def _compiled(module_file: str | None) -> bool:
    return module_file is not None and module_file.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def parser_problem() -> str | None:
    """Why the gateway must not start, or ``None`` when both C parsers are in use."""
    from aiohttp import http_parser

    if (http_parser.HttpRequestParser.__module__ != "aiohttp._http_parser"
            or http_parser.HttpResponseParser.__module__ != "aiohttp._http_parser"):
        return ("aiohttp is using its pure-Python HTTP parser (AIOHTTP_NO_EXTENSIONS is set, or "
                "aiohttp's C extension is missing): refusing to start; unset AIOHTTP_NO_EXTENSIONS "
                "or install an aiohttp wheel with its C extension (llhttp)")
    try:
        from httptools.parser import parser as httptools_parser
    except ImportError:
        return "httptools' C parser (llhttp) cannot be imported: refusing to start; reinstall httptools"
    if not _compiled(getattr(httptools_parser, "__file__", None)):
        return "httptools is not its compiled C parser (llhttp): refusing to start; reinstall httptools"
    return None


def require_c_parsers() -> None:
    problem = parser_problem()
    if problem is not None:
        raise ParserUnavailableError(problem)
