"""A Producer: one track a participant publishes, and the RTP streams that carry it.

A plain track has one stream; a simulcast track has one per RID (layer). Each
stream keeps receive statistics (for receiver reports) and its latest sender report
(for the consumers' translated sender reports). The producer fans every packet out
to its consumers; key-frame requests from consumers reach the publisher through
the :class:`KeyFrameRequestManager`, one per stream.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from sfu.keyframe_request_manager import KeyFrameRequestManager
from sfu.rtp.h264 import is_h264_keyframe
from sfu.rtp.receive_statistics import ReceiveStatistics
from sfu.rtp.vp8 import is_vp8_keyframe
from sfu.sdp import Codec

if TYPE_CHECKING:
    from sfu.consumer import Consumer

_SEQ_TS = struct.Struct("!HI")

SendKeyFrameRequest = Callable[[int], None]
"""Sends a PLI for the given publisher SSRC."""


def _key_frame_detector(codec: Codec) -> Callable[[bytes], bool]:
    name = codec.name.lower()
    if name == "vp8":
        return is_vp8_keyframe
    if name == "h264":
        return is_h264_keyframe
    return lambda payload: False


@dataclass
class RtpStream:
    """One incoming RTP stream of a producer (a layer, or the only stream)."""

    ssrc: int
    rid: str | None
    statistics: ReceiveStatistics
    key_frames: KeyFrameRequestManager = field(default_factory=KeyFrameRequestManager)
    rtx_ssrc: int | None = None


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
        self.rids = rids
        self.source = source
        self.muted = False
        self.streams: dict[int, RtpStream] = {}
        self.consumers: dict[str, Consumer] = {}
        self.packets_dropped = 0
        self._active_stream: RtpStream | None = None
        self._is_key_frame = _key_frame_detector(self.codec)
        self._send_key_frame_request = send_key_frame_request
        self._consumers: list[Consumer] = []

    @property
    def simulcast(self) -> bool:
        return len(self.rids) > 1

    def add_stream(self, ssrc: int, rid: str | None) -> RtpStream:
        stream = RtpStream(ssrc, rid, ReceiveStatistics(ssrc, self.clock_rate))
        self.streams[ssrc] = stream
        if self._forwarded_rank(stream) >= self._forwarded_rank(self._active_stream):
            self._active_stream = stream
            self.request_key_frame()
        return stream

    def _forwarded_rank(self, stream: RtpStream | None) -> int:
        """Which layer consumers get until per-subscriber selection (the highest)."""
        if stream is None:
            return -1
        if stream.rid is None or stream.rid not in self.rids:
            return 0
        return self.rids.index(stream.rid)

    def add_consumer(self, consumer: Consumer) -> None:
        self.consumers[consumer.id] = consumer
        self._consumers = list(self.consumers.values())

    def remove_consumer(self, consumer_id: str) -> None:
        self.consumers.pop(consumer_id, None)
        self._consumers = list(self.consumers.values())

    def receive(self, stream: RtpStream, data: bytes, payload_start: int, now: float) -> None:
        """One validated RTP packet of ``stream``; ``payload_start`` skips its header."""
        seq, ts = _SEQ_TS.unpack_from(data, 2)
        stream.statistics.add(seq, ts, len(data), now)
        if stream is not self._active_stream or self.muted:
            return
        payload = data[payload_start:]
        key_frame = False
        if self.kind == "video":
            key_frame = self._is_key_frame(payload)
            if key_frame:
                stream.key_frames.key_frame_received()
        marker = data[1] & 0x80
        for consumer in self._consumers:
            consumer.forward(marker, seq, ts, payload, key_frame)

    def timestamp_mapping(self) -> tuple[int, int, float] | None:
        """(NTP, RTP timestamp, arrival) of the forwarded stream's latest sender report."""
        stream = self._active_stream
        if stream is None or stream.statistics.last_sender_report is None:
            return None
        sr = stream.statistics.last_sender_report
        return sr.ntp_timestamp, sr.rtp_timestamp, sr.arrival

    def request_key_frame(self) -> None:
        """A consumer needs a key frame: ask the publisher, throttled per stream."""
        stream = self._active_stream
        if stream is None or self.kind != "video":
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
