"""Media time for recorded frames: RTP timestamps onto one clock per participant.

Every file of a participant in one recording counts from the same zero, the
:attr:`ParticipantClock.epoch` (when the recording of that participant began, on the
worker's arrival clock), so its audio and video files stay in sync when they are muxed
together later.

A stream is *anchored* at the first frame written from it: that frame's time is
taken from the stream's latest RTCP sender report when there is one (RFC 3550 6.4.1:
the sender's NTP time of an RTP timestamp; the sender's clock is the same for all
its streams, so audio and video line up as the sender captured them), moved onto
this server's clock by one offset per participant: the arrival of its first sender
report used here minus the time the report was sent (clock difference and network
delay, without the capture, encoding and jitter-buffer delays of media, which vary);
without a sender report, from the frame's arrival time. After the anchor, timestamps advance
with the RTP clock alone (extended past wraparound), so later sender reports never
make the timeline jump. A new stream (a simulcast layer switch, a new SSRC after the
publisher restarted) is anchored again.
"""

from __future__ import annotations

from dataclasses import dataclass

from sfu.rtp.rtcp import unix_from_ntp
from sfu.rtp.seqnum import TIMESTAMP_BITS, WrapAroundExtender, diff


@dataclass
class ParticipantClock:
    """What every recorded track of one participant in one recording shares."""

    epoch: float
    """Media time 0 on the clock packets are stamped with on arrival (the worker's
    monotonic clock)."""
    started_at: float
    """The same instant in Unix seconds, for reports."""
    offset: float | None = None
    """Arrival clock minus the sender's NTP time, from the first sender report a frame
    was anchored by."""


SenderReportMapping = tuple[int, int, float]
"""(NTP timestamp, RTP timestamp, arrival) of a stream's latest sender report."""


class MediaClock:
    """Presentation timestamps, in units of ``clock_rate`` since the epoch, for the
    frames of one recorded track."""

    def __init__(self, participant: ParticipantClock, clock_rate: int) -> None:
        self.participant = participant
        self.clock_rate = clock_rate
        self._extender = WrapAroundExtender(TIMESTAMP_BITS)
        self._base_timestamp = 0
        self._base_pts = 0
        self.anchored = False
        self.anchored_by_report = False

    def anchor(self, timestamp: int, arrival: float, report: SenderReportMapping | None) -> None:
        """Place the frame of RTP timestamp ``timestamp`` (arrived at ``arrival``) on the
        participant's clock; its stream's later frames follow its RTP clock."""
        participant = self.participant
        seconds = arrival
        if report is not None:
            ntp, rtp, report_arrival = report
            sent = unix_from_ntp(ntp)
            if participant.offset is None:
                participant.offset = report_arrival - sent
            elapsed = diff(timestamp, rtp, TIMESTAMP_BITS) / self.clock_rate
            seconds = sent + elapsed + participant.offset
        self._extender = WrapAroundExtender(TIMESTAMP_BITS)
        self._base_timestamp = self._extender.update(timestamp)
        self._base_pts = round((seconds - participant.epoch) * self.clock_rate)
        self.anchored = True
        self.anchored_by_report = report is not None

    def pts(self, timestamp: int) -> int:
        """The presentation timestamp of a frame of the anchored stream."""
        return self._base_pts + self._extender.update(timestamp) - self._base_timestamp
