"""Test policy shared by every test.

System tests need root, network namespaces and Debian tools. On a developer machine without them they are skipped
with the reason; when CI is set (CI runs as root) a missing prerequisite is a failure, never a silent skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.leaks import no_leaked_tasks as _leak_check


def require(condition: bool, what: str) -> None:
    """Skip locally, fail in CI."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"missing prerequisite in CI: {what}")
    pytest.skip(f"missing prerequisite: {what}")


def require_system() -> None:
    require(os.geteuid() == 0, "root (network namespaces, nftables)")
    for tool in ("ip", "nft"):
        require(shutil.which(tool) is not None, f"'{tool}' (run make install)")
    require(os.path.isdir("/run") and os.access("/run", os.W_OK), "writable /run for /run/netns")


@pytest.fixture(autouse=True)
def _system_prerequisites(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("system") is not None:
        require_system()
    yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/system is a system test, whether or not the module marks itself.
    for item in items:
        if "/tests/system/" in str(item.path):
            item.add_marker(pytest.mark.system)
        elif "/tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fails the test if it leaves asyncio tasks running (autouse for the proxy's integration tests)."""
    async with _leak_check():
        yield
