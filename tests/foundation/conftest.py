"""Foundation tests: the HTTP/1.1 upstream client, the listener's slow-client defences and the
request-smuggling suite also run on uvloop (the loop the gateway uses)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    on_both = ("test_upstream_http1", "test_slow_clients", "test_smuggling")
    if item.module is not None and item.module.__name__.endswith(on_both):
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}  # the plugin's default, named
