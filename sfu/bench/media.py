"""Pre-encoded media for the benchmark: VP8 clips encoded once, cached, replayed forever.

The clip is a synthetic moving pattern (a scrolling block texture with a band of fresh
noise on top, so every delta frame has a steady residual) encoded with libvpx through
PyAV and packetized with aiortc's VP8 packetizer. aiortc's ``Vp8Encoder.encode`` caps the
bitrate at 1.5 Mbit/s, so the encoder context is driven directly with aiortc's
real-time settings and a higher target. The result is a list of
``(RTP payload, marker, timestamp delta)`` cached under ``~/.cache/pysfu-bench/`` in a
file named after the encoding parameters. A simulcast publisher replays the three
:data:`SIMULCAST_CLIPS`, encoded and cached the same way.

libvpx through PyAV encodes no VP9 SVC (no spatial layers in one stream), so the VP9
SVC clip is a capture of Chromium's own packets instead (:class:`Vp9Capture`,
:data:`VP9_SVC_CAPTURE`): each packet's first 32 bytes (the RFC 9628 payload descriptor
and the start of the frame) padded to its captured size, which is all the SFU reads.

:class:`Replay` loops a clip (or the synthetic Opus-like audio of
:func:`synthetic_audio`) frame by frame; the publisher assigns continuous sequence
numbers and timestamps and paces the frames in real time.
"""

from __future__ import annotations

import fractions
import itertools
import json
import os
import random
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import av
from aiortc.codecs.vpx import Vp8Encoder

from sfu.rtp.vp9 import is_vp9_keyframe, vp9_spatial_sizes

CACHE_DIR = Path.home() / ".cache" / "pysfu-bench"
FORMAT_VERSION = 1
"""Bumped whenever the cache file layout or the synthetic content changes."""
VIDEO_CLOCK_RATE = 90000
AUDIO_CLOCK_RATE = 48000
AUDIO_PACKETS_PER_SECOND = 50
AUDIO_PAYLOAD_SIZE = 100

_MAGIC = b"PYSFUVP8"
_FILE_HEADER = struct.Struct("!8sII")
"""magic, format version, packet count."""
_PACKET_HEADER = struct.Struct("!BIH")
"""flags, timestamp delta, payload length."""
_FLAG_MARKER = 0x01
_FLAG_KEY_FRAME = 0x02
"""Set on the first packet of a key frame."""
_TEXTURE_SIZE = 1024
_TEXTURE_BLOCK = 4
_FRESH_NOISE_SHARE = 10
"""The band of fresh noise covers the top 1/10 of the rows (48 at 480), so smaller
layers need proportionally fewer bits."""
_SEED = 20240601
VP9_SVC_CAPTURE = Path(__file__).resolve().parent / "captures" / "chromium-l3t3-key.jsonl"
"""Chromium 156 publishing VP9 with ``scalabilityMode`` ``L3T3_KEY`` from a 640x480
camera, which it sends as two spatial layers (320x240, 640x480) and three temporal
layers in flexible mode: 300 packets, 99 pictures, 4.9 s of video, key picture first.
It lives with the tests that check the SFU against it (run the benchmark from a clone)."""


@dataclass(frozen=True)
class ClipParameters:
    """What the cached clip is encoded with; every field is part of the cache key."""

    width: int = 640
    height: int = 480
    fps: int = 30
    bitrate: int = 3_000_000
    key_frame_interval: int = 60
    """Frames between key frames (2 s at 30 fps)."""
    frames: int = 120

    @property
    def cache_name(self) -> str:
        return (
            f"vp8-{self.width}x{self.height}-{self.fps}fps-{self.bitrate // 1000}kbps"
            f"-kf{self.key_frame_interval}-{self.frames}f-v{FORMAT_VERSION}.bin"
        )


SIMULCAST_CLIPS = (
    ClipParameters(width=160, height=120, bitrate=150_000),
    ClipParameters(width=320, height=240, bitrate=500_000),
    ClipParameters(width=640, height=480, bitrate=1_700_000),
)
"""The clips of a simulcast publisher's three layers, lowest first (RIDs q, h, f)."""


