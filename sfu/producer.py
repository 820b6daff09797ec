"""A Producer: one track a participant publishes, and the RTP streams that carry it.

A plain track has one stream; a simulcast track has one per RID, each a spatial
layer (0 = lowest). Each stream keeps receive statistics (for receiver reports), its
latest sender report (for the consumers' translated sender reports), a NACK
generator, a bitrate meter and the resolution read from its key frames. Packets are
fanned out to the consumers currently on the stream's layer; consumers waiting to
switch to the layer are handed its key frames. Key-frame requests reach the
publisher through a :class:`KeyFrameRequestManager` per stream.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from sfu.keyframe_request_manager import KeyFrameRequestManager
from sfu.nack_generator import NackGenerator
from sfu.rtp.h264 import is_h264_keyframe
from sfu.rtp.receive_statistics import ReceiveStatistics
from sfu.rtp.vp8 import is_vp8_keyframe, vp8_temporal_id
from sfu.sdp import Codec

if TYPE_CHECKING:
    from sfu.consumer import Consumer

TEMPORAL_LAYERS = 4
"""Temporal layer indexes a VP8 descriptor can carry (its TID field has two bits)."""
BITRATE_WINDOW = 1.0
"""Seconds over which a stream's bitrate is measured for the allocator."""
KNOWN_RID_ORDER = {"q": 0, "h": 1, "f": 2, "l": 0, "m": 1, "0": 0, "1": 1, "2": 2}
"""Common RID names (Chrome's and LiveKit's) in spatial order; others keep their order
in ``a=simulcast``."""
VP8_START_CODE = b"\x9d\x01\x2a"

_SEQ_TS = struct.Struct("!HI")
_VP8_SIZE = struct.Struct("<HH")

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
    return lambda payload: False


