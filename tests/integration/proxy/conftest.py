"""The proxy runs on uvloop in production, so its integration tests run on uvloop too; and a test that leaves a
task running fails (kopf's `_no_asyncio_pending_tasks`): every task the proxy starts has an owner that ends it."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
import uvloop

from pyztunnel.proxy.tlssock import TRANSPORTS
from tests.integration.proxy import harness


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, Callable[[], object]]:
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(autouse=True)
def _no_leaked_tasks(no_leaked_tasks: None) -> None:
    """Every test here runs under the leak check (tests/conftest.py)."""


@pytest.fixture(params=TRANSPORTS)
def tls_transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both HBONE TLS transports (PYZTUNNEL_TLS_TRANSPORT) for the meshes of a test that uses this."""
    transport = str(request.param)
    monkeypatch.setitem(harness.DEFAULTS, "PYZTUNNEL_TLS_TRANSPORT", transport)
    return transport
