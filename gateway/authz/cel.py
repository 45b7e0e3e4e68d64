"""Expression rules in Google's Common Expression Language (CEL), as Kubernetes admission
policies, Envoy RBAC and Istio use it.

Implementation: PyPI ``common-expression-language`` (Rust ``cel`` crate bindings); measured
against the pure-Python ``cel-python`` in benchmarks/RESULTS-authz.md (3-10x faster to evaluate,
8-10x to compile). Compiled once at config load; a syntax error, a variable other than ``token``,
``request``, ``client``, ``route`` (and names a macro binds), or a function outside the standard
library below is a config error there.

Cost: the library has no evaluation cost counter, so the cost is bounded statically instead:
the source is at most ``MAX_SOURCE`` characters with at most ``MAX_MACROS`` comprehension macros
(``all``/``exists``/``exists_one``/``map``/``filter``), and every input is bounded (the token by
the verifier's size limit, headers by the listener's, the body by ``authz.body.max_bytes``), so an
evaluation is polynomial in bounded sizes. No loops, no recursion, no I/O exist in CEL.

Outcome: only the boolean ``true`` allows. ``false``, any other value, and every evaluation error
(a missing field, a type mismatch such as a string where a list was expected, an index out of
range, a division by zero) refuse: fail closed, never a 5xx.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ("MAX_MACROS", "MAX_SOURCE", "VARIABLES", "CompiledExpression", "compile_expression", "new_context")

MAX_SOURCE = 4096
MAX_MACROS = 6
VARIABLES = frozenset({"token", "request", "client", "route"})
# Type names are identifiers in CEL (``type(x) == int``).
_TYPE_NAMES = frozenset({"int", "uint", "double", "string", "bool", "bytes", "list", "map", "null_type", "type"})
_FUNCTIONS = frozenset({
    "size", "contains", "startsWith", "endsWith", "matches", "int", "uint", "double", "string", "bool",
    "bytes", "type", "dyn", "timestamp", "duration", "has", "max", "min", "lowerAscii", "upperAscii",
    "getFullYear", "getMonth", "getDayOfMonth", "getDayOfWeek", "getDayOfYear", "getHours", "getMinutes",
    "getSeconds", "getMilliseconds", "exists", "all", "exists_one", "map", "filter",
})
_MACRO = re.compile(r"\.\s*(all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")


@dataclass(frozen=True, slots=True)
class CompiledExpression:
    source: str
    program: Any
    # What the request variable needs built (the rest is skipped per request).
    uses_headers: bool
    uses_query: bool
    uses_body: bool
    # The token claims the expression names (``token.<name>``); None: it uses ``token`` otherwise
    # (``token["x"]``, ``has(token.x)`` is fine), so every claim is given.
    token_names: frozenset[str] | None = None

    @property
    def cacheable(self) -> bool:
        """The result depends only on the token, route, method, path and client: it can be kept
        per (token, path) (``gateway.authz.stage``); headers, query and body vary per request."""
        return not (self.uses_headers or self.uses_query or self.uses_body)

    def allows(self, variables: Any) -> bool:
        """True only for the boolean ``true``; every error refuses (fail closed)."""
        try:
            result = self.program.execute(variables)
        except Exception:  # any evaluation error refuses, whatever its type
            return False
        except BaseException as exc:  # a Rust panic surfaces as pyo3's PanicException (a BaseException)
            if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
                raise
            return False
        return result is True


def _cel() -> Any:
    # Imported only when a configuration has an expression: the package's __init__ also loads its
    # command line (typer, rich, prompt_toolkit), ~130 ms and ~14 MB per process.
    import cel

    return cel


def new_context(token: Mapping[str, Any], names: frozenset[str] | None) -> Any:
    """A CEL context holding the ``token`` variable (only the claims in ``names`` unless None),
    converted once: converting Python values into CEL values is most of an evaluation's cost
    (~2-5 µs per value, measured in benchmarks/RESULTS-authz.md), so it is kept per token."""
    if names is not None:
        token = {k: v for k, v in token.items() if k in names}
    return _cel().Context({"token": token})


def compile_expression(source: str) -> CompiledExpression:
    """Compile and check an expression; ``ValueError`` with a short, line-free message on failure."""
    if len(source) > MAX_SOURCE:
        raise ValueError(f"expression longer than {MAX_SOURCE} characters")
    macros = _MACRO.findall(source)
    if len(macros) > MAX_MACROS:
        raise ValueError(f"more than {MAX_MACROS} comprehension macros (cost limit)")
    try:
        program = _cel().compile(source)
    except Exception as exc:  # the library raises ValueError; report any failure as config
        raise ValueError(f"CEL syntax error: {_first_line(exc)}") from None
    bound = {name for _macro, name in macros}
    unknown = sorted(set(program.variables()) - VARIABLES - bound - _TYPE_NAMES)
    if unknown:
        raise ValueError(
            f"unknown variable {unknown[0]!r} (available: {', '.join(sorted(VARIABLES))})"
        )
    functions = [f for f in program.functions() if not f.startswith(("_", "!", "@", "-"))]
    bad = sorted(set(functions) - _FUNCTIONS)
    if bad:
        raise ValueError(f"unknown function {bad[0]!r}")
    return CompiledExpression(
        source=source,
        program=program,
        uses_headers=re.search(r"\brequest\s*\.\s*headers\b", source) is not None,
        uses_query=re.search(r"\brequest\s*\.\s*query\b", source) is not None,
        uses_body=re.search(r"\brequest\s*\.\s*body\b", source) is not None,
        token_names=_token_names(source),
    )


def _token_names(source: str) -> frozenset[str] | None:
    uses = re.findall(r"\btoken\b(\s*\.\s*[A-Za-z_][A-Za-z0-9_]*)?", source)
    if any(not u for u in uses):
        return None
    return frozenset(u.split(".")[1].strip() for u in uses)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # The library's message: "Failed to parse expression '...': ERROR: <input>:1:4: Syntax error: ..."
    m = re.search(r"<input>:(\d+):(\d+):\s*(.*)", text)
    if m:
        return f"{m.group(3).splitlines()[0]} (expression line {m.group(1)}, column {m.group(2)})"
    return text.splitlines()[0][:200] if text else type(exc).__name__
