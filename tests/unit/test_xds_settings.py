"""XDS settings refuse values the client cannot work with (one line, exit 2), instead of failing later."""

from __future__ import annotations

import pytest

from pyztunnel import settings
from pyztunnel.errors import UserError
from pyztunnel.xds.config import XdsSettings


@pytest.mark.parametrize(
    ("environ", "bad"),
    [
        ({"PYZTUNNEL_XDS_MAX_MESSAGE_SIZE": "10"}, "PYZTUNNEL_XDS_MAX_MESSAGE_SIZE"),
        ({"PYZTUNNEL_XDS_FIRST_RESPONSE_TIMEOUT": "0s"}, "PYZTUNNEL_XDS_FIRST_RESPONSE_TIMEOUT"),
        ({"PYZTUNNEL_XDS_BACKOFF_JITTER": "1.5"}, "PYZTUNNEL_XDS_BACKOFF_JITTER"),
        ({"PYZTUNNEL_XDS_BACKOFF_JITTER": "-0.1"}, "PYZTUNNEL_XDS_BACKOFF_JITTER"),
    ],
)
def test_out_of_range_values_are_refused(environ: dict[str, str], bad: str) -> None:
    with pytest.raises(UserError, match=bad):
        settings.load(XdsSettings, environ=environ)


def test_defaults_and_bounds_load() -> None:
    loaded = settings.load(
        XdsSettings, environ={"PYZTUNNEL_XDS_BACKOFF_JITTER": "1", "PYZTUNNEL_XDS_MAX_MESSAGE_SIZE": "1024"}
    )
    assert loaded.xds_backoff_jitter == 1.0
    assert loaded.xds_max_message_size == 1024
