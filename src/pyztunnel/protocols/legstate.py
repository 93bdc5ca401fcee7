"""One side of a relay, sans-IO: which direction has ended, who holds it paused, and whether it is over.

A relay carries bytes between two legs (a TCP socket, or one HTTP/2 stream). Each leg has two directions:

- in: bytes the leg's network peer sends us; `eof_in` once it finished sending (TCP FIN, END_STREAM);
- out: bytes we send it; `eof_out` once we finished (shutdown(SHUT_WR), END_STREAM).

A half-close travels across (EOF in on one leg → EOF out on the other); a leg is over cleanly once both directions
ended (then it is closed), or at once when it is reset. Backpressure is a count of holds: whoever needs the leg to
stop reading (its peer's full write buffer, an empty HTTP/2 send window, a migration's pause) holds it and lets go
later; the leg reads again only when nobody holds it. The transitions that call for IO are returned as booleans so the
shell (proxy/relay.py) does exactly that IO and nothing twice.
"""

from __future__ import annotations


class LegState:
    """Counters and flags of one leg; the relay's legs inherit it, so the hot path reads plain attributes."""

    __slots__ = ("_holds", "done", "eof_in", "eof_out", "received")  # two per idle connection, on each proxy

    def __init__(self) -> None:
        self.received = 0  # bytes read from this leg's network peer
        self.eof_in = False  # the network peer finished sending
        self.eof_out = False  # we finished sending to the network peer
        self.done = False  # nothing more will happen on this leg
        self._holds = 0

    # --- backpressure
    def hold(self) -> bool:
        """One more reason not to read; True when reading must stop now (the first hold)."""
        self._holds += 1
        return self._holds == 1

    def let_go(self) -> bool:
        """One reason less; True when reading may start again (the last hold went). Unmatched calls are ignored."""
        if self._holds == 0:
            return False
        self._holds -= 1
        return self._holds == 0

    def let_go_all(self) -> bool:
        """Every hold dropped at once (the leg joins a new relay: whatever held it under the old one is over); True
        if it was held."""
        held, self._holds = self._holds > 0, 0
        return held

    @property
    def held(self) -> bool:
        return self._holds > 0

    # --- half-close
    def ended_in(self) -> bool:
        """The peer finished sending; True when both directions are now over (close the leg cleanly)."""
        self.eof_in = True
        return self.eof_out and not self.done

    def end_out(self) -> bool:
        """We finish sending; False if we already had (send nothing twice)."""
        if self.eof_out:
            return False
        self.eof_out = True
        return True

    @property
    def closed_both_ways(self) -> bool:
        """Both directions ended and the leg is not finished yet: time for its clean close."""
        return self.eof_in and self.eof_out and not self.done

    @property
    def open_both_ways(self) -> bool:
        return not (self.done or self.eof_in or self.eof_out)

    def finish(self) -> bool:
        """Nothing more will happen on this leg; True the first time only (the relay hears of it once)."""
        if self.done:
            return False
        self.done = True
        return True
