"""How much of the worker's event loop one participant's RTCP may use.

Every room on a worker shares one event loop, so a participant whose RTCP is expensive
to handle (hostile feedback, floods) delays everyone's media and signaling. The parsers
and handlers bound the work of each packet; this bounds their sum: the handlers time
each compound they handle and charge it here. Once a participant has used its budget
within the current one-second window, its RTCP is dropped, and counted, until the
window ends.

The charge is the event-loop thread's CPU time outside garbage collection
(:func:`sfu.loop_time.loop_cpu_time`), not wall time:
on a loaded machine the scheduler may preempt the loop in the middle of any handler
(with 20 runnable processes on 2 cores, a legitimate compound of well under 1 ms of
CPU measured 24 ms of wall time), and charging that to the participant would drop its
legitimate feedback just when the server is busiest; and a full collection that starts
while a handler allocates (40-50 ms before the startup heap is frozen) is the
interpreter's, not the participant's. Three clock reads per compound (the window's
``time.monotonic`` and two ``thread_time``, 1-4 µs together here) are
little next to the compound's own handling, and RTCP comes tens of times per second per
participant, never per media packet.

One compound is at most 1,500 bytes: pylibsrtp unprotects SRTCP into a buffer of that
size and refuses longer packets (the transport counts them as handler errors), so no
single call handles more than one MTU of RTCP.
"""

from __future__ import annotations

WINDOW = 1.0
"""Seconds of one budget window."""


class RtcpBudget:
    """One participant's RTCP time budget: ``budget`` seconds per :data:`WINDOW`."""

    __slots__ = ("_budget", "_spent", "_window_end", "dropped", "slowest")

    def __init__(self, budget: float) -> None:
        if budget <= 0:
            raise ValueError(f"RTCP budget {budget} must be positive")
        self._budget = budget
        self._spent = 0.0
        self._window_end = -1.0
        self.dropped = 0
        """Compounds dropped because the budget of their window was used up."""
        self.slowest = 0.0
        """CPU seconds the slowest compound took (no handler should hold the loop 5 ms)."""

    def admit(self, now: float) -> bool:
        """May a compound arriving at ``now`` (seconds, monotonic) be handled? Counts it
        when not."""
        if now >= self._window_end:
            self._window_end = now + WINDOW
            self._spent = 0.0
        elif self._spent >= self._budget:
            self.dropped += 1
            return False
        return True

    def charge(self, seconds: float) -> None:
        """Add the CPU seconds one admitted compound took to the current window."""
        self._spent += seconds
        if seconds > self.slowest:
            self.slowest = seconds
