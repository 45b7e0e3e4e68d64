"""Read the YAML file once: expand ``${VAR}``/``${VAR:-default}``, validate, and name every bad field.

Errors come out as ``file:line: routes[2].upstream: not a URL``, all at once, so an operator fixes
a file in one pass (oauth2-proxy style).
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from .partial import cross_field_findings
from .schema import GatewayConfig, upstream_reference_problem

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_PATH_HEAD = re.compile(r"^([A-Za-z0-9_\[\].#-]+): ")


# Far beyond any real config, and well inside Python's recursion limit: deeper nesting (or a
# recursive alias, "&a [*a]") is refused, and so is a file whose aliases expand to more values
# than this ("billion laughs"), instead of a RecursionError or minutes of expansion at start-up.
_MAX_DEPTH = 64
_MAX_NODES = 100_000
_TOO_DEEP = f"nested more than {_MAX_DEPTH} levels deep (or a recursive YAML alias)"
_TOO_BIG = f"more than {_MAX_NODES} values once YAML aliases are expanded"


class _TooLarge(Exception):
    def __init__(self, path: str, what: str) -> None:
        super().__init__(what)
        self.path = path
        self.what = what


# pydantic's names for validator and tagged-union branches: not part of the YAML path.
_BRANCH_NAMES = frozenset(("function-after", "function-before", "function-wrap", "policy", "none"))


def _expand(text: str, where: str, problems: list[str], line: int | None = None) -> str:
    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = os.environ.get(name)
        if value is None:
            if default is None:
                at = f"line {line}: " if line else ""
                problems.append(f"{at}{where}: environment variable {name} is not set (use ${{{name}:-default}})")
                return ""
            return default
        return value

    return _ENV.sub(repl, text)


def _to_python(
    node: yaml.Node, path: str, lines: dict[str, int], problems: list[str], depth: int = 0,
    seen: list[int] | None = None,
) -> Any:
    """Turn a composed YAML node tree into plain Python, remembering each path's line number."""
    seen = seen if seen is not None else [0]
    seen[0] += 1
    if depth > _MAX_DEPTH:
        raise _TooLarge(path, _TOO_DEEP)
    if seen[0] > _MAX_NODES:
        raise _TooLarge(path, _TOO_BIG)
    line = node.start_mark.line + 1
    lines[path] = line
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(f"line {key_node.start_mark.line + 1}: {path or 'top level'}: keys must be plain text")
                continue
            key = str(key_node.value)
            sub = f"{path}.{key}" if path else key
            if key in out:
                problems.append(f"line {key_node.start_mark.line + 1}: {sub}: duplicate key")
            out[key] = _to_python(value_node, sub, lines, problems, depth + 1, seen)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, f"{path}[{i}]", lines, problems, depth + 1, seen) for i, v in enumerate(node.value)]
    assert isinstance(node, yaml.ScalarNode)
    raw = node.value
    if "${" in raw:
        raw = _expand(raw, path, problems, line)
        # Re-resolve the expanded text so "${PORT:-8443}" becomes an int, "${X:-true}" a bool.
        if node.style is None:
            try:
                return yaml.safe_load(raw) if raw else None
            except (yaml.YAMLError, RecursionError):
                problems.append(f"line {line}: {path}: the expanded value is not valid YAML")
                return None
        return raw
    try:
        return _SCALARS.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
        # An unknown or unsafe tag (!!python/...), or a tagged value that is not of its type.
        what = getattr(exc, "problem", None) or "not a valid value for its YAML tag"
        problems.append(f"line {line}: {path or 'top level'}: {what}")
        return None
    finally:
        _SCALARS.constructed_objects.clear()  # the loader would keep every node it ever built


# Only used to turn already-resolved scalar nodes into Python values.
_SCALARS = yaml.SafeLoader("")


