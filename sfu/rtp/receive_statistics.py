"""Receive statistics of one incoming RTP stream (RFC 3550 section 6.4.1, A.3, A.8).

Sans-I/O: the caller passes arrival times in seconds; the class computes what a
receiver report block says about the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from sfu.rtp.rtcp import ReportBlock
from sfu.rtp.seqnum import WrapAroundExtender

MAX_JITTER = 0xFFFFFFFF


@dataclass
class SenderInfo:
    """The last sender report seen on the stream (for LSR/DLSR and timestamp mapping)."""

    ntp_timestamp: int
    rtp_timestamp: int
    arrival: float


class ReceiveStatistics:
    def __init__(self, ssrc: int, clock_rate: int) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.packets_received = 0
        self.bytes_received = 0
        self.jitter = 0.0
        self.last_sender_report: SenderInfo | None = None
        self._sequence = WrapAroundExtender(16)
        self._base_sequence: int | None = None
        self._highest_sequence = 0
        self._last_transit: float | None = None
        self._expected_prior = 0
        self._received_prior = 0

    def add(self, sequence_number: int, timestamp: int, size: int, now: float) -> int:
        """Count one packet; returns its sequence number extended to 64 bits."""
        extended = self._sequence.update(sequence_number)
        if self._base_sequence is None:
            self._base_sequence = extended
            self._highest_sequence = extended
        elif extended > self._highest_sequence:
            self._highest_sequence = extended
        self.packets_received += 1
        self.bytes_received += size
        # Interarrival jitter (RFC 3550 A.8), in timestamp units.
        transit = now * self.clock_rate - timestamp
        if self._last_transit is not None:
            d = abs(transit - self._last_transit)
            # A timestamp wrap shows as a jump of ~2^32 units: skip that sample.
            if d < 1 << 31:
                self.jitter += (d - self.jitter) / 16
        self._last_transit = transit
        return extended

    @property
    def highest_sequence(self) -> int:
        """The highest extended sequence number received so far."""
        return self._highest_sequence

    def add_sender_report(self, ntp_timestamp: int, rtp_timestamp: int, now: float) -> None:
        self.last_sender_report = SenderInfo(ntp_timestamp, rtp_timestamp, now)

    @property
    def packets_expected(self) -> int:
        if self._base_sequence is None:
            return 0
        return self._highest_sequence - self._base_sequence + 1

    @property
    def packets_lost(self) -> int:
        return self.packets_expected - self.packets_received

    def report_block(self, now: float) -> ReportBlock | None:
        """A report block for an RR/SR, or None before the first packet (A.3)."""
        if self._base_sequence is None:
            return None
        expected = self.packets_expected
        expected_interval = expected - self._expected_prior
        received_interval = self.packets_received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self.packets_received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        lost = max(-(1 << 23), min((1 << 23) - 1, self.packets_lost))
        lsr = dlsr = 0
        sender = self.last_sender_report
        if sender is not None:
            lsr = (sender.ntp_timestamp >> 16) & 0xFFFFFFFF
            dlsr = min(0xFFFFFFFF, int((now - sender.arrival) * 65536))
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            packets_lost=lost,
            highest_sequence=self._highest_sequence & 0xFFFFFFFF,
            jitter=min(MAX_JITTER, int(self.jitter)),
            lsr=lsr,
            dlsr=dlsr,
        )
