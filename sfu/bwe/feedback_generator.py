"""Transport-cc feedback from the SFU to a publisher (the role of libwebrtc's
``RemoteEstimatorProxy`` and mediasoup's ``TransportCongestionControlServer``).

The SFU records the transport-wide sequence number and arrival time of every packet
received on a publish transport, and every 50-100 ms turns everything received since
the previous call into RTCP transport-cc packets.

Reporting window: each feedback covers the sequence numbers from the end of the
previous one up to the highest received; the gaps are reported as not received. A
packet that arrives after its sequence number was reported (reordered, or lost and then
received) moves the window back, so the next feedback reports it as received, together
with the already reported packets after it (as libwebrtc does). Arrivals are kept for
:data:`HISTORY_SECONDS` after they are reported, and never more than
:data:`MAX_TRACKED_PACKETS`; a packet older than what is kept is ignored.
"""

from __future__ import annotations

from sfu.rtp.seqnum import SEQUENCE_NUMBER_BITS, WrapAroundExtender
from sfu.rtp.transport_feedback import build_feedback_packets

HISTORY_SECONDS = 0.5
"""How long a reported arrival is kept, to re-report it when an older packet arrives late."""
MAX_TRACKED_PACKETS = 8192
"""Hard bound on remembered arrivals, when :meth:`feedback` is not called often enough."""


class TransportCcFeedbackGenerator:
    """Records arrivals on one transport and writes transport-cc feedback for them.

    ``sender_ssrc`` is the SFU's RTCP SSRC towards the publisher, ``media_ssrc`` one of
    the publisher's media SSRCs (libwebrtc ignores it; it may be changed at any time).
    """

    __slots__ = (
        "_arrivals",
        "_extender",
        "_feedback_count",
        "_floor",
        "_window_start",
        "media_ssrc",
        "sender_ssrc",
    )

    def __init__(self, sender_ssrc: int = 0, media_ssrc: int = 0) -> None:
        self.sender_ssrc = sender_ssrc
        self.media_ssrc = media_ssrc
        self._extender = WrapAroundExtender(SEQUENCE_NUMBER_BITS)
        self._arrivals: dict[int, int] = {}
        """Extended sequence number -> arrival time in microseconds."""
        self._window_start: int | None = None
        """First extended sequence number the next feedback reports."""
        self._floor: int | None = None
        """Every arrival at or above this sequence number is still in ``_arrivals``."""
        self._feedback_count = 0

    @property
    def feedback_count(self) -> int:
        """The feedback packet count the next packet carries (0..255)."""
        return self._feedback_count

    @property
    def pending(self) -> int:
        """Remembered arrivals (reported ones kept for re-reporting included)."""
        return len(self._arrivals)

    def add(self, sequence_number: int, now: float) -> None:
        """Record the arrival at ``now`` (seconds) of a 16-bit transport sequence number."""
        extended = self._extender.update(sequence_number)
        if extended in self._arrivals:
            return
        if self._floor is not None and extended < self._floor:
            return
        self._arrivals[extended] = round(now * 1_000_000)
        if self._window_start is None or extended < self._window_start:
            self._window_start = extended
        if self._floor is None:
            self._floor = extended
        if len(self._arrivals) > MAX_TRACKED_PACKETS:
            self._drop_oldest(len(self._arrivals) - MAX_TRACKED_PACKETS * 3 // 4)

    def feedback(self, now: float) -> list[bytes]:
        """Serialized RTCP transport-cc packets for everything received since the last call."""
        start = self._window_start
        highest = self._extender.highest
        packets: list[bytes] = []
        if start is not None and highest is not None and highest >= start:
            received = sorted(item for item in self._arrivals.items() if item[0] >= start)
            feedback = build_feedback_packets(
                self.sender_ssrc,
                self.media_ssrc,
                received,
                self._feedback_count,
                base_sequence=start,
            )
            self._feedback_count = (self._feedback_count + len(feedback)) & 0xFF
            self._window_start = received[-1][0] + 1
            packets = [bytes(packet) for packet in feedback]
        self._forget(round((now - HISTORY_SECONDS) * 1_000_000))
        return packets

    def _forget(self, cutoff_us: int) -> None:
        """Drop the oldest reported arrivals received before ``cutoff_us``."""
        window_start = self._window_start
        if window_start is None:
            return
        arrivals = self._arrivals
        count = 0
        for sequence_number in sorted(arrivals):
            if sequence_number >= window_start or arrivals[sequence_number] >= cutoff_us:
                break
            count += 1
        if count:
            self._drop_oldest(count)

    def _drop_oldest(self, count: int) -> None:
        arrivals = self._arrivals
        ordered = sorted(arrivals)
        for sequence_number in ordered[:count]:
            del arrivals[sequence_number]
        floor = ordered[count] if count < len(ordered) else ordered[-1] + 1
        self._floor = floor
        if self._window_start is not None and self._window_start < floor:
            self._window_start = floor
