"""A Consumer: one producer's media forwarded to one subscriber.

The consumer owns what makes the forwarded stream look like one continuous RTP
stream to the subscriber, whatever simulcast layer it comes from: its own SSRC,
sequence numbers and timestamps kept continuous across layer switches by an
:class:`RtpMunger`, VP8 picture ids kept continuous by a :class:`Vp8Munger`, the
payload type the subscriber negotiated, a retransmission cache for the subscriber's
NACKs, and the counts its sender reports carry. An AV1 consumer whose subscriber
negotiated the dependency descriptor also selects decode targets
(:class:`DependencyDescriptorSelector`) and sends the rewritten descriptor.

Which stream it forwards and when it switches layers is decided by its
:class:`~sfu.router.ProducerRoute` (LiveKit's Forwarder; this is its DownTrack): the
route hands it the packets of its stream (:meth:`forward`) and the switch point of a
new one (:meth:`start_layer`). It never calls its producer.
"""

from __future__ import annotations

import secrets
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sfu.dependency_descriptor_selector import DependencyDescriptorSelector
from sfu.producer import TEMPORAL_LAYERS
from sfu.rtp.packet import RTP_HEADER_SIZE
from sfu.rtp.red import parse_red, red_primary_start, rewrite_red_payload_types
from sfu.rtp.rtcp import SenderReport, ntp_from_unix
from sfu.rtp.vp8 import is_vp8_frame_start, is_vp8_keyframe, vp8_layer_sync
from sfu.rtp_munger import RtpMunger
from sfu.vp8_munger import Vp8Munger

if TYPE_CHECKING:
    from sfu.producer import Producer

ALL_TEMPORAL_LAYERS = TEMPORAL_LAYERS - 1
"""The temporal limit that forwards every temporal layer."""
ALL_SPATIAL_LAYERS = 3
"""The spatial limit that forwards every spatial layer a dependency descriptor can name."""
RETRANSMISSION_CACHE_SIZE = 1024
"""Packets kept per consumer for NACKs (about 1 s of 3 Mbit/s video); a power of two."""

_HEADER = struct.Struct("!BBHII")
_EXTENSION_HEADER = struct.Struct("!HH")
_ONE_BYTE_PROFILE = 0xBEDE
_TWO_BYTE_PROFILE = 0x1000
_ONE_BYTE_MAX = 16
_SEQ = struct.Struct("!H")
_TIMESTAMP = struct.Struct("!I")
_SEQ_MASK = RETRANSMISSION_CACHE_SIZE - 1
RETRANSMIT_RATE = 250_000
"""Bytes per second a consumer may resend for NACKs (2 Mbit/s: 10 % loss of a 20 Mbit/s
stream). A NACK names up to 17 packets in 4 bytes, so without a bound one 1,200-byte
RTCP packet could make the SFU resend 5,000 packets (5.5 MB)."""
RETRANSMIT_BURST = 100_000
"""Bytes a consumer may resend at once after a quiet spell (a lost key frame)."""
PADDING_SIZE = 255
"""Bytes of one padding-only probe packet's payload (the most the count byte allows)."""
_PADDING = bytes(PADDING_SIZE - 1) + bytes((PADDING_SIZE,))
_REPORTS_REMEMBERED = 4
"""Sender reports whose send time a consumer keeps for round-trip times (one every
second: a receiver report quotes one of the last few)."""
_MAX_RTT = 60.0

SendRtp = Callable[[bytes, bytes], None]
"""Sends one RTP packet given as its header and its payload."""


def _no_key_frame_request() -> None:
    return None


