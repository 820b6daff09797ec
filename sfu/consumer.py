"""A Consumer: one producer's media forwarded to one subscriber.

The consumer owns what makes the forwarded stream look like one continuous RTP
stream to the subscriber, whatever simulcast layer it comes from: its own SSRC,
sequence numbers and timestamps kept continuous across layer switches by an
:class:`RtpMunger`, VP8 picture ids kept continuous by a :class:`Vp8Munger`, the
payload type the subscriber negotiated, a retransmission cache for the subscriber's
NACKs, and the counts its sender reports carry.

Layer switches (mediasoup's SimulcastConsumer, LiveKit's Forwarder): the allocator
sets a target layer; the producer hands the consumer the target stream's next key
frame (:meth:`start_layer`) and only then does the consumer leave its current layer,
so the subscriber's decoder never sees a frame it cannot decode.
"""

from __future__ import annotations

import secrets
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sfu.allocator import LayerInfo, TrackAllocationInput
from sfu.producer import TEMPORAL_LAYERS
from sfu.rtp.rtcp import SenderReport, ntp_from_unix
from sfu.rtp.vp8 import is_vp8_frame_start, is_vp8_keyframe, vp8_layer_sync
from sfu.rtp_munger import RtpMunger
from sfu.vp8_munger import Vp8Munger

if TYPE_CHECKING:
    from sfu.producer import Producer, RtpStream

ALL_TEMPORAL_LAYERS = TEMPORAL_LAYERS - 1
"""The temporal limit that forwards every temporal layer."""
RETRANSMISSION_CACHE_SIZE = 1024
"""Packets kept per consumer for NACKs (about 1 s of 3 Mbit/s video); a power of two."""

_HEADER = struct.Struct("!BBHII")
_SEQ = struct.Struct("!H")
_TIMESTAMP = struct.Struct("!I")
_SEQ_MASK = RETRANSMISSION_CACHE_SIZE - 1
PADDING_SIZE = 255
"""Bytes of one padding-only probe packet's payload (the most the count byte allows)."""
_PADDING = bytes(PADDING_SIZE - 1) + bytes((PADDING_SIZE,))

