"""Cross-field checks on the valid part of a config that failed pass 1 (check-config in one run).

Pass 2 (``GatewayConfig``'s model validators: mTLS needs client certificates, DPoP needs a public
origin, ...) only runs on a model whose fields all validated. To report its findings together with
the type and key errors, the fields pydantic refused are pruned from a copy of the data (a bad value,
an unknown key; the enclosing object when a required field goes) until the rest validates, and the
cross-field checks run on that. A finding that could be an artefact of the pruning is held back: one
about a route that had an error, or one that names a section that had one (``listen.``, ``issuers:``,
...). So independent sections are reported at once; a finding that depends on a broken field comes
once that field is fixed.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from .schema import GatewayConfig

_GONE = object()
_MAX_ROUNDS = 32
_BRANCHES = frozenset(("function-after", "function-before", "function-wrap", "policy", "none"))
_PATHLIKE = re.compile(r"(?<![\w.\[])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[\d+\])*\[\d+\][\w.\[\]]*)")
_RISK_LINE = re.compile(r": \[[a-z_]+\] ")
# Sections some findings depend on without naming them as a path.
_ALSO_NAMED = {
    "client_certs": ("front-proxy",),
    "decision": ("decision-front", "decision fronts"),
    "issuers": ("issuer",),
    "lifecycle": ("workers",),
    "clients": ("client's keys",),
}

Path = tuple[str | int, ...]


def _materialise(node: Any, at: Path, maps: dict[Path, list[int]]) -> Any:
    """``node`` without the pruned parts; ``maps[list path] = original index of each element``."""
    if isinstance(node, dict):
        return {k: _materialise(v, (*at, k), maps) for k, v in node.items() if v is not _GONE}
    if isinstance(node, list):
        kept = [i for i, v in enumerate(node) if v is not _GONE]
        if len(kept) != len(node):
            maps[at] = kept
        return [_materialise(node[i], (*at, j), maps) for j, i in enumerate(kept)]
    return node


def _original(loc: tuple[Any, ...], data: Any, maps: dict[Path, list[int]]) -> Path:
    """A pydantic location in the materialised data, as a data path in the original coordinates."""
    out: list[str | int] = []
    here: Path = ()
    node = data
    for part in loc:
        if isinstance(part, int) and isinstance(node, list):
            out.append(maps[here][part] if here in maps else part)
            here, node = (*here, part), node[part] if part < len(node) else None
        elif isinstance(part, str) and isinstance(node, dict) and part in node:
            out.append(part)
            here, node = (*here, part), node[part]
        elif isinstance(part, str) and (part in _BRANCHES or "[" in part):
            continue  # a union / validator branch name, not part of the data
        else:
            out.append(part)  # a missing or unknown key: the end of the path
            node = None
    return tuple(out)


def _prune(data: Any, path: Path) -> bool:
    node = data
    for part in path[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    last = path[-1]
    if isinstance(node, dict) and last in node and node[last] is not _GONE:
        node[last] = _GONE
        return True
    if isinstance(node, list) and isinstance(last, int) and last < len(node) and node[last] is not _GONE:
        node[last] = _GONE
        return True
    return False


def _copy(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node


def _show(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _back(text: str, maps: dict[Path, list[int]]) -> str:
    """Rewrite ``routes[1].x`` in a finding about the pruned data into the original indices."""
    def one(m: re.Match[str]) -> str:
        parts = re.findall(r"[A-Za-z_]\w*|\[\d+\]", m.group(1))
        here: Path = ()
        out = ""
        for p in parts:
            if p.startswith("["):
                i = int(p[1:-1])
                out += f"[{maps[here][i] if here in maps and i < len(maps[here]) else i}]"
                here = (*here, i)
            else:
                out += f".{p}" if out else p
                here = (*here, p)
        return out

    return _PATHLIKE.sub(one, text) if maps else text


def cross_field_findings(data: dict[str, Any], context: dict[str, Any]) -> list[str]:
    """``path: message`` findings of pass 2 that hold whatever the fields in error become."""
    work = _copy(data)
    pruned: list[Path] = []
    maps: dict[Path, list[int]] = {}
    # Files are checked (and reported) by pass 1; a missing certificate must not hide the rest.
    context = {**context, "check_files": False}
    findings: list[str] = []
    for _ in range(_MAX_ROUNDS):
        maps = {}
        shaped = _materialise(work, (), maps)
        try:
            GatewayConfig.model_validate(shaped, context=context)
            return []
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        field_errors = [e for e in errors if e["loc"]]
        if not field_errors:  # only the model-level (cross-field) validators are left
            findings = [line for e in errors for line in str(e["msg"]).removeprefix("Value error, ").split("\n")]
            break
        progress = False
        for err in field_errors:
            path = _original(tuple(err["loc"]), shaped, maps)
            if err["type"] == "missing":
                path = path[:-1]  # the object that lacks it goes
            while path and not _prune(work, path):
                path = path[:-1]
            if path:
                pruned.append(path)
                progress = True
        if not progress:
            return []
    else:
        return []
    return [line for line in (_back(f, maps) for f in findings) if not _depends_on(line, pruned)]


def _depends_on(line: str, pruned: list[Path]) -> bool:
    sections: set[str] = set()
    for path in pruned:
        head = path[0]
        if head == "routes" and len(path) >= 2:
            route = f"routes[{path[1]}]"
            if re.search(re.escape(route) + r"(?!\d)", line):
                return True
            if len(path) == 2 and not line.startswith("routes["):
                sections.add("routes")  # a whole route went: other sections may name its id
            continue
        sections.add(str(head))
        if head == "acknowledge_risks" and _RISK_LINE.search(line):
            return True
    for section in sections:
        if re.search(rf"(?<![\w.]){re.escape(section)}(?=[.\[:])", line):
            return True
        if section == "routes" and re.search(r"\broutes?\b", line):
            return True
        if any(word in line for word in _ALSO_NAMED.get(section, ())):
            return True
    return False
