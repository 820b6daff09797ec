"""RtcpReporter: the reports a participant's transports carry from the SFU (RFC 3550
section 6.4).

Receiver reports to the publisher for each stream it publishes; sender reports to the
subscriber for each consumer that forwards, translated from the publisher's (same NTP
time, RTP time mapped through the consumer's offset, so lip sync survives), each with
an SDES CNAME, packed into compounds of at most :data:`RTCP_MAX_PACKET` bytes. Both go
out every :data:`RTCP_INTERVAL`, randomized by half either way (RFC 3550 section
6.3.1) so that the reports of many participants do not come in step.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sfu.rtp import rtcp

if TYPE_CHECKING:
    from sfu.consumer import Consumer
    from sfu.producer import Producer
    from sfu.router import Router

RTCP_INTERVAL = 1.0
"""Seconds between the SFU's receiver reports to publishers and sender reports to
subscribers (RFC 3550 allows this for a few streams per transport)."""
RTCP_MAX_PACKET = 1200
"""Largest compound RTCP packet the SFU sends."""
MAX_REPORT_BLOCKS = 31
"""Report blocks one RR carries (its 5-bit count)."""


class RtcpReporter:
    def __init__(self, ssrc: int, cname: str) -> None:
        self.ssrc = ssrc
        """The SSRC the SFU's reports to this participant come from."""
        self._cname = cname.encode()
        self._next = 0.0

    def due(self, now: float) -> bool:
        """Whether the reports are due at ``now`` (monotonic); schedules the next ones."""
        if now < self._next:
            return False
        self._next = now + RTCP_INTERVAL * (0.5 + secrets.randbelow(1000) / 1000)
        return True

    def receiver_reports(self, producers: Iterable[Producer], now: float) -> list[bytes]:
        blocks = []
        for producer in producers:
            for stream in producer.streams.values():
                block = stream.statistics.report_block(now)
                if block is not None:
                    blocks.append(block)
        return [
            bytes(rtcp.ReceiverReport(ssrc=self.ssrc, reports=blocks[i : i + MAX_REPORT_BLOCKS]))
            for i in range(0, len(blocks), MAX_REPORT_BLOCKS)
        ]

    def sender_reports(
        self, consumers: Iterable[Consumer], router: Router, now: float, wall: float
    ) -> list[bytes]:
        """``now`` is the monotonic clock, ``wall`` the wall clock for NTP time."""
        compounds: list[bytes] = []
        current = b""
        for consumer in consumers:
            forwarding = router.forwarding(consumer)
            if not consumer.active or forwarding is None or forwarding.stream is None:
                continue
            mapping = consumer.producer.timestamp_mapping(forwarding.stream)
            report = consumer.sender_report(now, wall, mapping)
            if report is None:
                continue
            sdes = rtcp.SourceDescription(chunks=[(consumer.ssrc, [(1, self._cname)])])
            packet = bytes(report) + bytes(sdes)
            if current and len(current) + len(packet) > RTCP_MAX_PACKET:
                compounds.append(current)
                current = b""
            current += packet
        if current:
            compounds.append(current)
        return compounds
