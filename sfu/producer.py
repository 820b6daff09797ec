"""A Producer: one track a participant publishes, and the RTP streams that carry it.

A plain track has one stream; a simulcast track has one per RID, each a spatial
layer (0 = lowest). Each stream keeps receive statistics (for receiver reports), its
latest sender report (for the consumers' translated sender reports), a NACK
generator, a bitrate meter and the resolution read from its key frames. What a
producer receives it hands to its listener (the room's
:class:`~sfu.router.ProducerRoute`, which fans it out to consumers): the producer knows
no consumer. Key-frame requests reach the publisher through a
:class:`KeyFrameRequestManager` per stream.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from sfu.keyframe_request_manager import KeyFrameRequestManager
from sfu.nack_generator import NackGenerator
from sfu.rtp.av1 import is_av1_keyframe
from sfu.rtp.dependency_descriptor import (
    DependencyDescriptor,
    DependencyDescriptorError,
    FrameDependencyStructure,
    parse_dependency_descriptor,
)
from sfu.rtp.h264 import h264_key_frame_size, is_h264_keyframe
from sfu.rtp.packet import RTP_HEADER_SIZE, RTP_PADDING_BIT
from sfu.rtp.receive_statistics import ReceiveStatistics
from sfu.rtp.red import red_primary_only
from sfu.rtp.vp8 import is_vp8_keyframe, vp8_temporal_id
from sfu.rtp.vp9 import (
    LAYER_INDICES,
    LAYER_SID,
    LAYER_SID_SHIFT,
    LAYER_TID,
    is_vp9_keyframe,
    vp9_layers,
    vp9_spatial_sizes,
)
from sfu.sdp import Codec

TEMPORAL_LAYERS = 4
"""Temporal layer indexes a VP8 descriptor can carry (its TID field has two bits)."""
SPATIAL_LAYERS = 8
"""Spatial layer indexes a VP9 descriptor can carry (its SID field has three bits);
VP9 temporal indexes above :data:`TEMPORAL_LAYERS` are metered with the highest."""
BITRATE_WINDOW = 1.0
"""Seconds over which a stream's bitrate is measured for the allocator."""
KNOWN_RID_ORDER = {"q": 0, "h": 1, "f": 2, "l": 0, "m": 1, "0": 0, "1": 1, "2": 2}
"""Common RID names (Chrome's and LiveKit's) in spatial order; others keep their order
in ``a=simulcast``."""
VP8_START_CODE = b"\x9d\x01\x2a"
RTX_OSN_SIZE = 2
"""Bytes of the original sequence number in front of an RTX payload (RFC 4588 §4)."""

_SEQ_TS = struct.Struct("!HI")
_HEADER = struct.Struct("!BBHII")
_VP8_SIZE = struct.Struct("<HH")


class RtpObserver(Protocol):
    """Something that sees every packet of a producer besides its consumers (a
    recorder, :mod:`sfu.recording`)."""

    max_layer: int
    """The highest layer it needs: dynacast keeps the layers up to it on."""

    def receive_rtp(self, stream: RtpStream, data: bytes, payload_start: int, now: float) -> None:
        """One packet of ``stream``, padding removed (a padding-only packet has nothing
        after ``payload_start``)."""
        ...


SendKeyFrameRequest = Callable[[int], None]
"""Sends a PLI for the given publisher SSRC."""
SendNack = Callable[[int, list[int]], None]
"""Sends a generic NACK for (publisher SSRC, lost sequence numbers)."""


def _key_frame_detector(codec: Codec) -> Callable[[bytes], bool]:
    name = codec.name.lower()
    if name == "vp8":
        return is_vp8_keyframe
    if name == "h264":
        return is_h264_keyframe
    if name == "av1":
        return is_av1_keyframe
    if name == "vp9":
        return is_vp9_keyframe
    return lambda payload: False


def _no_size(payload: bytes) -> None:
    return None


def _key_frame_size_reader(codec: Codec) -> Callable[[bytes], tuple[int, int] | None]:
    """How to read the picture size from a key frame's packet: it tells the allocator
    which layer fits the size a subscriber renders."""
    name = codec.name.lower()
    if name == "vp8":
        return vp8_key_frame_size
    if name == "h264":
        return h264_key_frame_size
    return _no_size