def vp8_key_frame_size(payload: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 key frame's first packet (RFC 6386 section 9.1)."""
    index = payload.find(VP8_START_CODE, 0, 32)
    if index < 0 or len(payload) < index + 7:
        return None
    width, height = _VP8_SIZE.unpack_from(payload, index + 3)
    return width & 0x3FFF, height & 0x3FFF


@dataclass
class RtpStream:
    """One incoming RTP stream of a producer (a simulcast layer, or the only stream)."""

    ssrc: int
    rid: str | None
    layer: int
    statistics: ReceiveStatistics
    nack: NackGenerator = field(default_factory=NackGenerator)
    key_frames: KeyFrameRequestManager = field(default_factory=KeyFrameRequestManager)
    consumers: list[Consumer] = field(default_factory=list)
    """Consumers currently forwarding this stream."""
    pending: list[Consumer] = field(default_factory=list)
    """Consumers that switch to this stream at its next key frame."""
    width: int = 0
    height: int = 0
    bitrate: int = 0
    """Bits per second over the last :data:`BITRATE_WINDOW`."""
    last_packet: float = 0.0
    paused: bool = False
    """Paused at the SFU's request (dynacast): not flowing, but available on demand."""
    temporal_bitrates: tuple[int, ...] = ()
    """Bits per second of temporal layers 0..t together, for each t the stream carries
    (VP8 with temporal scalability); empty when its packets carry no TID."""
    _window_start: float = 0.0
    _window_bytes: int = 0
    _temporal_bytes: list[int] = field(default_factory=lambda: [0] * TEMPORAL_LAYERS)

    def meter(self, size: int, now: float, tid: int = -1) -> None:
        """Count one packet of ``size`` bytes of temporal layer ``tid`` (-1: none)."""
        self.last_packet = now
        self._window_bytes += size
        if tid >= 0:
            self._temporal_bytes[tid] += size
        elapsed = now - self._window_start
        if elapsed >= BITRATE_WINDOW:
            fresh = elapsed < 3
            self.bitrate = int(self._window_bytes * 8 / elapsed) if fresh else 0
            self.temporal_bitrates = self._cumulative_temporal(elapsed) if fresh else ()
            self._window_start = now
            self._window_bytes = 0
            self._temporal_bytes = [0] * TEMPORAL_LAYERS

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
        self.clock_rate = self.codec.clock_rate
        self.rids = sorted(rids, key=lambda r: (KNOWN_RID_ORDER.get(r, 99), rids.index(r)))
        self.source = source
        self.muted = False
        self.streams: dict[int, RtpStream] = {}
        self.layers: list[RtpStream | None] = [None] * max(1, len(self.rids))
        self.consumers: dict[str, Consumer] = {}
        self.packets_dropped = 0
        self.nacks_sent = 0
        self._is_key_frame = _key_frame_detector(self.codec)
        self._is_vp8 = self.codec.name.lower() == "vp8"
        self._send_key_frame_request = send_key_frame_request
        self._send_nack = send_nack

    @property
    def simulcast(self) -> bool:
        return len(self.rids) > 1

    def add_stream(self, ssrc: int, rid: str | None) -> RtpStream:
        """Bind a newly seen SSRC (a layer by its RID, or the only stream)."""
        layer = self.rids.index(rid) if rid is not None and rid in self.rids else 0
        previous = self.layers[layer]
        stream = RtpStream(ssrc, rid, layer, ReceiveStatistics(ssrc, self.clock_rate))
        if previous is not None:
            # The publisher restarted this layer with a new SSRC: consumers follow it.
            self.streams.pop(previous.ssrc, None)
            for consumer in previous.consumers + previous.pending:
                stream.pending.append(consumer)
                consumer.restart()
        self.streams[ssrc] = stream
        self.layers[layer] = stream
        for consumer in self.consumers.values():
            if consumer.active and consumer.current_stream is None:
                consumer.restart()
        return stream

    def measuring(self, now: float) -> bool:
        """Media flows but no stream has completed its first bitrate window: the
        allocator has nothing to plan with yet, and its consumers keep the layer they
        started on (stopping them would cost a key frame once the figures arrive)."""
        streams = self.streams.values()
        return not any(s.bitrate for s in streams) and any(s.flowing(now) for s in streams)

    def add_consumer(self, consumer: Consumer) -> None:
        self.consumers[consumer.id] = consumer

    def remove_consumer(self, consumer_id: str) -> None:
        consumer = self.consumers.pop(consumer_id, None)
        if consumer is not None:
            self.detach(consumer)

    def detach(self, consumer: Consumer) -> None:
        """Stop forwarding any stream to ``consumer`` (it stays a consumer)."""
        for stream in self.streams.values():
            if consumer in stream.consumers:
                stream.consumers.remove(consumer)
            if consumer in stream.pending:
                stream.pending.remove(consumer)

    def stream_for_layer(self, layer: int) -> RtpStream | None:
        """The stream of ``layer``, or the nearest lower one that exists."""
        for index in range(min(layer, len(self.layers) - 1), -1, -1):
            stream = self.layers[index]
            if stream is not None:
                return stream
        return next((s for s in self.layers if s is not None), None)

    def request_layer(self, consumer: Consumer, layer: int) -> None:
        """Move ``consumer`` to ``layer`` at that layer's next key frame."""
        stream = self.stream_for_layer(layer)
        if stream is None:
            return
        for other in self.streams.values():
            if consumer in other.pending:
                other.pending.remove(consumer)
        if consumer in stream.consumers and not consumer.needs_key_frame:
            return
        stream.pending.append(consumer)
        self.request_key_frame(stream)

    def switch_consumer(self, consumer: Consumer, stream: RtpStream) -> None:
        """A pending consumer got ``stream``'s key frame: it forwards that stream now."""
        for other in self.streams.values():
            if consumer in other.consumers:
                other.consumers.remove(consumer)
        stream.pending.remove(consumer)
        stream.consumers.append(consumer)

    def receive(self, stream: RtpStream, data: bytes, payload_start: int, now: float) -> None:
        """One validated RTP packet of ``stream``; ``payload_start`` skips its header."""
        seq, ts = _SEQ_TS.unpack_from(data, 2)
        stream.statistics.add(seq, ts, len(data), now)
        tid = vp8_temporal_id(data, payload_start) if self._is_vp8 else -1
        stream.meter(len(data), now, tid)
        if self.muted or not (stream.consumers or stream.pending):
            if self.kind == "video":
                self._track_loss(stream, seq, now, False)
            return
        payload = data[payload_start:]
        key_frame = False
        if self.kind == "video":
            key_frame = self._is_key_frame(payload)
            if key_frame:
                stream.key_frames.key_frame_received()
                if self._is_vp8:
                    size = vp8_key_frame_size(payload)
                    if size is not None:
                        stream.width, stream.height = size
            self._track_loss(stream, seq, now, key_frame)
        marker = data[1] & 0x80
        if stream.pending and (key_frame or self.kind == "audio"):
            for consumer in list(stream.pending):
                self.switch_consumer(consumer, stream)
                consumer.start_layer(stream, seq, ts, payload, now)
        for consumer in stream.consumers:
            consumer.forward(stream, marker, seq, ts, payload, tid, now)

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
        delay = stream.key_frames.request(time.time())
        if delay is None:
            return
        if delay == 0:
            self._send_key_frame_request(stream.ssrc)
        else:
            asyncio.get_running_loop().call_later(delay, self._retry_key_frame, stream)

    def _retry_key_frame(self, stream: RtpStream) -> None:
        if stream.ssrc in self.streams and stream.key_frames.retry(time.time()):
            self._send_key_frame_request(stream.ssrc)
