"""Shared base for configuration models: frozen, unknown keys refused."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


class Model(BaseModel):
    """Every config object: immutable after load, and a typo in a key is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _readable_file(value: str) -> str:
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"file not found: {value}")
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ValueError(f"file not readable: {value} ({exc.strerror})") from None
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