class ClipPacket(NamedTuple):
    """One RTP packet of the clip."""

    payload: bytes
    marker: bool
    timestamp_delta: int
    """Clock ticks since the previous packet: a frame interval on a frame's first
    packet (also the clip's first, so the clip loops seamlessly), 0 on the others."""
    key_frame: bool
    """The packet starts a key frame."""


@dataclass(frozen=True)
class Frame:
    """The packets sharing one RTP timestamp."""

    timestamp_delta: int
    payloads: tuple[bytes, ...]
    key_frame: bool


@dataclass(frozen=True)
class Vp9Capture:
    """Captured VP9 RTP packets to replay (a JSON object a line: ``seq``, ``ts``,
    ``marker``, ``size``, and ``head``, the payload's first bytes in hex)."""

    path: str


VideoSource = ClipParameters | Vp9Capture
"""What a publisher's video is made from: a clip to encode, or a capture to replay."""


@dataclass(frozen=True)
class Clip:
    """A replayable media loop."""

    frames: tuple[Frame, ...]
    clock_rate: int
    codec: str = "VP8"
    """The RTP codec name of the payloads."""
    spatial_layers: int = 1
    """Spatial layers in the one stream (VP9 SVC); 1 otherwise."""

    @classmethod
    def from_packets(
        cls,
        packets: list[ClipPacket],
        clock_rate: int,
        codec: str = "VP8",
        spatial_layers: int = 1,
    ) -> Clip:
        frames: list[Frame] = []
        payloads: list[bytes] = []
        delta = 0
        key_frame = False
        for packet in packets:
            if not payloads:
                delta = packet.timestamp_delta
                key_frame = packet.key_frame
            payloads.append(packet.payload)
            if packet.marker:
                frames.append(Frame(delta, tuple(payloads), key_frame))
                payloads = []
        if payloads:
            frames.append(Frame(delta, tuple(payloads), key_frame))
        return cls(tuple(frames), clock_rate, codec, spatial_layers)

    @property
    def duration(self) -> float:
        """Seconds of one loop."""
        return sum(frame.timestamp_delta for frame in self.frames) / self.clock_rate

    @property
    def packet_count(self) -> int:
        return sum(len(frame.payloads) for frame in self.frames)

    @property
    def packets_per_second(self) -> float:
        return self.packet_count / self.duration

    @property
    def bits_per_second(self) -> float:
        size = sum(len(p) for frame in self.frames for p in frame.payloads)
        return size * 8 / self.duration


class Replay:
    """Loops a clip forever, one frame at a time; can skip ahead to a key frame."""

    def __init__(self, clip: Clip) -> None:
        self.clip = clip
        self._index = 0
        self._key_frames = [i for i, frame in enumerate(clip.frames) if frame.key_frame]

    def next_frame(self) -> Frame:
        frame = self.clip.frames[self._index]
        self._index = (self._index + 1) % len(self.clip.frames)
        return frame

    def skip_to_key_frame(self) -> bool:
        """Make the next frame a key frame (the next one in the loop); False if the next
        frame already is one or the clip has none."""
        if not self._key_frames or self._index in self._key_frames:
            return False
        self._index = next((i for i in self._key_frames if i > self._index), self._key_frames[0])
        return True


def load_clip(params: ClipParameters, cache_dir: Path = CACHE_DIR) -> Clip:
    """The clip for ``params``: read from the cache, or encoded and cached first."""
    path = cache_dir / params.cache_name
    try:
        packets = read_packets(path)
    except (OSError, ValueError):
        packets = encode_packets(params)
        write_packets(path, packets)
    return Clip.from_packets(packets, VIDEO_CLOCK_RATE)


def is_cached(params: ClipParameters, cache_dir: Path = CACHE_DIR) -> bool:
    return (cache_dir / params.cache_name).is_file()


def load_video(source: VideoSource) -> Clip:
    """The clip of ``source``: encoded (or cached) VP8, or a replayed VP9 capture."""
    if isinstance(source, Vp9Capture):
        return load_vp9_capture(source)
    return load_clip(source)


