"""BandwidthController: congestion control of one subscribe transport.

What the subscriber can take and what it gets: every packet stamped with the transport-
wide sequence number the subscriber negotiated (draft-holmer-rmcat-transport-wide-cc)
and recorded by the send-side estimator (:mod:`sfu.bwe.send_side`), its transport-cc
feedback, REMB and receiver reports fed to the estimator, the stream allocator run
every :data:`ALLOCATION_INTERVAL` to give each video consumer the layer that fits, and
padding-only probes while the allocation wishes for more than the estimate (LiveKit's
``StreamAllocator`` and prober, mediasoup's ``TransportCongestionControlClient``).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sfu.allocator import (
    PRIORITY_ACTIVE_SPEAKER,
    PRIORITY_DEFAULT,
    PRIORITY_SCREEN_SHARE,
    StreamAllocator,
    TrackAllocationInput,
)
from sfu.bwe.send_side import SendSideBandwidthEstimator
from sfu.consumer import PADDING_SIZE, Consumer, SendRtp
from sfu.rtp.packet import RTP_HEADER_SIZE
from sfu.rtp.transport_feedback import TransportCcFeedback

if TYPE_CHECKING:
    from sfu.router import Router
    from sfu.transport import Transport

ALLOCATION_INTERVAL = 0.5
"""Seconds between two runs of the subscribe transport's stream allocator."""
UNKNOWN_ESTIMATE = 1_000_000_000
"""Bits/s assumed for a subscriber that sends no bandwidth feedback at all: only its own
preferences limit what it gets."""
MAX_PROBE_PACKETS = 40
"""Probe packets sent at most per tick: about 2 Mbit/s of padding-only packets at the
50 ms tick."""
MAX_PROBE_BURST_SECONDS = 0.05
"""Seconds of probe budget one tick sends at most. Ticks come 50 ms apart or a little
more (they ride on media sends, see :mod:`sfu.worker`); a longer gap is not made up
with a longer burst, which could overflow a shallow queue on the path and take media
with it."""

_TWCC_EXTENSION = struct.Struct("!HHBHB")
_STAMPED_HEADER_SIZE = 12 + _TWCC_EXTENSION.size
"""A consumer packet's header on the wire once stamped: fixed header and extension."""
_EXTENSION_LENGTH = struct.Struct("!H")
_ONE_BYTE_ELEMENT = struct.Struct("!BHx")
_TWO_BYTE_ELEMENT = struct.Struct("!BBH")


def _with_transport_sequence(header: bytes, extension_id: int, sequence: int) -> bytes:
    """``header`` (the fixed header and one extension block: a consumer's dependency
    descriptor) with the transport-wide sequence number as one more element of its
    block, in the block's form: one 32-bit word either way (RFC 8285 allows padding
    between elements)."""
    if header[12:14] == b"\xbe\xde":
        element = _ONE_BYTE_ELEMENT.pack((extension_id << 4) | 1, sequence)
    else:
        element = _TWO_BYTE_ELEMENT.pack(extension_id, 2, sequence)
    words = _EXTENSION_LENGTH.unpack_from(header, 14)[0] + 1
    return b"".join((header[:14], _EXTENSION_LENGTH.pack(words), header[16:], element))


def video_floor(tracks: Sequence[TrackAllocationInput]) -> int:
    """The lowest flowing layer of the most important track: a subscriber always gets
    that much video, however low its estimate (a frozen picture helps nobody; lower
    priority tracks are paused instead)."""
    candidates = [t for t in tracks if not t.paused]
    if not candidates:
        return 0
    top = max(candidates, key=lambda t: t.priority)
    return min((layer.bitrate for layer in top.layers if layer.bitrate > 0), default=0)


