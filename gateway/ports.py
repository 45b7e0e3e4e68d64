"""A port the config names is already taken: one line saying which port and what moves it.

The listeners wrap their bind in ``binding(field, host, port)``; the CLI turns the error into
``gateway: port 8443 (listen.port) on 127.0.0.1 is already in use; set GATEWAY_PORT ...`` and exit
code 69 (EX_UNAVAILABLE) instead of a traceback. The variable is read from the config file's own
text (``port: ${GATEWAY_PORT:-8443}``), so it is right for any config, not only the demo's.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

__all__ = ("PortInUseError", "binding", "variable_for")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


class PortInUseError(Exception):
    def __init__(self, field: str, host: str, port: int, *, variable: str | None = None) -> None:
        super().__init__(f"port {port} ({field}) on {host} is already in use")
        self.field = field
        self.host = host
        self.port = port
        self.variable = variable

    def describe(self, config_path: str | None = None) -> str:
        """The one line for the operator: the port, the setting and, if the file uses one, its variable."""
        variable = self.variable or (variable_for(config_path, self.field) if config_path else None)
        how = f"set {variable}=<free port> or stop what holds it" if variable else (
            f"change {self.field} in {config_path or 'the config'} or stop what holds it")
        return f"{self}; {how}"


@contextmanager
def binding(field: str, host: str, port: int, *, variable: str | None = None) -> Iterator[None]:
    """Around a listener's bind: EADDRINUSE becomes a ``PortInUseError`` naming ``field``."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise PortInUseError(field, host, port, variable=variable) from None


def variable_for(config_path: str, dotted: str) -> str | None:
    """The ``${VAR}`` the raw (unexpanded) config file uses at ``dotted`` (e.g. ``listen.port``)."""
    try:
        node = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, RecursionError):
        return None
    for part in dotted.replace("[", ".").replace("]", "").split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    if isinstance(node, str) and (m := _VAR.search(node)):
        return m.group(1)
    return None
