from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from pyztunnel.observe.loglevels import FilterError, LogFilter, LogLevels, initial_filter, logger_name


def test_parse_and_render() -> None:
    f = LogFilter.parse("hickory_server::server=off,info")
    assert f.default == "info" and f.targets == {"hickory_server::server": "off"}
    g = LogFilter.parse("access=debug,warn", base=f)
    assert g.render() == "hickory_server::server=off,access=debug,warn"
    assert LogFilter.parse("access=info", base=g).render() == "hickory_server::server=off,access=info,warn"
    with pytest.raises(FilterError):
        LogFilter.parse("loud")
    with pytest.raises(FilterError):
        LogFilter.parse("=debug")


def test_logger_names() -> None:
    assert logger_name("access") == "access"
    assert logger_name("proxy::inbound") == "pyztunnel.proxy.inbound"
    assert logger_name("ztunnel::observe") == "pyztunnel.observe"
    assert logger_name("pyztunnel::observe::servers") == "pyztunnel.observe.servers"
    assert logger_name("hickory_server::server") == "hickory_server.server"


def test_initial_filter_from_rust_log() -> None:
    assert initial_filter({"RUST_LOG": "access=debug,warn"}).render() == "access=debug,warn"
    assert initial_filter({}).render() == "info"
    assert initial_filter({"RUST_LOG": "nonsense"}).render() == "info"
    assert initial_filter({"RUST_LOG": "access=debug,info", "LOG_LEVEL": "warn"}).render() == "access=debug,warn"


@pytest.fixture
def restore_levels() -> Iterator[None]:
    names = ["", "access", "pyztunnel.observe"]
    saved = {n: logging.getLogger(n).level for n in names}
    try:
        yield
    finally:
        for n, lvl in saved.items():
            logging.getLogger(n).setLevel(lvl)


@pytest.mark.usefixtures("restore_levels")
def test_set_and_reset_change_python_levels() -> None:
    levels = LogLevels(LogFilter.parse("info"))
    levels.set("access=debug,observe=off")
    assert logging.getLogger("access").level == logging.DEBUG
    assert not logging.getLogger("pyztunnel.observe").isEnabledFor(logging.CRITICAL)
    levels.set("warn")
    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger("access").level == logging.DEBUG  # added on top, as ztunnel
    levels.set("", reset=True)
    assert logging.getLogger().level == logging.INFO
    assert logging.getLogger("access").level == logging.NOTSET
    assert levels.current.render() == "info"
    with pytest.raises(FilterError):
        levels.set("access=loud")
    assert levels.current.render() == "info"