class BandwidthController:
    def __init__(self) -> None:
        self.transport: Transport | None = None
        """The subscribe transport (set once it exists)."""
        self.estimator = SendSideBandwidthEstimator()
        self._allocator = StreamAllocator()
        self._transport_cc_id: int | None = None
        """Header extension id of the transport-wide sequence number, once negotiated."""
        self._sequence = 0
        self._has_feedback = False
        self._probe_target = 0
        """Bits/s the last allocation wished it could send (0: it got what it wanted)."""
        self._last_tick = 0.0
        self._next_allocation = 0.0

    @property
    def estimate(self) -> int | None:
        """Bits/s; None until the subscriber has sent transport-cc feedback or a REMB (a
        client without congestion control is not throttled by a guess)."""
        return self.estimator.estimate if self._has_feedback else None

    @property
    def rtt(self) -> float | None:
        """The smoothed round-trip time its receiver reports gave."""
        return self.estimator.rtt

    # --- sending -----------------------------------------------------------------------

    def use_transport_cc(self, extension_id: int) -> None:
        """The subscriber negotiated the transport-wide sequence number with this id."""
        self._transport_cc_id = extension_id

    def sender(self) -> SendRtp:
        """How consumers send once the subscribe transport is up: straight into its
        send batch, unless each packet needs the transport-wide sequence number
        (:meth:`send`). Consumers are re-activated with it at every answer, so a
        renegotiation that adds transport-cc reaches them all."""
        assert self.transport is not None
        if self._transport_cc_id is not None:
            return self.send
        return self.transport.session.rtp_sender

    def send(self, header: bytes, payload: bytes, probe: bool = False) -> None:
        """Send one consumer packet (its 12-byte header and its payload), stamped with
        the transport-wide sequence number when the subscriber negotiated it, and
        recorded for the estimator."""
        assert self.transport is not None
        extension_id = self._transport_cc_id
        if extension_id is None:
            self.transport.session.send_rtp(header, payload)
            return
        sequence = self._sequence = (self._sequence + 1) & 0xFFFF
        if len(header) > RTP_HEADER_SIZE:
            header = _with_transport_sequence(header, extension_id, sequence)
            self.estimator.on_packet_sent(
                sequence, len(header) + len(payload), time.monotonic(), is_padding=probe
            )
            self.transport.session.send_rtp(header, payload)
            return
        extension = _TWCC_EXTENSION.pack(0xBEDE, 1, (extension_id << 4) | 1, sequence, 0)
        self.estimator.on_packet_sent(
            sequence,
            _STAMPED_HEADER_SIZE + len(payload),
            time.monotonic(),
            is_padding=probe,
        )
        self.transport.session.send_rtp(header, payload, extension)

    # --- feedback ----------------------------------------------------------------------

    def on_transport_feedback(self, feedback: TransportCcFeedback, now: float) -> None:
        self.estimator.on_feedback(feedback, now)
        self._has_feedback = True

    def on_remb(self, bitrate: int, now: float) -> None:
        self.estimator.on_remb(bitrate, now)
        self._has_feedback = True

    def on_receiver_report(self, fraction_lost: int, rtt: float | None, now: float) -> None:
        self.estimator.on_receiver_report(fraction_lost, rtt, now)

    # --- periodic work -----------------------------------------------------------------

    def tick(
        self, consumers: Sequence[Consumer], router: Router, speakers: Sequence[str], now: float
    ) -> None:
        """Probe when the last allocation wished for more, and allocate when due."""
        if self._probe_target:
            self._probe(consumers, now, min(now - self._last_tick, MAX_PROBE_BURST_SECONDS))
        self._last_tick = now
        if now >= self._next_allocation:
            self._next_allocation = now + ALLOCATION_INTERVAL
            self._allocate(consumers, router, speakers, now)

    def _allocate(
        self, consumers: Sequence[Consumer], router: Router, speakers: Sequence[str], now: float
    ) -> None:
        """Give each video consumer the layer that fits the subscriber's estimate."""
        video = [
            c for c in consumers if c.kind == "video" and c.active and not c.producer.measuring(now)
        ]
        if not video:
            return
        tracks = []
        for consumer in video:
            producer = consumer.producer
            priority = PRIORITY_SCREEN_SHARE if producer.source == "screen" else PRIORITY_DEFAULT
            if producer.participant_id in speakers:
                priority += PRIORITY_ACTIVE_SPEAKER
            tracks.append(router.allocation_input(consumer, priority, now))
        # Audio is never paused: what it measures comes off the estimate before video.
        audio = 0
        for consumer in consumers:
            if consumer.kind == "audio" and consumer.active:
                forwarding = router.forwarding(consumer)
                if forwarding is not None and forwarding.stream is not None:
                    audio += forwarding.stream.available_bitrate(now)
        estimate = self.estimate
        budget = (
            UNKNOWN_ESTIMATE if estimate is None else max(estimate, video_floor(tracks) + audio)
        )
        allocation = self._allocator.allocate(tracks, budget, now, audio_bitrate=audio)
        for consumer in video:
            router.set_target_layer(consumer, allocation.targets.get(consumer.id))
            consumer.set_target_temporal_layer(allocation.temporal_targets.get(consumer.id))
        self._probe_target = 0
        if estimate is not None and allocation.deficient:
            wanted = sum(
                max((layer.bitrate for layer in track.layers), default=0)
                for track in tracks
                if track.consumer_id in allocation.deficient
            )
            self._probe_target = allocation.total + wanted

    def _probe(self, consumers: Sequence[Consumer], now: float, elapsed: float) -> None:
        """Top the media up with padding-only packets while the estimator probes whether
        the allocation's wish fits.

        Padding, never RTX copies of forwarded media (libwebrtc's "payload padding"),
        even to a subscriber that negotiated rtx: with copies, Chromium subscribers
        behind a 300 kbit/s link took 2.8 s instead of 1.0-1.6 s to drop a layer and
        7.7-9.3 s instead of 3.4-4.1 s to climb back once the limit was lifted
        (tests/test_simulcast_browser.py); padding is what LiveKit probes with too."""
        rate = self.estimator.wants_probe(now, self._probe_target)
        if rate <= 0:
            return
        budget = int(rate * elapsed)
        for consumer in consumers:
            count = min(MAX_PROBE_PACKETS, budget // (PADDING_SIZE + 12))
            packets = consumer.padding_packets(count)
            if packets:
                for header, payload in packets:
                    self.send(header, payload, probe=True)
                return