_LINE = re.compile(r"^line (\d+): ")
_EARLY_PATH = re.compile(r"^line \d+: ([^ :]+): ")


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The config model inside an annotation (``X | None``, ``tuple[X, ...]``, ``dict[str, X]``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """`` (did you mean `scopes`?)`` for a misspelt key, from the model the key was found in."""
    model: type[BaseModel] | None = GatewayConfig
    for part in loc[:-1]:
        if model is None:
            return ""
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is not None:
            model = _model_in(field.annotation)
        # else: a list index, a dict key (upstreams.<name>) or a union branch: same model
    if model is None or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _raw_references(data: dict[str, Any]) -> list[str]:
    """Route -> upstream and route -> issuer references, read from the unvalidated mapping."""
    upstreams = data.get("upstreams")
    names = set(upstreams) if isinstance(upstreams, dict) else set()
    issuers = data.get("issuers")
    issuer_names = {i.get("name") for i in issuers if isinstance(i, dict)} if isinstance(issuers, list) else set()
    routes = data.get("routes")
    out: list[str] = []
    for n, route in enumerate(routes if isinstance(routes, list) else ()):
        if not isinstance(route, dict):
            continue
        where = f"routes[{n}]"
        upstream = route.get("upstream")
        if isinstance(upstream, str) and upstream not in names:
            problem = upstream_reference_problem(upstream)
            if problem:
                out.append(f"{where}.upstream: {problem}")
        auth = route.get("auth")
        listed = auth.get("issuers") if isinstance(auth, dict) else None
        for k, name in enumerate(listed if isinstance(listed, list) else ()):
            if isinstance(name, str) and name not in issuer_names:
                out.append(f"{where}.auth.issuers[{k}]: no issuer named {name!r} under issuers:")
    return out


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _BRANCH_NAMES or "[" in str(part):
            # pydantic's names for union/validator branches: not part of the YAML path
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _line_for(path: str, lines: dict[str, int]) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return None


def _format(path: str, msg: str, lines: dict[str, int], source: str) -> str:
    line = _line_for(path, lines)
    where = f"{source}:{line}: " if line else ""
    return f"{where}{path}: {msg}" if path else f"{where}{msg}"


def parse_config(
    text: str, *, source: str = "<config>", base_dir: str | os.PathLike[str] | None = None,
    check_files: bool = True,
) -> GatewayConfig:
    """Validate YAML text into a ``GatewayConfig``, or raise ``ConfigError`` listing every problem."""
    problems: list[str] = []
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{source}:{mark.line + 1}: " if mark else f"{source}: "
        raise ConfigError([f"{at}not valid YAML: {getattr(exc, 'problem', exc)}"], source=source) from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise ConfigError([f"{source}: not valid YAML: {_TOO_DEEP}"], source=source) from None
    if root is None:
        raise ConfigError(["the file is empty"], source=source)
    lines: dict[str, int] = {}
    try:
        data = _to_python(root, "", lines, problems)
    except _TooLarge as exc:
        raise ConfigError([_format(exc.path, exc.what, lines, source)], source=source) from None
    if not isinstance(data, dict):
        raise ConfigError(["the top level must be a mapping of sections"], source=source)
    # Problems found while reading (unset variables, duplicate keys, bad tags) are reported with
    # the schema's, in one run: "line 5: x: ..." -> "file:5: x: ...". The schema's complaint about
    # the same path (the value left empty) would only repeat them, so it is dropped.
    early = [_LINE.sub(f"{source}:\\1: ", p, count=1) for p in problems]
    early_paths = {m.group(1) for p in problems if (m := _EARLY_PATH.match(p))}
    problems = []
    try:
        context = {"base_dir": str(base_dir) if base_dir is not None else None, "check_files": check_files}
        cfg = GatewayConfig.model_validate(data, context=context)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            path = _loc_to_path(tuple(err["loc"]))
            if path in early_paths:
                continue
            msg = err["msg"]
            msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key" + _did_you_mean(tuple(err["loc"]))
            elif err["type"] == "missing":
                msg = "required field is missing"
            for part in msg.split("\n"):
                head = _PATH_HEAD.match(part)
                if head and not path:
                    # model-level validators already prefix each message with its path
                    problems.append(_format(head.group(1), part[head.end():], lines, source))
                else:
                    problems.append(_format(path, part, lines, source))
        # Pass 2 (cross-references) runs only on a model that passed pass 1; check the references
        # here too, so one run reports everything (an unknown upstream next to a bad type).
        problems.extend(_format(p.split(": ", 1)[0], p.split(": ", 1)[1], lines, source)
                        for p in _raw_references(data))
        # And the cross-field checks (mtls needs client certificates, DPoP needs an origin...) on
        # the part that validated, unless a finding could depend on a field in error (partial.py).
        problems.extend(_format(p.split(": ", 1)[0], p.split(": ", 1)[1], lines, source)
                        for p in cross_field_findings(data, context) if ": " in p)
        # A union (e.g. auth: none | {...}) reports each branch; keep each message once.
        raise ConfigError(list(dict.fromkeys(early + problems)), source=source) from None
    if early:
        raise ConfigError(early, source=source)
    return cfg


def load_config(path: str | os.PathLike[str], *, check_files: bool = True) -> GatewayConfig:
    """Read and validate a config file. Relative file paths inside it are relative to the file's
    directory (as nginx and Envoy do not, but a copied config keeps working), held as absolute paths
    in the result. ``check_files=False`` (``check-config --no-files``) does not open them."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read config file: {exc.strerror}"], source=str(p)) from None
    return parse_config(text, source=str(p), base_dir=p.resolve().parent, check_files=check_files)