def vp8_key_frame_size(payload: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 key frame's first packet (RFC 6386 section 9.1)."""
    index = payload.find(VP8_START_CODE, 0, 32)
    if index < 0 or len(payload) < index + 7:
        return None
    width, height = _VP8_SIZE.unpack_from(payload, index + 3)
    return width & 0x3FFF, height & 0x3FFF


@dataclass(eq=False)
class RtpStream:
    """One incoming RTP stream of a producer (a simulcast layer, or the only stream)."""

    ssrc: int
    rid: str | None
    layer: int
    statistics: ReceiveStatistics
    nack: NackGenerator = field(default_factory=NackGenerator)
    key_frames: KeyFrameRequestManager = field(default_factory=KeyFrameRequestManager)
    width: int = 0
    height: int = 0
    bitrate: int = 0
    """Bits per second over the last :data:`BITRATE_WINDOW`."""
    last_packet: float = 0.0
    paused: bool = False
    """Paused at the SFU's request (dynacast): not flowing, but available on demand."""
    temporal_bitrates: tuple[int, ...] = ()
    """Bits per second of temporal layers 0..t together, for each t the stream carries
    (VP8 with temporal scalability); empty when its packets carry no TID. Of spatial
    layer 0 only in a VP9 SVC stream."""
    spatial_bitrates: tuple[int, ...] = ()
    """Bits per second of spatial layers 0..s together, for each s a VP9 SVC stream
    carries; empty when no packet of a spatial layer above 0 was seen."""
    spatial_sizes: tuple[tuple[int, int], ...] = ()
    """(width, height) of each spatial layer, from a VP9 key picture's scalability
    structure."""
    dependency_structure: FrameDependencyStructure | None = None
    """The latest template dependency structure its dependency descriptors attached."""
    _window_start: float = 0.0
    _window_bytes: int = 0
    _temporal_bytes: list[int] = field(default_factory=lambda: [0] * TEMPORAL_LAYERS)
    _spatial_bytes: list[int] | None = None

    def meter(self, size: int, now: float, tid: int = -1, sid: int = 0) -> None:
        """Count one packet of ``size`` bytes of temporal layer ``tid`` (-1: none) and
        spatial layer ``sid``."""
        self.last_packet = now
        self._window_bytes += size
        if sid:
            spatial = self._spatial_bytes
            if spatial is None:
                spatial = self._spatial_bytes = [0] * SPATIAL_LAYERS
            spatial[sid] += size
        elif tid >= 0:
            self._temporal_bytes[tid] += size
        elapsed = now - self._window_start
        if elapsed >= BITRATE_WINDOW:
            fresh = elapsed < 3
            self.bitrate = int(self._window_bytes * 8 / elapsed) if fresh else 0
            self.temporal_bitrates = self._cumulative_temporal(elapsed) if fresh else ()
            if self._spatial_bytes is not None:
                self.spatial_bitrates = self._cumulative_spatial(elapsed) if fresh else ()
                self._spatial_bytes = [0] * SPATIAL_LAYERS
            self._window_start = now
            self._window_bytes = 0
            self._temporal_bytes = [0] * TEMPORAL_LAYERS

    def _cumulative_spatial(self, elapsed: float) -> tuple[int, ...]:
        counted = self._spatial_bytes
        assert counted is not None
        highest = max((sid for sid, size in enumerate(counted) if size), default=0)
        total = self._window_bytes - sum(counted)
        bitrates = [int(total * 8 / elapsed)]
        for sid in range(1, highest + 1):
            total += counted[sid]
            bitrates.append(int(total * 8 / elapsed))
        return tuple(bitrates)

    def _cumulative_temporal(self, elapsed: float) -> tuple[int, ...]:
        counted = self._temporal_bytes
        highest = max((tid for tid, size in enumerate(counted) if size), default=-1)
        total = 0
        bitrates = []
        for tid in range(highest + 1):
            total += counted[tid]
            bitrates.append(int(total * 8 / elapsed))
        return tuple(bitrates)

    def flowing(self, now: float) -> bool:
        return now - self.last_packet < 2 * BITRATE_WINDOW

    def available_bitrate(self, now: float) -> int:
        """The bitrate the allocator may plan with: 0 when the publisher stopped the
        layer on its own (bandwidth, CPU), the last measured one when dynacast paused it."""
        return self.bitrate if self.flowing(now) or self.paused else 0


@dataclass(frozen=True, slots=True)
class ReceivedDependencyDescriptor:
    """The dependency descriptor of the packet a producer is handing to its listener."""

    descriptor: DependencyDescriptor
    structure: FrameDependencyStructure
    """The structure it was parsed with (the stream's latest)."""
    value: bytes
    """The extension value as received (forwarded as is when nothing changes)."""


class ProducerListener(Protocol):
    """Who a producer hands what it receives to (:class:`sfu.router.ProducerRoute`)."""

    def wants(self, stream: RtpStream) -> bool:
        """Whether anything is forwarded from ``stream`` or waits for it (otherwise only
        the receive side's bookkeeping runs for its packets)."""
        ...

    def on_rtp(
        self,
        stream: RtpStream,
        marker: int,
        seq: int,
        ts: int,
        payload: bytes,
        tid: int,
        switch_point: bool,
        now: float,
    ) -> None:
        """A media packet of ``stream``: ``marker`` is 0x80 or 0, ``payload`` follows
        the publisher's header (padding stripped), ``tid`` its VP8 temporal layer (-1:
        none); ``switch_point``: a consumer may start on the stream here (the newest
        packet, of a key frame for video)."""
        ...

    def on_padding(self, stream: RtpStream, seq: int) -> None:
        """Packet ``seq`` of ``stream`` carried only padding."""
        ...

    def on_stream_added(self, stream: RtpStream, previous: RtpStream | None) -> None:
        """A new SSRC is bound; ``previous`` is the stream of the same layer it replaces."""
        ...


class _Unrouted:
    """The listener of a producer no router has taken (yet, or any more)."""

    def wants(self, stream: RtpStream) -> bool:
        return False

    def on_rtp(
        self,
        stream: RtpStream,
        marker: int,
        seq: int,
        ts: int,
        payload: bytes,
        tid: int,
        switch_point: bool,
        now: float,
    ) -> None:
        pass

    def on_padding(self, stream: RtpStream, seq: int) -> None:
        pass

    def on_stream_added(self, stream: RtpStream, previous: RtpStream | None) -> None:
        pass


UNROUTED: ProducerListener = _Unrouted()


class Producer:
    def __init__(
        self,
        producer_id: str,
        participant_id: str,
        kind: Literal["audio", "video"],
        mid: str,
        codecs: list[Codec],
        rids: list[str],
        source: str,
        send_key_frame_request: SendKeyFrameRequest,
        send_nack: SendNack | None = None,
    ) -> None:
        self.id = producer_id
        self.participant_id = participant_id
        self.kind = kind
        self.mid = mid
        self.codec = codecs[0]
        self.codecs = codecs
        self.payload_types = {c.payload_type for c in codecs if c.name.lower() != "rtx"}
        self.rtx_payload_types = {c.payload_type for c in codecs if c.name.lower() == "rtx"}
        self.red_payload_type = next(
            (c.payload_type for c in codecs if c.name.lower() == "red"), None
        )
        """The publisher's RED payload type (RFC 2198) when it negotiated RED: its
        consumers then get every packet as a RED payload (:meth:`receive`)."""
        self.clock_rate = self.codec.clock_rate
        self.rids = sorted(rids, key=lambda r: (KNOWN_RID_ORDER.get(r, 99), rids.index(r)))
        self.source = source
        self.muted = False
        self.streams: dict[int, RtpStream] = {}
        self.layers: list[RtpStream | None] = [None] * max(1, len(self.rids))
        self.listener: ProducerListener = UNROUTED
        self.observers: list[RtpObserver] = []
        """Listeners to every packet of every stream besides the route (recorders)."""
        self.packets_dropped = 0
        self.descriptors_dropped = 0
        """Packets dropped for a malformed dependency descriptor (or one that refers to
        no structure received)."""
        self.dependency_descriptor: ReceivedDependencyDescriptor | None = None
        """The dependency descriptor of the packet being handed to the listener now (its
        consumers read it in :meth:`ProducerListener.on_rtp`); None: it carries none."""
        self.vp9_layer_word = 0
        """The :func:`~sfu.rtp.vp9.vp9_layers` word of the VP9 packet being handed to the
        listener now, read once here for all its consumers (:mod:`sfu.svc_consumer`)."""
        self.padding_dropped = 0
        """Probes not forwarded: padding-only packets (media ones are counted as
        received) and RTX copies of packets already received."""
        self.nacks_sent = 0
        self._is_key_frame = _key_frame_detector(self.codec)
        self._key_frame_size = _key_frame_size_reader(self.codec)
        self._reads_size = self._key_frame_size is not _no_size
        self._is_vp8 = self.codec.name.lower() == "vp8"
        self._is_vp9 = self.codec.name.lower() == "vp9"
        self._reads_descriptor = self.codec.name.lower() == "av1"
        self._send_key_frame_request = send_key_frame_request
        self._send_nack = send_nack

    @property
    def simulcast(self) -> bool:
        return len(self.rids) > 1

    @property
    def svc(self) -> bool:
        """One VP9 stream whose spatial layers its consumers select (not simulcast)."""
        return self._is_vp9 and not self.simulcast

    def add_stream(self, ssrc: int, rid: str | None) -> RtpStream:
        """Bind a newly seen SSRC (a layer by its RID, or the only stream)."""
        layer = self.rids.index(rid) if rid is not None and rid in self.rids else 0
        previous = self.layers[layer]
        stream = RtpStream(ssrc, rid, layer, ReceiveStatistics(ssrc, self.clock_rate))
        if previous is not None:
            # The publisher restarted this layer with a new SSRC: consumers follow it.
            self.streams.pop(previous.ssrc, None)
        self.streams[ssrc] = stream
        self.layers[layer] = stream
        self.listener.on_stream_added(stream, previous)
        return stream

    def stop_listening(self) -> None:
        """Hand nothing on any more (the producer left its router)."""
        self.listener = UNROUTED

    def measuring(self, now: float) -> bool:
        """Media flows but no stream has completed its first bitrate window: the
        allocator has nothing to plan with yet, and its consumers keep the layer they
        started on (stopping them would cost a key frame once the figures arrive)."""
        streams = self.streams.values()
        return not any(s.bitrate for s in streams) and any(s.flowing(now) for s in streams)

    def stream_for_layer(self, layer: int) -> RtpStream | None:
        """The stream of ``layer``, or the nearest lower one that exists."""
        for index in range(min(layer, len(self.layers) - 1), -1, -1):
            stream = self.layers[index]
            if stream is not None:
                return stream
        return next((s for s in self.layers if s is not None), None)

    def receive(
        self,
        stream: RtpStream,
        data: bytes,
        payload_start: int,
        now: float,
        descriptor: bytes | None = None,
    ) -> None:
        """One validated RTP packet of ``stream``; ``payload_start`` skips its header;
        ``descriptor`` is its dependency descriptor extension's value, if negotiated.

        RTP padding (RFC 3550 §5.1: the P bit, the last octet counts the padding octets,
        itself included; the header parse checked the count) is stripped before anything
        reads the payload, so no codec parser and no subscriber sees it. A packet that
        is only padding (libwebrtc's padding on the media SSRC when rtx is not
        negotiated) is counted and dropped (:meth:`_receive_padding`). An AV1 packet's
        dependency descriptor is parsed (bounded by its 255 bytes) with the stream's
        latest structure; a malformed one drops the packet, counted, and consumers leave
        no gap for it.
        """
        if data[0] & RTP_PADDING_BIT:
            data = data[: len(data) - data[-1]]
            if len(data) <= payload_start:
                self._receive_padding(stream, data, now)
                return
        seq, ts = _SEQ_TS.unpack_from(data, 2)
        extended = stream.statistics.add(seq, ts, len(data), now)
        if self._is_vp9:
            self._receive_vp9(stream, data, payload_start, extended, now)
            return
        tid = vp8_temporal_id(data, payload_start) if self._is_vp8 else -1
        stream.meter(len(data), now, tid)
        for observer in self.observers:
            observer.receive_rtp(stream, data, payload_start, now)
        if self._reads_descriptor:
            if descriptor is None:
                self.dependency_descriptor = None
            elif not self._read_descriptor(stream, descriptor):
                self._track_loss(stream, seq, now, False)
                if not self.muted:
                    self.listener.on_padding(stream, seq)
                return
        listener = self.listener
        if self.muted or not listener.wants(stream):
            if self.kind == "video":
                if not stream.width and self._reads_size:
                    # A layer nobody watches yet still needs its size, or the allocator
                    # would skip it when capping by the subscriber's tile.
                    payload = data[payload_start:]
                    if self._is_key_frame(payload):
                        stream.width, stream.height = self._key_frame_size(payload) or (0, 0)
                self._track_loss(stream, seq, now, False)
            return
        payload = data[payload_start:]
        key_frame = False
        if self.kind == "video":
            key_frame = self._is_key_frame(payload)
            if key_frame:
                stream.key_frames.key_frame_received()
                size = self._key_frame_size(payload)
                if size is not None:
                    stream.width, stream.height = size
            self._track_loss(stream, seq, now, key_frame)
        elif self.red_payload_type is not None and data[1] & 0x7F != self.red_payload_type:
            # A plain packet of a RED stream (libwebrtc sends frames too large for RED
            # that way): wrapped as RED without redundancy, so consumers see one format.
            payload = red_primary_only(self.codec.payload_type, payload)
        # A switch starts at the newest packet only: a key frame older than that (an RTX
        # probe copying what was sent long ago) would leave the subscriber a gap.
        switch_point = (
            key_frame or self.kind == "audio"
        ) and extended == stream.statistics.highest_sequence
        listener.on_rtp(stream, data[1] & 0x80, seq, ts, payload, tid, switch_point, now)

    def _receive_vp9(
        self, stream: RtpStream, data: bytes, payload_start: int, extended: int, now: float
    ) -> None:
        """:meth:`receive` for VP9, after the receive statistics: the descriptor's layer
        word (RFC 9628) meters each spatial and temporal layer, a key picture's
        scalability structure gives each spatial layer's size, and a packet whose
        descriptor is truncated is counted (``packets_dropped``) and not forwarded,
        consumers leaving no gap for it."""
        seq, ts = _SEQ_TS.unpack_from(data, 2)
        payload = data[payload_start:]
        word = vp9_layers(payload)
        if word < 0:
            self.packets_dropped += 1
            self._track_loss(stream, seq, now, False)
            if not self.muted:
                self.listener.on_padding(stream, seq)
            return
        tid = -1
        sid = 0
        if word & LAYER_INDICES:
            tid = word & LAYER_TID
            sid = (word & LAYER_SID) >> LAYER_SID_SHIFT
        stream.meter(len(data), now, min(tid, TEMPORAL_LAYERS - 1), sid)
        for observer in self.observers:
            observer.receive_rtp(stream, data, payload_start, now)
        key_frame = self._is_key_frame(payload)
        if key_frame:
            sizes = vp9_spatial_sizes(payload)
            if sizes:
                stream.spatial_sizes = sizes
                stream.width, stream.height = sizes[-1]
        listener = self.listener
        if self.muted or not listener.wants(stream):
            self._track_loss(stream, seq, now, False)
            return
        if key_frame:
            stream.key_frames.key_frame_received()
        self._track_loss(stream, seq, now, key_frame)
        switch_point = key_frame and extended == stream.statistics.highest_sequence
        self.vp9_layer_word = word
        listener.on_rtp(stream, data[1] & 0x80, seq, ts, payload, tid, switch_point, now)

    def _read_descriptor(self, stream: RtpStream, value: bytes) -> bool:
        """Parse ``value`` into :attr:`dependency_descriptor`; False when malformed."""
        try:
            parsed = parse_dependency_descriptor(value, stream.dependency_structure)
        except DependencyDescriptorError:
            self.descriptors_dropped += 1
            self.dependency_descriptor = None
            return False
        structure = parsed.attached_structure
        if structure is not None:
            stream.dependency_structure = structure
        else:
            structure = stream.dependency_structure
            assert structure is not None  # the parser needs one without an attached one
        self.dependency_descriptor = ReceivedDependencyDescriptor(parsed, structure, value)
        return True

    def _receive_padding(self, stream: RtpStream, header: bytes, now: float) -> None:
        """A packet of ``stream`` with nothing but padding (``header`` is what is left).

        It has a sequence number of the stream, so the receive statistics count it and
        the NACK generator sees no gap, and each consumer is told to leave no gap either
        (mediasoup's SeqManager drop, LiveKit's RTPMunger ``PacketDropped``). It is not
        metered: the allocator plans with the bitrate of media, not of probes. A marker
        bit goes with it: libwebrtc never sets one on padding, and its receivers ignore
        the marker of a packet without payload.
        """
        self.padding_dropped += 1
        seq, ts = _SEQ_TS.unpack_from(header, 2)
        stream.statistics.add(seq, ts, len(header), now)
        for observer in self.observers:
            observer.receive_rtp(stream, header, len(header), now)
        if self.kind == "video":
            self._track_loss(stream, seq, now, False)
        if not self.muted:
            self.listener.on_padding(stream, seq)

    def receive_rtx(
        self,
        stream: RtpStream,
        data: bytes,
        payload_start: int,
        now: float,
        descriptor: bytes | None = None,
    ) -> None:
        """One validated RTP packet of the RTX stream (RFC 4588) that repairs ``stream``
        (``descriptor``: its dependency descriptor, the original packet's).

        Only a packet the NACK generator waits for is repaired (as mediasoup's
        ``RtpStreamRecv`` does): it is rebuilt from the original sequence number and
        payload with the media stream's SSRC and payload type, padding stripped, and
        received as such; one with the original sequence number and nothing else repairs
        a padding-only packet. Everything else is one of libwebrtc's probes, counted and
        dropped: padding-only RTX packets (no original sequence number once the padding
        is gone; numbered in the RTX stream, so no media gap), and payload padding (RTX
        copies of packets already received, which every subscriber of the layer would
        otherwise get again, to be discarded by its SRTP replay check).
        """
        end = len(data)
        if data[0] & RTP_PADDING_BIT:
            end -= data[-1]
        start = payload_start + RTX_OSN_SIZE
        if end < start:
            self.padding_dropped += 1
            return
        original_seq = int.from_bytes(data[payload_start:start], "big")
        if not stream.nack.awaits(original_seq):
            self.padding_dropped += 1
            return
        header = _HEADER.pack(
            0x80,
            (data[1] & 0x80) | self.codec.payload_type,
            original_seq,
            int.from_bytes(data[4:8], "big"),
            stream.ssrc,
        )
        if end == start:
            self._receive_padding(stream, header, now)
        else:
            self.receive(stream, header + data[start:end], RTP_HEADER_SIZE, now, descriptor)

    def _track_loss(self, stream: RtpStream, seq: int, now: float, key_frame: bool) -> None:
        result = stream.nack.received(seq, now, key_frame)
        if result.nack and self._send_nack is not None:
            self.nacks_sent += 1
            self._send_nack(stream.ssrc, result.nack)
        if result.key_frame_required:
            self.request_key_frame(stream)

    def nack_timer(self, now: float, rtt: float) -> None:
        if self._send_nack is None:
            return
        for stream in self.streams.values():
            lost = stream.nack.timer(now, rtt)
            if lost:
                self.nacks_sent += 1
                self._send_nack(stream.ssrc, lost)

    def timestamp_mapping(self, stream: RtpStream) -> tuple[int, int, float] | None:
        """(NTP, RTP timestamp, arrival) of ``stream``'s latest sender report."""
        sr = stream.statistics.last_sender_report
        if sr is None:
            return None
        return sr.ntp_timestamp, sr.rtp_timestamp, sr.arrival

    def request_key_frame(self, stream: RtpStream) -> None:
        """A consumer needs a key frame of ``stream``; throttled per stream."""
        if self.kind != "video":
            return
        delay = stream.key_frames.request(time.monotonic())
        if delay is None:
            return
        if delay == 0:
            self._send_key_frame_request(stream.ssrc)
        else:
            asyncio.get_running_loop().call_later(delay, self._retry_key_frame, stream)

    def _retry_key_frame(self, stream: RtpStream) -> None:
        if stream.ssrc in self.streams and stream.key_frames.retry(time.monotonic()):
            self._send_key_frame_request(stream.ssrc)
