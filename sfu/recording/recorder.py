"""A TrackRecorder: one published track into one file, as a listener on its producer.

The producer hands every packet of every stream of the track to
:meth:`TrackRecorder.receive_rtp` (it is one of the producer's ``observers``); the
recorder keeps one stream, the *recorded layer*, and writes its frames:

- **Layer**: the highest simulcast layer that had a packet in the last
  :data:`LAYER_SILENCE` seconds. When that changes (the publisher stopped or resumed a
  layer, or restarted one with a new SSRC), the recorder asks for a key frame of the
  new layer and switches at it; until then it goes on with the old one. The picture
  size changes with the layer, which WebM and Matroska allow.
- **Key frames**: video is written from a key frame on. The recorder asks the
  publisher for one (the producer's throttled PLI path) when it starts, after a lost
  or refused frame, and every :data:`KEY_FRAME_RETRY` seconds while it waits.
- **Losses**: the jitter buffer reports a frame that lost a packet; the frame is not
  written, and neither is anything after it until the next key frame. Audio just has
  a gap.
- **Mute**: while the producer is muted nothing is recorded (the room API's mute is
  meant for everyone, the recording included); afterwards video resumes at a key frame.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from sfu.recording.clock import MediaClock, ParticipantClock
from sfu.recording.h264 import H264Depacketizer
from sfu.recording.jitter_buffer import Depacketizer, Frame, FrameLoss, JitterBuffer
from sfu.recording.muxer import MAX_VIDEO_FRAME_RATE, Muxer, MuxResult, StreamFormat
from sfu.recording.opus import OpusDepacketizer, opus_channels
from sfu.recording.vp8 import Vp8Depacketizer
from sfu.rtp.red import red_primary_start

if TYPE_CHECKING:
    from sfu.producer import Producer, RtpStream

LAYER_SILENCE = 1.0
"""Seconds without a packet after which a simulcast layer counts as stopped."""
LAYER_CHECK_INTERVAL = 0.25
"""Seconds between two checks of which layer to record."""
KEY_FRAME_RETRY = 1.0
"""Seconds between two key-frame requests while the recorder waits for one."""
FILE_EXTENSIONS = {"vp8": "webm", "opus": "webm", "h264": "mkv"}
"""Codec → the container its files are written in."""

_SEQ_TS = struct.Struct("!HI")


def _depacketizer(codec: str) -> Depacketizer:
    if codec == "vp8":
        return Vp8Depacketizer()
    if codec == "h264":
        return H264Depacketizer()
    return OpusDepacketizer()


class TrackRecorder:
    """Records one producer into ``path``; see the module docstring.

    ``done`` resolves with the closed file (None when no frame was ever written) after
    :meth:`finish`, or on its own when writing failed or the disk filled up.
    """

    def __init__(
        self,
        producer: Producer,
        path: Path,
        clock: ParticipantClock,
        min_free_bytes: int,
    ) -> None:
        self.producer = producer
        self.codec = producer.codec.name.lower()
        if self.codec not in FILE_EXTENSIONS:
            raise ValueError(f"{producer.codec.name} cannot be recorded")
        self.path = path
        self.clock = MediaClock(clock, producer.clock_rate)
        self.max_layer = max(0, len(producer.rids) - 1)
        """The layer this recorder would like (the highest): dynacast keeps it on."""
        self.frames_lost = 0
        """Frames not written because a packet was lost or malformed."""
        self.frames_skipped = 0
        """Video frames not written while waiting for a key frame after a loss."""
        self.key_frames_requested = 0
        self.done: asyncio.Future[MuxResult | None] = asyncio.get_running_loop().create_future()
        self._min_free_bytes = min_free_bytes
        self._video = producer.kind == "video"
        self._stream: RtpStream | None = None
        self._buffer: JitterBuffer | None = None
        self._target: RtpStream | None = None
        self._target_buffer: JitterBuffer | None = None
        self._anchor_stream: RtpStream | None = None
        self._synced = not self._video
        self._last_pts = -1
        rate = MAX_VIDEO_FRAME_RATE if self._video else 1000
        self._min_step = producer.clock_rate // rate
        """Least distance between two frames' timestamps: 1 ms (Matroska's resolution)
        for audio, 1/MAX_VIDEO_FRAME_RATE for video (what its stream declares)."""
        self._next_check = 0.0
        self._requested: dict[int, float] = {}
        """Publisher SSRC → when the recorder last asked for its key frame."""
        self._muxer: Muxer | None = None
        self._finished = False
        producer.observers.append(self)

    @property
    def layer(self) -> int | None:
        """The simulcast layer recorded now (video, once a stream was chosen)."""
        return self._stream.layer if self._video and self._stream is not None else None

    @property
    def frames_refused(self) -> int:
        """Frames the muxer's full queue refused (a disk slower than the media)."""
        return self._muxer.frames_refused if self._muxer is not None else 0

    def finish(self) -> None:
        """Stop recording; ``done`` resolves once the file is closed."""
        if self._finished:
            return
        self._finished = True
        if self in self.producer.observers:
            self.producer.observers.remove(self)
        if self._muxer is not None:
            self._muxer.finish()
        elif not self.done.done():
            self.done.set_result(None)

    # --- packets --------------------------------------------------------------------

    def receive_rtp(self, stream: RtpStream, data: bytes, payload_start: int, now: float) -> None:
        """One packet of the producer (after padding removal; ``payload_start`` is
        ``len(data)`` for a padding-only packet)."""
        if self.producer.muted:
            return
        if now >= self._next_check:
            self._next_check = now + LAYER_CHECK_INTERVAL
            self._choose_layer(now)
        if stream is self._stream:
            buffer = self._buffer
        elif stream is self._target:
            buffer = self._target_buffer
        else:
            return
        assert buffer is not None
        seq, ts = _SEQ_TS.unpack_from(data, 2)
        marker = bool(data[1] & 0x80)
        payload = data[payload_start:]
        if len(data) > payload_start and data[1] & 0x7F == self.producer.red_payload_type:
            # RED (RFC 2198): the file gets the primary frames; a malformed payload
            # becomes an empty one, which the Opus depacketizer skips as a lost frame.
            start = red_primary_start(payload)
            payload = payload[start:] if start >= 0 else b""
        for event in buffer.push(seq, ts, marker, payload, now):
            if isinstance(event, FrameLoss):
                if stream is self._stream:
                    self._lost(stream, now)
            elif stream is self._stream:
                self._frame(stream, event, now)
            elif event.frame.key:
                self._switch(stream, event, now)

    def _choose_layer(self, now: float) -> None:
        """Target the highest flowing layer (see the module docstring)."""
        wanted = next(
            (
                stream
                for stream in reversed(self.producer.layers)
                if stream is not None and now - stream.last_packet < LAYER_SILENCE
            ),
            None,
        )
        if wanted is None or wanted is self._stream:
            self._target = self._target_buffer = None
            return
        if self._stream is None:
            self._stream, self._buffer = wanted, self._new_buffer()
            self._request_key_frame(wanted, now)
            return
        if wanted is not self._target:
            self._target, self._target_buffer = wanted, self._new_buffer()
        self._request_key_frame(wanted, now)

    def _new_buffer(self) -> JitterBuffer:
        return JitterBuffer(_depacketizer(self.codec), audio=not self._video)

    def _request_key_frame(self, stream: RtpStream, now: float) -> None:
        if not self._video or now - self._requested.get(stream.ssrc, -KEY_FRAME_RETRY) < (
            KEY_FRAME_RETRY
        ):
            return
        self._requested[stream.ssrc] = now
        self.key_frames_requested += 1
        self.producer.request_key_frame(stream)

    def _switch(self, stream: RtpStream, event: Frame, now: float) -> None:
        """The target layer's key frame: record that layer from here on."""
        self._stream, self._buffer = stream, self._target_buffer
        self._target = self._target_buffer = None
        self._synced = False
        self._frame(stream, event, now)

    def _lost(self, stream: RtpStream, now: float) -> None:
        self.frames_lost += 1
        if self._video:
            self._synced = False
            self._request_key_frame(stream, now)

    def _frame(self, stream: RtpStream, event: Frame, now: float) -> None:
        frame = event.frame
        if not self._synced:
            if not frame.key:
                if self._muxer is not None:
                    self.frames_skipped += 1
                self._request_key_frame(stream, now)
                return
            self._synced = True
        if stream is not self._anchor_stream:
            report = self.producer.timestamp_mapping(stream)
            self.clock.anchor(event.timestamp, event.arrival, report)
            self._anchor_stream = stream
        pts = self.clock.pts(event.timestamp)
        if pts < 0 and not self._video:
            return  # captured before the recording began
        pts = max(pts, self._last_pts + self._min_step) if self._last_pts >= 0 else max(pts, 0)
        if self._muxer is None:
            self._muxer = self._open(stream, event)
        if self._muxer.write(frame.data, pts, frame.key):
            self._last_pts = pts
        elif self._video:
            self._synced = False
            self._request_key_frame(stream, now)

    def _open(self, stream: RtpStream, event: Frame) -> Muxer:
        frame = event.frame
        stream_format = StreamFormat(
            codec=self.codec,
            clock_rate=self.producer.clock_rate,
            width=frame.width or stream.width,
            height=frame.height or stream.height,
            channels=opus_channels(frame.data) if self.codec == "opus" else 0,
        )
        loop = asyncio.get_running_loop()
        return Muxer(self.path, stream_format, self._min_free_bytes, self._muxed, loop)

    def _muxed(self, result: MuxResult) -> None:
        if not self._finished:
            # Writing stopped on its own (an error, a full disk): stop listening.
            self._finished = True
            if self in self.producer.observers:
                self.producer.observers.remove(self)
        if not self.done.done():
            self.done.set_result(result)