def load_vp9_capture(capture: Vp9Capture) -> Clip:
    """The captured pictures as a loop, from the first key picture on; ValueError if
    the file is not a capture of packets in sequence.

    A picture is the packets sharing a timestamp; its delta is the captured one, and
    the first picture's the capture's mean picture interval, so the loop is seamless.
    Each payload is the captured head padded with zeros to the captured size. The
    sender sets the marker on each picture's last packet (Chromium left it off two of
    the 99 pictures of :data:`VP9_SVC_CAPTURE`, single packets of the low layer).
    """
    rows: list[tuple[int, int, bytes]] = []
    for number, line in enumerate(Path(capture.path).read_text().splitlines(), 1):
        try:
            row = json.loads(line)
            head = bytes.fromhex(row["head"])
            rows.append((int(row["seq"]), int(row["ts"]), head.ljust(int(row["size"]), b"\0")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{capture.path}:{number}: not a captured packet: {exc}") from exc
    start = next((i for i, row in enumerate(rows) if is_vp9_keyframe(row[2])), None)
    if start is None:
        raise ValueError(f"{capture.path} has no key picture")
    rows = rows[start:]
    if any((b[0] - a[0]) & 0xFFFF != 1 for a, b in itertools.pairwise(rows)):
        raise ValueError(f"{capture.path} has a sequence gap")
    pictures = [
        (ts, tuple(payload for _, _, payload in group))
        for ts, group in itertools.groupby(rows, key=lambda row: row[1])
    ]
    span = (pictures[-1][0] - pictures[0][0]) & 0xFFFFFFFF
    if len(pictures) < 2 or span == 0:
        raise ValueError(f"{capture.path} holds less than two pictures")
    previous = pictures[0][0] - round(span / (len(pictures) - 1))
    frames = []
    for ts, payloads in pictures:
        frames.append(Frame((ts - previous) & 0xFFFFFFFF, payloads, is_vp9_keyframe(payloads[0])))
        previous = ts
    layers = len(vp9_spatial_sizes(pictures[0][1][0])) or 1
    return Clip(tuple(frames), VIDEO_CLOCK_RATE, "VP9", layers)


def _texture() -> bytes:
    """A square texture of random 4x4 blocks, which libvpx predicts well when it moves."""
    rng = random.Random(_SEED)
    cells = _TEXTURE_SIZE // _TEXTURE_BLOCK
    rows = []
    for _ in range(cells):
        row = bytes(b for b in rng.randbytes(cells) for _ in range(_TEXTURE_BLOCK))
        rows.extend([row] * _TEXTURE_BLOCK)
    return b"".join(rows)


def _frames(params: ClipParameters) -> list[av.VideoFrame]:
    texture = _texture()
    rng = random.Random(_SEED + 1)
    chroma = bytes([128]) * (params.width * params.height // 4)
    time_base = fractions.Fraction(1, params.fps)
    size = _TEXTURE_SIZE
    noise_rows = params.height // _FRESH_NOISE_SHARE
    frames = []
    for index in range(params.frames):
        rows = []
        for y in range(params.height):
            if y < noise_rows:
                rows.append(rng.randbytes(params.width))
            else:
                start = ((y + index * 4) % size) * size + (index * 6) % (size - params.width)
                rows.append(texture[start : start + params.width])
        frame = av.VideoFrame(params.width, params.height, "yuv420p")
        frame.planes[0].update(b"".join(rows))
        frame.planes[1].update(chroma)
        frame.planes[2].update(chroma)
        frame.pts = index
        frame.time_base = time_base
        frames.append(frame)
    return frames


def encode_packets(params: ClipParameters) -> list[ClipPacket]:
    """Encode the synthetic pattern to VP8 RTP payloads (takes seconds of CPU)."""
    if params.width % 2 or params.height % 2:
        raise ValueError("width and height must be even")
    if params.width > _TEXTURE_SIZE or params.height < _FRESH_NOISE_SHARE:
        raise ValueError(f"the synthetic pattern needs {_FRESH_NOISE_SHARE}..1024 rows")
    codec = av.CodecContext.create("libvpx", "w")
    codec.width = params.width
    codec.height = params.height
    codec.pix_fmt = "yuv420p"
    codec.bit_rate = params.bitrate
    codec.time_base = fractions.Fraction(1, params.fps)
    codec.framerate = fractions.Fraction(params.fps, 1)
    codec.gop_size = params.key_frame_interval
    bitrate = str(params.bitrate)
    codec.options = {
        # aiortc's Vp8Encoder settings: constant bitrate, real time, no lookahead.
        "bufsize": bitrate,
        "cpu-used": "-6",
        "deadline": "realtime",
        "lag-in-frames": "0",
        "minrate": bitrate,
        "maxrate": bitrate,
        "overshoot-pct": "15",
        "undershoot-pct": "100",
        "static-thresh": "1",
        "partitions": "0",
        "keyint_min": str(params.key_frame_interval),
    }
    packetizer = Vp8Encoder()
    frame_interval = VIDEO_CLOCK_RATE // params.fps
    packets: list[ClipPacket] = []
    encoded = [p for frame in _frames(params) for p in codec.encode(frame)]
    encoded.extend(codec.encode(None))
    for packet in encoded:
        payloads, _ = packetizer.pack(packet)
        last = len(payloads) - 1
        packets.extend(
            ClipPacket(
                payload=payload,
                marker=i == last,
                timestamp_delta=frame_interval if i == 0 else 0,
                key_frame=i == 0 and packet.is_keyframe,
            )
            for i, payload in enumerate(payloads)
        )
    return packets


def write_packets(path: Path, packets: list[ClipPacket]) -> None:
    """Write ``packets`` atomically (a concurrent reader never sees a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [_FILE_HEADER.pack(_MAGIC, FORMAT_VERSION, len(packets))]
    for packet in packets:
        flags = (_FLAG_MARKER if packet.marker else 0) | (
            _FLAG_KEY_FRAME if packet.key_frame else 0
        )
        parts.append(_PACKET_HEADER.pack(flags, packet.timestamp_delta, len(packet.payload)))
        parts.append(packet.payload)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(b"".join(parts))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_packets(path: Path) -> list[ClipPacket]:
    """Read a file written by :func:`write_packets`; ValueError if it is not one."""
    data = path.read_bytes()
    if len(data) < _FILE_HEADER.size:
        raise ValueError(f"{path} is truncated")
    magic, version, count = _FILE_HEADER.unpack_from(data, 0)
    if magic != _MAGIC or version != FORMAT_VERSION:
        raise ValueError(f"{path} is not a version {FORMAT_VERSION} clip")
    pos = _FILE_HEADER.size
    packets = []
    for _ in range(count):
        if pos + _PACKET_HEADER.size > len(data):
            raise ValueError(f"{path} is truncated")
        flags, delta, length = _PACKET_HEADER.unpack_from(data, pos)
        pos += _PACKET_HEADER.size
        payload = data[pos : pos + length]
        if len(payload) != length:
            raise ValueError(f"{path} is truncated")
        pos += length
        packets.append(
            ClipPacket(payload, bool(flags & _FLAG_MARKER), delta, bool(flags & _FLAG_KEY_FRAME))
        )
    if not packets:
        raise ValueError(f"{path} holds no packets")
    return packets


def synthetic_audio(seconds: int = 1) -> Clip:
    """An Opus-like stream: 20 ms packets of about 100 bytes (the content does not decode)."""
    rng = random.Random(_SEED + 2)
    interval = AUDIO_CLOCK_RATE // AUDIO_PACKETS_PER_SECOND
    frames = tuple(
        Frame(interval, (rng.randbytes(AUDIO_PAYLOAD_SIZE + rng.randint(-10, 10)),), False)
        for _ in range(seconds * AUDIO_PACKETS_PER_SECOND)
    )
    return Clip(frames, AUDIO_CLOCK_RATE, "opus")
