"""A Consumer: one producer's media forwarded to one subscriber.

The consumer owns what makes the forwarded stream look like one continuous RTP
stream to the subscriber: its own SSRC, a sequence-number and timestamp offset
chosen when forwarding starts (on a key frame for video), the payload type the
subscriber negotiated, a retransmission cache for the subscriber's NACKs, and the
counts its sender reports carry.
"""

from __future__ import annotations

import secrets
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sfu.rtp.rtcp import SenderReport, ntp_from_unix

if TYPE_CHECKING:
    from sfu.producer import Producer

RETRANSMISSION_CACHE_SIZE = 1024
"""Packets kept per consumer for NACKs (about 1 s of 3 Mbit/s video); a power of two."""

_HEADER = struct.Struct("!BBHII")
_SEQ_MASK = RETRANSMISSION_CACHE_SIZE - 1

SendRtp = Callable[[bytes], None]


class Consumer:
    """Forwards one producer to one subscribe transport."""

    def __init__(
        self,
        consumer_id: str,
        producer: Producer,
        subscriber_id: str,
        send_rtp: SendRtp,
    ) -> None:
        self.id = consumer_id
        self.producer = producer
        self.subscriber_id = subscriber_id
        self.kind = producer.kind
        self.ssrc = secrets.randbits(32) or 1
        self.payload_type = 0
        self.clock_rate = producer.clock_rate
        self.active = False
        """The subscriber accepted the m-line and media may flow."""
        self.needs_key_frame = self.kind == "video"
        self.paused = False
        self.max_spatial_layer: int | None = None
        self.max_width: int | None = None
        self.max_height: int | None = None
        self.packets_sent = 0
        self.octets_sent = 0
        self.retransmissions = 0
        self.nacks_received = 0
        self.plis_received = 0
        self.firs_received = 0
        self.created_at = time.monotonic()
        self.first_forwarded_at: float | None = None
        """Monotonic time of the first forwarded packet (join latency metric)."""
        self.rtt: float | None = None
        self.fraction_lost = 0
        self._send_rtp = send_rtp
        self._started = False
        self._seq_offset = 0
        self._ts_offset = 0
        self._next_seq = secrets.randbits(16)
        self._next_ts_base = secrets.randbits(32)
        self._last_seq = 0
        self._last_ts = 0
        self._cache: list[bytes | None] = [None] * RETRANSMISSION_CACHE_SIZE

    def set_preferences(
        self,
        paused: bool,
        max_spatial_layer: int | None,
        max_width: int | None,
        max_height: int | None,
    ) -> None:
        """The subscriber's wishes; a paused consumer forwards nothing and restarts on a
        key frame when resumed."""
        was_paused = self.paused
        self.paused = paused
        self.max_spatial_layer = max_spatial_layer
        self.max_width = max_width
        self.max_height = max_height
        if was_paused and not paused and self.active:
            self.restart()

    def activate(self, payload_type: int) -> None:
        """The subscriber accepted this consumer's m-line with ``payload_type``."""
        self.payload_type = payload_type
        if not self.active:
            self.active = True
            self.restart()

    def deactivate(self) -> None:
        self.active = False

    def restart(self) -> None:
        """Resume from the next key frame (new subscriber, or transport reconnect)."""
        if self.kind == "video":
            self.needs_key_frame = True
            self.producer.request_key_frame()
        self._started = False

    def forward(self, marker_bit: int, seq: int, ts: int, payload: bytes, key_frame: bool) -> None:
        """Rewrite one packet of the producer's stream and send it.

        ``marker_bit`` is 0x80 or 0; ``payload`` starts after the publisher's header
        (its header extensions are not forwarded) and keeps any RTP padding, whose
        presence the caller signals through ``padding_bit`` in the first byte.
        """
        if not self.active or self.paused:
            return
        if not self._started:
            if self.needs_key_frame and not key_frame:
                return
            self.needs_key_frame = False
            self._started = True
            if self.first_forwarded_at is None:
                self.first_forwarded_at = time.monotonic()
            # Continue the subscriber's sequence and timestamp where they stopped, so
            # a restart looks like a pause, never like a jump backwards.
            self._seq_offset = (self._next_seq - seq) & 0xFFFF
            self._ts_offset = (self._next_ts_base - ts) & 0xFFFFFFFF
        out_seq = (seq + self._seq_offset) & 0xFFFF
        out_ts = (ts + self._ts_offset) & 0xFFFFFFFF
        packet = (
            _HEADER.pack(0x80, marker_bit | self.payload_type, out_seq, out_ts, self.ssrc) + payload
        )
        self._cache[out_seq & _SEQ_MASK] = packet
        self._last_seq = out_seq
        self._last_ts = out_ts
        self._next_seq = (out_seq + 1) & 0xFFFF
        self._next_ts_base = (out_ts + 1) & 0xFFFFFFFF
        self.packets_sent += 1
        self.octets_sent += len(payload)
        self._send_rtp(packet)

    def retransmit(self, lost: list[int]) -> int:
        """Answer a NACK from the subscriber out of the cache; returns packets resent."""
        self.nacks_received += 1
        sent = 0
        for seq in lost:
            packet = self._cache[seq & _SEQ_MASK]
            if packet is not None and struct.unpack_from("!H", packet, 2)[0] == seq:
                self._send_rtp(packet)
                sent += 1
        self.retransmissions += sent
        return sent

    def sender_report(self, now: float) -> SenderReport | None:
        """An SR translated from the producer's latest SR (lip sync survives), or from
        the wall clock when the publisher has not sent one yet."""
        if not self._started:
            return None
        mapping = self.producer.timestamp_mapping()
        if mapping is not None:
            ntp_timestamp, rtp_timestamp, arrival = mapping
            elapsed = now - arrival
            rtp = rtp_timestamp + int(elapsed * self.clock_rate) + self._ts_offset
            ntp = ntp_timestamp + int(elapsed * (1 << 32))
        else:
            rtp = self._last_ts
            ntp = ntp_from_unix(now)
        return SenderReport(
            ssrc=self.ssrc,
            ntp_timestamp=ntp & 0xFFFFFFFFFFFFFFFF,
            rtp_timestamp=rtp & 0xFFFFFFFF,
            packet_count=self.packets_sent & 0xFFFFFFFF,
            octet_count=self.octets_sent & 0xFFFFFFFF,
            reports=[],
        )
