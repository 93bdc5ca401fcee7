from pyztunnel.lifecycle.migrate_pauses import PauseClock


def test_no_pause_summarises_as_zero() -> None:
    assert PauseClock().summary() == {"pause_p50_ms": 0.0, "pause_p99_ms": 0.0, "pause_max_ms": 0.0}


def test_each_relay_counts_from_its_own_start_to_its_own_stop() -> None:
    clock = PauseClock()
    relays = [object() for _ in range(100)]
    for i, relay in enumerate(relays):
        clock.start(relay, i * 0.001)  # started 1 ms apart, each paused i + 1 ms
        clock.stop(relay, i * 0.002 + 0.001)
    clock.stop(relays[0], 5.0)  # a second stop does not count again
    clock.stop(object(), 5.0)  # nor does one never started
    assert clock.summary() == {"pause_p50_ms": 51.0, "pause_p99_ms": 100.0, "pause_max_ms": 100.0}