def _extension_block(extension_id: int, value: bytes) -> bytes:
    """An RFC 8285 header extension block holding one element: the one-byte form when
    it fits (id 1..14, 1..16 bytes), else the two-byte form (a descriptor with its
    structure is often longer; subscribe offers carry ``a=extmap-allow-mixed``)."""
    size = len(value)
    if extension_id <= 14 and 0 < size <= _ONE_BYTE_MAX:
        element = bytes(((extension_id << 4) | (size - 1),)) + value
        profile = _ONE_BYTE_PROFILE
    else:
        element = bytes((extension_id, size)) + value
        profile = _TWO_BYTE_PROFILE
    padding = -len(element) % 4
    return _EXTENSION_HEADER.pack(profile, (len(element) + padding) // 4) + element + bytes(padding)


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
        self.rtx_ssrc = (secrets.randbits(32) or 1) if self.kind == "video" else None
        """The SSRC of this consumer's RTX stream (RFC 4588), offered to the subscriber
        in an ``a=ssrc-group:FID``; used when it negotiated rtx."""
        self.payload_type = 0
        self.rtx_payload_type: int | None = None
        self._red_unwrap = False
        """The producer sends RED (RFC 2198) and the subscriber did not negotiate it:
        it gets the primary blocks, and a lost packet's frame from the next packet's
        redundant block (:meth:`_red_payload`)."""
        self._red_block_payload_type: int | None = None
        """The subscriber negotiated RED with another number for the primary codec
        than the publisher's: block headers are rewritten to it."""
        self._red_rewrite = False
        """Either of the two above: :meth:`forward` rewrites RED payloads (one test on
        the hot path)."""
        self._red_last_seq: int | None = None
        """The newest source sequence number forwarded of a RED stream unwrapped."""
        self._red_refilled: list[int] = []
        """Source sequence numbers the latest refill sent from redundancy: the
        originals, arriving late, are not sent again."""
        self.red_malformed = 0
        """RED payloads dropped as malformed."""
        self.red_recovered = 0
        """Lost packets replaced by a later packet's redundant block."""
        self.clock_rate = producer.clock_rate
        self.active = False
        """The subscriber accepted the m-line and its transport is connected."""
        self.paused = False
        self.max_spatial_layer: int | None = None
        self.max_temporal_layer: int | None = None
        self.max_width: int | None = None
        self.max_height: int | None = None
        self._temporal_target = ALL_TEMPORAL_LAYERS
        """The highest VP8 temporal layer the allocator wants forwarded."""
        self._temporal_limit = ALL_TEMPORAL_LAYERS
        """The highest temporal layer forwarded now (follows the target at frame starts)."""
        self.packets_dropped_temporal = 0
        self.layer_switches = 0
        self.packets_sent = 0
        self.octets_sent = 0
        self.retransmissions = 0
        self.retransmissions_over_budget = 0
        """NACKed packets not resent because :data:`RETRANSMIT_RATE` was used up."""
        self.nacks_received = 0
        self.plis_received = 0
        self.firs_received = 0
        self.created_at = time.monotonic()
        self.first_forwarded_at: float | None = None
        """Monotonic time of the first forwarded packet (join latency metric)."""
        self.rtt: float | None = None
        """Round-trip time to the subscriber, from its last receiver report."""
        self.fraction_lost = 0
        self._reports_sent: dict[int, float] = {}
        """Compact NTP time of each recent SR -> monotonic time it was made."""
        self._send_rtp = send_rtp
        self._munger = RtpMunger(secrets.randbits(16), secrets.randbits(32))
        self._rtx_sequence = secrets.randbits(16)
        self._vp8 = Vp8Munger() if producer.codec.name.lower() == "vp8" else None
        self._at_frame_boundary = False
        self._descriptor_selector: DependencyDescriptorSelector | None = None
        """Decode-target selection, for an AV1 consumer whose subscriber negotiated the
        dependency descriptor (:meth:`use_dependency_descriptor`)."""
        self._descriptor_id = 0
        self.request_key_frame: Callable[[], None] = _no_key_frame_request
        """Asks the publisher for a key frame of what this consumer forwards (its route
        sets it): the selector wants one to reach its target."""
        self._cache: list[tuple[bytes, bytes] | None] = [None] * RETRANSMISSION_CACHE_SIZE
        self._retransmit_allowance = float(RETRANSMIT_BURST)
        self._retransmit_time = 0.0
        """Sent packets as (header, payload): the payload object is the one the
        producer received (shared by its consumers) unless the VP8 munger rewrote it."""

    def set_preferences(
        self,
        paused: bool,
        max_spatial_layer: int | None,
        max_width: int | None,
        max_height: int | None,
        max_temporal_layer: int | None = None,
    ) -> None:
        """The subscriber's wishes; the allocator applies them at its next run (the
        temporal cap and, for a dependency-descriptor stream, the spatial one at once)."""
        self.paused = paused
        self.max_spatial_layer = max_spatial_layer
        self.max_width = max_width
        self.max_height = max_height
        self.max_temporal_layer = max_temporal_layer
        self._aim_selector()

    def use_dependency_descriptor(self, extension_id: int | None) -> None:
        """The subscriber negotiated the dependency descriptor with ``extension_id``
        (None: it did not). An AV1 consumer then forwards only the frames of its target
        decode target, with the descriptor rewritten for it (:meth:`_forward_selected`);
        without it, every frame as it comes."""
        if extension_id is None or self.producer.codec.name.lower() != "av1":
            self._descriptor_selector = None
            self.__dict__.pop("forward", None)
            return
        if self._descriptor_selector is None:
            self._descriptor_selector = DependencyDescriptorSelector()
            self._aim_selector()
        self._descriptor_id = extension_id
        # Only these consumers pay for the selection: the others keep the class's forward.
        self.forward = self._forward_selected  # type: ignore[method-assign]

    def _aim_selector(self) -> None:
        selector = self._descriptor_selector
        if selector is None:
            return
        spatial = self.max_spatial_layer
        temporal = self._temporal_target
        if self.max_temporal_layer is not None:
            temporal = min(temporal, self.max_temporal_layer)
        target = (ALL_SPATIAL_LAYERS if spatial is None else spatial, temporal)
        if target != selector.target:
            selector.set_target(*target)

    def activate(
        self,
        payload_type: int,
        rtx_payload_type: int | None = None,
        send_rtp: SendRtp | None = None,
        red_payload_type: int | None = None,
    ) -> bool:
        """The subscriber accepted this consumer's m-line with ``payload_type`` (and
        ``rtx_payload_type`` for retransmissions, when it negotiated rtx, and
        ``red_payload_type`` when it negotiated RED) and its transport is up: forward
        through ``send_rtp`` when given (the transport's current send path). True when
        it was not active before (its route restarts it)."""
        if send_rtp is not None:
            self._send_rtp = send_rtp
        self.payload_type = payload_type
        self.rtx_payload_type = rtx_payload_type if self.rtx_ssrc is not None else None
        red_publisher = self.producer.red_payload_type is not None
        self._red_unwrap = red_publisher and red_payload_type is None
        self._red_block_payload_type = None
        if red_publisher and red_payload_type is not None:
            self.payload_type = red_payload_type
            if payload_type != self.producer.codec.payload_type:
                self._red_block_payload_type = payload_type
        self._red_rewrite = self._red_unwrap or self._red_block_payload_type is not None
        started = not self.active
        self.active = True
        return started

    def deactivate(self) -> None:
        self.active = False

    @property
    def current_temporal_layer(self) -> int | None:
        """The highest temporal layer forwarded now; None: all of them."""
        limit = self._temporal_limit
        return None if limit == ALL_TEMPORAL_LAYERS else limit

    def set_target_temporal_layer(self, layer: int | None) -> None:
        """Forward temporal layers up to ``layer`` (None: all), from the next frame
        start that allows it (see :meth:`forward`)."""
        self._temporal_target = ALL_TEMPORAL_LAYERS if layer is None else layer
        self._aim_selector()

    def start_layer(self, seq: int, ts: int, payload: bytes, now: float, switched: bool) -> None:
        """The route starts this consumer on a stream at its packet (``seq``, ``ts``,
        ``payload``: a key frame's first for video); ``switched``: it leaves another
        stream for it (a layer switch)."""
        if switched:
            self.layer_switches += 1
        self._red_last_seq = None
        self._red_refilled = []
        self._munger.switch(seq, ts, now, self.clock_rate)
        if self._vp8 is not None:
            self._vp8.switch(payload)

    def forward(self, marker_bit: int, seq: int, ts: int, payload: bytes, tid: int) -> None:
        """Rewrite one packet of the current stream and send it.

        ``marker_bit`` is 0x80 or 0; ``payload`` starts after the publisher's header
        (its header extensions are not forwarded; the subscribe transport adds its
        own transport-wide sequence number). ``tid`` is the packet's VP8 temporal
        layer (-1: none): packets above the consumer's temporal limit are dropped
        without leaving gaps in the sequence numbers or picture ids. The limit moves
        at frame starts: down at any; up one layer at a time, at a frame of that layer
        with the layer-sync bit (it refers only to base-layer frames, which the
        subscriber has), or at once at a key frame or in a stream without temporal
        layers (RFC 7741 section 4.2).
        """
        if not self.active or self.paused:
            return
        if self._red_rewrite:
            red_payload = self._red_payload(seq, ts, payload)
            if red_payload is None:
                return
            payload = red_payload
        limit = self._temporal_limit
        target = self._temporal_target
        if target != limit and is_vp8_frame_start(payload):
            if target < limit or tid < 0 or is_vp8_keyframe(payload):
                self._temporal_limit = limit = target
            elif limit < tid <= target and vp8_layer_sync(payload):
                self._temporal_limit = limit = tid
        if tid > limit:
            self._munger.drop(seq)
            if self._vp8 is not None:
                self._vp8.drop(payload)
            self.packets_dropped_temporal += 1
            return
        translated = self._munger.translate(seq, ts)
        if translated is None:
            return
        if self._vp8 is not None:
            payload = self._vp8.rewrite(payload)
        self._send_forwarded(marker_bit, translated[0], translated[1], payload)

    def _send_forwarded(
        self, marker_bit: int, out_seq: int, out_ts: int, payload: bytes, extensions: bytes = b""
    ) -> None:
        """Send a forwarded packet with its outgoing numbers (and ``extensions``, a
        header extension block, RFC 8285) and keep it for NACKs."""
        first = 0x90 if extensions else 0x80
        header = _HEADER.pack(first, marker_bit | self.payload_type, out_seq, out_ts, self.ssrc)
        header += extensions
        self._cache[out_seq & _SEQ_MASK] = (header, payload)
        self._at_frame_boundary = marker_bit != 0
        self.packets_sent += 1
        self.octets_sent += len(payload)
        if self.first_forwarded_at is None:
            self.first_forwarded_at = time.monotonic()
        self._send_rtp(header, payload)

    def _red_payload(self, seq: int, ts: int, payload: bytes) -> bytes | None:
        """What to send of the RED payload of source packet ``seq``: the primary block
        (after sending the frames of the packets just lost from its redundant blocks)
        when the subscriber did not negotiate RED, else the payload with the
        subscriber's block payload type; None for a malformed payload, dropped and
        counted without leaving a gap in the sequence numbers, and for the late
        original of a packet already sent from redundancy. Only a gap costs a full
        parse; otherwise the primary block is found by its headers' lengths."""
        if not self._red_unwrap:
            parsed = parse_red(payload)
            if parsed is None:
                self.red_malformed += 1
                self._munger.drop(seq)
                return None
            assert self._red_block_payload_type is not None
            return rewrite_red_payload_types(payload, parsed, self._red_block_payload_type)
        start = red_primary_start(payload)
        if start < 0:
            self.red_malformed += 1
            self._munger.drop(seq)
            return None
        last = self._red_last_seq
        if last is not None:
            ahead = (seq - last) & 0xFFFF
            if ahead >= 0x8000:
                # Reordered: older than what was forwarded; its redundancy is stale,
                # and its frame went out already if a refill sent it.
                return None if seq in self._red_refilled else payload[start:]
            if ahead > 1:
                self._refill(seq, ts, payload, ahead - 1)
        self._red_last_seq = seq
        return payload[start:]

    def _refill(self, seq: int, ts: int, payload: bytes, missing: int) -> None:
        """The ``missing`` packets before source packet ``seq`` were lost: send their
        frames from its redundant blocks, if it carries that many (packet ``seq - k``
        is the frame of the k-th redundant block from the end)."""
        parsed = parse_red(payload)
        if parsed is None or missing > len(parsed.redundant):
            return
        redundant = parsed.redundant
        self._red_refilled = [(seq - k) & 0xFFFF for k in range(missing, 0, -1)]
        for k in range(missing, 0, -1):
            block = redundant[-k]
            if block.end > block.start and block.timestamp_offset:
                self._send_recovered(
                    (seq - k) & 0xFFFF,
                    (ts - block.timestamp_offset) & 0xFFFFFFFF,
                    payload[block.start : block.end],
                )

    def _send_recovered(self, seq: int, ts: int, payload: bytes) -> None:
        """Send the frame of lost source packet ``seq`` (from a redundant block)."""
        translated = self._munger.translate(seq, ts)
        if translated is None:
            return
        out_seq, out_ts = translated
        header = _HEADER.pack(0x80, self.payload_type, out_seq, out_ts, self.ssrc)
        self._cache[out_seq & _SEQ_MASK] = (header, payload)
        self.packets_sent += 1
        self.octets_sent += len(payload)
        self.red_recovered += 1
        self._send_rtp(header, payload)

    def _forward_selected(
        self, marker_bit: int, seq: int, ts: int, payload: bytes, tid: int
    ) -> None:
        """:meth:`forward` for a consumer with a :class:`DependencyDescriptorSelector`:
        the producer's descriptor of this packet decides whether it goes (a dropped one
        leaves no gap in the sequence numbers), and the descriptor the selector gives
        goes with it as a header extension. A packet without a descriptor is forwarded
        as :meth:`forward` would while none came (a publisher that sends none), and
        dropped once they come: nothing says which decode target it belongs to."""
        if not self.active or self.paused:
            return
        selector = self._descriptor_selector
        assert selector is not None
        received = self.producer.dependency_descriptor
        if received is None:
            if selector.frames_forwarded or selector.frames_dropped:
                self._munger.drop(seq)
                self.packets_dropped_temporal += 1
            else:
                Consumer.forward(self, marker_bit, seq, ts, payload, tid)
            return
        selection = selector.select(
            received.descriptor, received.structure, received.value, marker_bit != 0
        )
        if selection is None:
            self._munger.drop(seq)
            self.packets_dropped_temporal += 1
            if selector.needs_key_frame:
                self.request_key_frame()
            return
        translated = self._munger.translate(seq, ts)
        if translated is None:
            return
        extensions = _extension_block(self._descriptor_id, selection.descriptor)
        marker_bit = 0x80 if selection.marker else 0
        self._send_forwarded(marker_bit, translated[0], translated[1], payload, extensions)

    def stop(self) -> None:
        """The route took this consumer off its stream: no padding probes until it
        forwards again (they go only at a frame boundary of what it forwards)."""
        self._at_frame_boundary = False

    def skip(self, seq: int) -> None:
        """The source packet ``seq`` of the current stream carries nothing to forward
        (padding only): later packets are numbered as if it had never been sent, so the
        subscriber sees no gap to NACK."""
        if self.active and not self.paused:
            self._munger.drop(seq)

    def retransmit(self, lost: list[int], now: float) -> int:
        """Answer a NACK from the subscriber out of the cache; returns packets resent.

        With rtx negotiated each packet goes out on the RTX stream (RFC 4588 section 4:
        the RTX payload type, SSRC and sequence number, the original sequence number
        before the original payload); otherwise the same packet is sent again. At most
        :data:`RETRANSMIT_RATE` bytes per second (``now`` in seconds) are resent, in
        bursts of up to :data:`RETRANSMIT_BURST`; the rest is counted and dropped.
        """
        self.nacks_received += 1
        allowance = min(
            self._retransmit_allowance + (now - self._retransmit_time) * RETRANSMIT_RATE,
            RETRANSMIT_BURST,
        )
        self._retransmit_time = now
        sent = 0
        rtx_payload_type = self.rtx_payload_type
        for index, seq in enumerate(lost):
            if allowance <= 0:
                self.retransmissions_over_budget += len(lost) - index
                break
            packet = self._cached(seq)
            if packet is None:
                continue
            if rtx_payload_type is not None:
                packet = self._rtx_packet(packet, seq)
            self._send_rtp(*packet)
            allowance -= len(packet[0]) + len(packet[1])
            sent += 1
        self._retransmit_allowance = allowance
        self.retransmissions += sent
        return sent

    def _cached(self, seq: int) -> tuple[bytes, bytes] | None:
        """(header, payload) of the sent packet ``seq``, if the cache still has it."""
        packet = self._cache[seq & _SEQ_MASK]
        if packet is None or _SEQ.unpack_from(packet[0], 2)[0] != seq:
            return None
        return packet

    def _rtx_packet(self, packet: tuple[bytes, bytes], seq: int) -> tuple[bytes, bytes]:
        """``packet`` (sequence number ``seq``) wrapped for the RTX stream (RFC 4588
        section 4): the RTX header (with the original's header extension, such as its
        dependency descriptor), then the original sequence number and payload."""
        assert self.rtx_payload_type is not None and self.rtx_ssrc is not None
        header, payload = packet
        self._rtx_sequence = (self._rtx_sequence + 1) & 0xFFFF
        rtx_header = _HEADER.pack(
            header[0],
            (header[1] & 0x80) | self.rtx_payload_type,
            self._rtx_sequence,
            _TIMESTAMP.unpack_from(header, 4)[0],
            self.rtx_ssrc,
        )
        if len(header) > RTP_HEADER_SIZE:
            rtx_header += header[RTP_HEADER_SIZE:]
        return rtx_header, _SEQ.pack(seq) + payload

    def padding_packets(self, count: int) -> list[tuple[bytes, bytes]]:
        """``count`` padding-only RTP packets (header, payload) (RFC 3550 section 5.1, P bit) for
        bandwidth probing, numbered right after the last forwarded packet.

        Only at a frame boundary (the last forwarded packet had the marker bit), so no
        frame is split; later media packets are numbered after them. Empty when the
        consumer is not forwarding video. Padding cannot be a copy of sent media: the
        subscriber's SRTP replay check would drop duplicates before its congestion
        controller saw them.
        """
        if self.kind != "video" or not self.active or self.paused or not self._at_frame_boundary:
            return []
        reserved = self._munger.reserve(count)
        if reserved is None:
            return []
        first, timestamp = reserved
        return [
            (
                _HEADER.pack(0xA0, self.payload_type, (first + i) & 0xFFFF, timestamp, self.ssrc),
                _PADDING,
            )
            for i in range(count)
        ]

    def sender_report(
        self, now: float, wall: float, mapping: tuple[int, int, float] | None
    ) -> SenderReport | None:
        """An SR translated from ``mapping``, the (NTP, RTP timestamp, arrival) of the
        publisher's latest SR of the stream this consumer forwards (lip sync survives),
        or from the wall clock ``wall`` before the publisher sent one; None before
        anything was sent.

        ``now`` is the monotonic clock; the SR's compact NTP time is remembered with it,
        so that a receiver report quoting it gives the round-trip time on the monotonic
        clock, whatever the publisher's or this machine's wall clock does
        (:meth:`on_report_block`)."""
        if self.packets_sent == 0:
            return None
        if mapping is not None:
            ntp_timestamp, rtp_timestamp, arrival = mapping
            elapsed = now - arrival
            # The publisher's RTP time now, moved into this consumer's timestamp space.
            rtp = rtp_timestamp + int(elapsed * self.clock_rate) + self._munger.timestamp_offset
            ntp = ntp_timestamp + int(elapsed * (1 << 32))
        else:
            rtp = self._munger.last_timestamp
            ntp = ntp_from_unix(wall)
        reports_sent = self._reports_sent
        reports_sent[(ntp >> 16) & 0xFFFFFFFF] = now
        while len(reports_sent) > _REPORTS_REMEMBERED:
            del reports_sent[next(iter(reports_sent))]
        return SenderReport(
            ssrc=self.ssrc,
            ntp_timestamp=ntp & 0xFFFFFFFFFFFFFFFF,
            rtp_timestamp=rtp & 0xFFFFFFFF,
            packet_count=self.packets_sent & 0xFFFFFFFF,
            octet_count=self.octets_sent & 0xFFFFFFFF,
            reports=[],
        )

    def on_report_block(self, lsr: int, dlsr: int, now: float) -> None:
        """A receiver report about this consumer's stream quoting the SR with compact
        NTP time ``lsr``, ``dlsr`` (1/65536 s) after it arrived (RFC 3550 section
        6.4.1): the round-trip time is what the monotonic clock says passed since that
        SR was made, minus the receiver's delay. An SR this consumer no longer
        remembers, or an absurd result, leaves :attr:`rtt` as it was."""
        sent = self._reports_sent.get(lsr) if lsr else None
        if sent is None:
            return
        rtt = now - sent - dlsr / 65536
        if 0 <= rtt < _MAX_RTT:
            self.rtt = rtt