SendRtp = Callable[[bytes, bytes], None]
"""Sends one RTP packet given as its header and its payload."""


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
        self.clock_rate = producer.clock_rate
        self.active = False
        """The subscriber accepted the m-line and its transport is connected."""
        self.needs_key_frame = True
        """Nothing is forwarded until the producer hands over a switch point (a key
        frame for video, any packet for audio) through :meth:`start_layer`."""
        self.paused = False
        self.max_spatial_layer: int | None = None
        self.max_width: int | None = None
        self.max_height: int | None = None
        self.target_layer: int | None = None
        """The layer the allocator chose (None: not forwarding)."""
        self._temporal_target = ALL_TEMPORAL_LAYERS
        """The highest VP8 temporal layer the allocator wants forwarded."""
        self._temporal_limit = ALL_TEMPORAL_LAYERS
        """The highest temporal layer forwarded now (follows the target at frame starts)."""
        self.packets_dropped_temporal = 0
        self.current_stream: RtpStream | None = None
        self.layer_switches = 0
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
        self._munger = RtpMunger(secrets.randbits(16), secrets.randbits(32))
        self._rtx_sequence = secrets.randbits(16)
        self._vp8 = Vp8Munger() if producer.codec.name.lower() == "vp8" else None
        self._at_frame_boundary = False
        self._cache: list[tuple[bytes, bytes] | None] = [None] * RETRANSMISSION_CACHE_SIZE
        """Sent packets as (header, payload): the payload object is the one the
        producer received (shared by its consumers) unless the VP8 munger rewrote it."""

    @property
    def current_layer(self) -> int | None:
        stream = self.current_stream
        return None if stream is None or self.needs_key_frame else stream.layer

    def set_preferences(
        self,
        paused: bool,
        max_spatial_layer: int | None,
        max_width: int | None,
        max_height: int | None,
    ) -> None:
        """The subscriber's wishes; the allocator applies them at its next run."""
        self.paused = paused
        self.max_spatial_layer = max_spatial_layer
        self.max_width = max_width
        self.max_height = max_height

    def allocation_input(self, priority: int, now: float) -> TrackAllocationInput:
        """What the allocator and dynacast need to know about this consumer."""
        layers = [
            LayerInfo(
                spatial=index,
                bitrate=stream.available_bitrate(now) if stream is not None else 0,
                width=stream.width if stream is not None else 0,
                height=stream.height if stream is not None else 0,
                temporal_bitrates=stream.temporal_bitrates if stream is not None else (),
            )
            for index, stream in enumerate(self.producer.layers)
        ]
        return TrackAllocationInput(
            track_id=self.id,
            layers=layers,
            priority=priority,
            paused=self.paused,
            max_spatial_layer=self.max_spatial_layer,
            max_width=self.max_width,
            max_height=self.max_height,
            current_layer=self.current_layer,
            current_temporal_layer=self.current_temporal_layer,
        )

    def activate(
        self,
        payload_type: int,
        rtx_payload_type: int | None = None,
        send_rtp: SendRtp | None = None,
    ) -> None:
        """The subscriber accepted this consumer's m-line with ``payload_type`` (and
        ``rtx_payload_type`` for retransmissions, when it negotiated rtx) and its
        transport is up: start forwarding (video from the next key frame), through
        ``send_rtp`` when given (the transport's current send path)."""
        if send_rtp is not None:
            self._send_rtp = send_rtp
        self.payload_type = payload_type
        self.rtx_payload_type = rtx_payload_type if self.rtx_ssrc is not None else None
        if not self.active:
            self.active = True
            self.restart()

    def deactivate(self) -> None:
        self.active = False

    def restart(self) -> None:
        """Start over from the next key frame (audio: the next packet) of the target
        layer: a new subscriber, or a publisher that restarted a stream."""
        self.needs_key_frame = True
        self.set_target_layer(
            self.target_layer if self.target_layer is not None else len(self.producer.rids)
        )

    @property
    def current_temporal_layer(self) -> int | None:
        """The highest temporal layer forwarded now; None: all of them."""
        limit = self._temporal_limit
        return None if limit == ALL_TEMPORAL_LAYERS else limit

    def set_target_temporal_layer(self, layer: int | None) -> None:
        """Forward temporal layers up to ``layer`` (None: all), from the next frame
        start that allows it (see :meth:`forward`)."""
        self._temporal_target = ALL_TEMPORAL_LAYERS if layer is None else layer

    def set_target_layer(self, layer: int | None) -> None:
        """Forward ``layer`` from its next key frame on; None stops forwarding."""
        if layer is None:
            if self.target_layer is not None or self.current_stream is not None:
                self.target_layer = None
                self.producer.detach(self)
                self.current_stream = None
                self.needs_key_frame = True
            return
        self.target_layer = layer
        stream = self.producer.stream_for_layer(layer)
        if stream is None:
            return
        if stream is self.current_stream and not self.needs_key_frame:
            return
        self.producer.request_layer(self, layer)

    def start_layer(self, stream: RtpStream, seq: int, ts: int, payload: bytes, now: float) -> None:
        """Called by the producer with the key frame of the layer to switch to."""
        if self.current_stream is not None and self.current_stream is not stream:
            self.layer_switches += 1
        self.current_stream = stream
        self.needs_key_frame = False
        self._munger.switch(seq, ts, now, self.clock_rate)
        if self._vp8 is not None:
            self._vp8.switch(payload)

    def forward(
        self,
        stream: RtpStream,
        marker_bit: int,
        seq: int,
        ts: int,
        payload: bytes,
        tid: int,
        now: float,
    ) -> None:
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
        if not self.active or self.paused or self.needs_key_frame:
            return
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
        out_seq, out_ts = translated
        if self._vp8 is not None:
            payload = self._vp8.rewrite(payload)
        header = _HEADER.pack(0x80, marker_bit | self.payload_type, out_seq, out_ts, self.ssrc)
        self._cache[out_seq & _SEQ_MASK] = (header, payload)
        self._at_frame_boundary = marker_bit != 0
        self.packets_sent += 1
        self.octets_sent += len(payload)
        if self.first_forwarded_at is None:
            self.first_forwarded_at = time.monotonic()
        self._send_rtp(header, payload)

    def request_key_frame(self) -> None:
        """The subscriber lost its picture (PLI, FIR): ask the publisher for a key frame
        of the stream this consumer forwards, or of the one it waits to start on, not of
        every layer."""
        if not self.needs_key_frame:
            stream = self.current_stream
        elif self.target_layer is not None:
            stream = self.producer.stream_for_layer(self.target_layer)
        else:
            return
        if stream is not None:
            self.producer.request_key_frame(stream)

    def probe_packets(self, count: int) -> list[tuple[bytes, bytes]]:
        """Up to ``count`` packets (header, payload) that only probe the subscriber's
        bandwidth.

        With rtx negotiated: copies of the most recently forwarded packets on the RTX
        stream (libwebrtc's payload padding): full-sized, anywhere between frames, and
        dropped by the subscriber as duplicates. Otherwise padding-only packets
        (:meth:`padding_packets`).
        """
        if self.rtx_payload_type is None or not self.active or self.paused or self.needs_key_frame:
            return self.padding_packets(count)
        newest = self._munger.last_sequence_number
        probes = []
        for back in range(min(count, RETRANSMISSION_CACHE_SIZE)):
            seq = (newest - back) & 0xFFFF
            packet = self._cached(seq)
            if packet is None:
                break
            probes.append(self._rtx_packet(packet, seq))
        return probes

    def retransmit(self, lost: list[int]) -> int:
        """Answer a NACK from the subscriber out of the cache; returns packets resent.

        With rtx negotiated each packet goes out on the RTX stream (RFC 4588 section 4:
        the RTX payload type, SSRC and sequence number, the original sequence number
        before the original payload); otherwise the same packet is sent again.
        """
        self.nacks_received += 1
        sent = 0
        rtx_payload_type = self.rtx_payload_type
        for seq in lost:
            packet = self._cached(seq)
            if packet is None:
                continue
            if rtx_payload_type is not None:
                packet = self._rtx_packet(packet, seq)
            self._send_rtp(*packet)
            sent += 1
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
        section 4): the RTX header, then the original sequence number and payload."""
        assert self.rtx_payload_type is not None and self.rtx_ssrc is not None
        header, payload = packet
        self._rtx_sequence = (self._rtx_sequence + 1) & 0xFFFF
        rtx_header = _HEADER.pack(
            0x80,
            (header[1] & 0x80) | self.rtx_payload_type,
            self._rtx_sequence,
            _TIMESTAMP.unpack_from(header, 4)[0],
            self.rtx_ssrc,
        )
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
        if (
            self.kind != "video"
            or not self.active
            or self.paused
            or self.needs_key_frame
            or not self._at_frame_boundary
        ):
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

    def sender_report(self, now: float) -> SenderReport | None:
        """An SR translated from the publisher's SR of the current layer (lip sync
        survives), or from the wall clock before the publisher sent one."""
        stream = self.current_stream
        if stream is None or self.packets_sent == 0:
            return None
        mapping = self.producer.timestamp_mapping(stream)
        if mapping is not None:
            ntp_timestamp, rtp_timestamp, arrival = mapping
            elapsed = now - arrival
            # The publisher's RTP time now, moved into this consumer's timestamp space.
            rtp = rtp_timestamp + int(elapsed * self.clock_rate) + self._munger.timestamp_offset
            ntp = ntp_timestamp + int(elapsed * (1 << 32))
        else:
            rtp = self._munger.last_timestamp
            ntp = ntp_from_unix(now)
        return SenderReport(
            ssrc=self.ssrc,
            ntp_timestamp=ntp & 0xFFFFFFFFFFFFFFFF,
            rtp_timestamp=rtp & 0xFFFFFFFF,
            packet_count=self.packets_sent & 0xFFFFFFFF,
            octet_count=self.octets_sent & 0xFFFFFFFF,
            reports=[],
        )
