"""profile_mtls's `--tls-transport`: the proxies' PYZTUNNEL_TLS_TRANSPORT, or their own default when not given."""

from __future__ import annotations

from benchmarks import profile_mtls


def test_tls_transport_flag_sets_the_proxies_environment() -> None:
    flags = profile_mtls._flags(["--tls-transport=memory"])
    assert profile_mtls.proxy_env(flags) == {"PYZTUNNEL_TLS_TRANSPORT": "memory"}
    assert profile_mtls.proxy_env(profile_mtls._flags([])) == {}
