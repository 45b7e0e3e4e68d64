"""Shared base for configuration models: frozen, unknown keys refused."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo


class Model(BaseModel):
    """Every config object: immutable after load, and a typo in a key is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def resolve_path(value: str, info: ValidationInfo | None) -> str:
    """A relative path is relative to the config file's directory (``base_dir`` in the context)."""
    context = info.context if info is not None and isinstance(info.context, dict) else {}
    base = context.get("base_dir")
    if base is None or Path(value).is_absolute():
        return value
    return str(Path(base) / value)


def check_files(info: ValidationInfo | None) -> bool:
    """False for ``check-config --no-files``: paths are resolved but need not exist here."""
    context = info.context if info is not None and isinstance(info.context, dict) else {}
    return bool(context.get("check_files", True))


def _readable_file(written: str, info: ValidationInfo) -> str:
    value = resolve_path(written, info)
    if not check_files(info):
        return value
    path = Path(value)
    if not path.is_file():
        # Say where a relative path was looked for: a copied config is the usual surprise.
        where = "" if value == written else (
            f" (a relative path is relative to the config file's directory: {os.path.normpath(value)})")
        raise ValueError(f"file not found: {written}{where}")
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ValueError(f"file not readable: {written} ({exc.strerror})") from None
    return value


# A path that must name a readable file at load time (cert, key, CA bundle...).
FilePath = Annotated[str, AfterValidator(_readable_file)]


def _cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError("not an IP address or CIDR range") from None
    return value


# An IP address or network (trusted proxies, front-proxy source ranges).
Cidr = Annotated[str, AfterValidator(_cidr)]
