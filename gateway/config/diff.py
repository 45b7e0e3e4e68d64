"""What a reloaded config changes, in words for the reload log line (issue #21).

``describe_changes(old, new)`` -> ``"routes: +refunds -legacy ~accounts; issuers: ~bank-as; dpop"``:
routes and issuers by id/name (added, removed, changed), every other top-level section by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .schema import GatewayConfig

__all__ = ("describe_changes",)


def _by_key(old: dict[str, object], new: dict[str, object]) -> str:
    parts = [f"+{k}" for k in new if k not in old]
    parts += [f"-{k}" for k in old if k not in new]
    parts += [f"~{k}" for k in new if k in old and old[k] != new[k]]
    return " ".join(parts)


def describe_changes(old: GatewayConfig, new: GatewayConfig) -> str:
    """The changed parts, or ``no changes`` (a reload of the same content)."""
    out: list[str] = []
    for name in type(new).model_fields:
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        if name == "routes":
            detail = _by_key({r.id: r for r in before}, {r.id: r for r in after})
            if [r.id for r in before] != [r.id for r in after] and not detail.strip("~ "):
                detail = "reordered"
        elif name == "issuers":
            detail = _by_key({i.name: i for i in before}, {i.name: i for i in after})
        elif name == "upstreams":
            detail = _by_key(dict(before), dict(after))
        else:
            detail = ""
        out.append(f"{name}: {detail}" if detail else name)
    return "; ".join(out) or "no changes"
