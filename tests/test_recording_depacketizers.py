"""The recording's receive side over real bytes: frames encoded by libvpx, libx264 and
libopus (through PyAV), packetized by aiortc's own packetizers (an implementation
independent of ours), then depacketized, reordered, lost and muxed by
:mod:`sfu.recording`; the files are checked with Debian's ffprobe and ffmpeg."""

from __future__ import annotations

import asyncio
import fractions
import json
import random
import shutil
import struct
import subprocess
import time
from pathlib import Path

import av
import pytest
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from hypothesis import given
from hypothesis import strategies as st

from sfu.producer import Producer
from sfu.recording.clock import MediaClock, ParticipantClock
from sfu.recording.h264 import START_CODE, H264Depacketizer, nal_units
from sfu.recording.jitter_buffer import Frame, FrameLoss, JitterBuffer
from sfu.recording.opus import OpusDepacketizer, opus_channels
from sfu.recording.recorder import TrackRecorder
from sfu.recording.vp8 import Vp8Depacketizer
from sfu.rtp.rtcp import ntp_from_unix
from sfu.sdp import Codec

WIDTH, HEIGHT, FPS = 160, 120, 30
_HEADER = struct.Struct("!BBHII")


def _noise_frame(rng: random.Random, index: int, pts: int) -> av.VideoFrame:
    """Noise compresses badly: every frame spans several RTP packets."""
    frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
    for plane in frame.planes:
        size = plane.buffer_size
        plane.update(rng.randbytes(size // 4) + bytes(size - size // 4))
    frame.pts = pts
    frame.time_base = fractions.Fraction(1, 90000)
    return frame


def encode(codec: str, count: int, key_frames: set[int]) -> list[bytes]:
    """``count`` frames of ``codec`` ("libvpx" or "libx264"), key frames where asked."""
    encoder = av.CodecContext.create(codec, "w")
    encoder.width, encoder.height, encoder.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    encoder.time_base = fractions.Fraction(1, 90000)
    encoder.bit_rate = 1_500_000
    encoder.gop_size = 1000
    if codec == "libx264":
        encoder.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "repeat-headers": "1",
            "crf": "5",
        }
    else:
        encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    rng = random.Random(7)
    frames: list[bytes] = []
    for index in range(count):
        frame = _noise_frame(rng, index, index * 3000)
        frame.pict_type = (
            av.video.frame.PictureType.I if index in key_frames else av.video.frame.PictureType.NONE
        )
        frames.extend(bytes(packet) for packet in encoder.encode(frame))
    frames.extend(bytes(packet) for packet in encoder.encode(None))
    assert len(frames) == count
    return frames


@pytest.fixture(scope="module")
def vp8_frames() -> list[list[bytes]]:
    """60 VP8 frames (key frames 0 and 40) as aiortc packetizes them."""
    return [
        Vp8Encoder._packetize(data, picture_id=index)
        for index, data in enumerate(encode("libvpx", 60, {0, 40}))
    ]


@pytest.fixture(scope="module")
def h264_frames() -> list[tuple[bytes, list[bytes]]]:
    """30 H.264 access units (Annex B, key frames 0 and 20) and their RTP payloads."""
    units = encode("libx264", 30, {0, 20})
    return [(au, H264Encoder._packetize(H264Encoder._split_bitstream(au))) for au in units]


def decode(codec: str, frames: list[bytes]) -> list[av.VideoFrame]:
    decoder = av.CodecContext.create(codec, "r")
    decoded = []
    for data in frames:
        decoded.extend(decoder.decode(av.Packet(data)))
    return decoded


def push_all(buffer: JitterBuffer, packets: list[tuple[int, int, bool, bytes, float]]) -> list:
    events = []
    for seq, ts, marker, payload, now in packets:
        events.extend(buffer.push(seq, ts, marker, payload, now))
    return events


def rtp_packets(
    frames: list[list[bytes]], first_seq: int, first_ts: int, t0: float
) -> list[tuple[int, int, bool, bytes, float]]:
    """(sequence number, timestamp, marker, payload, arrival) for every packet."""
    out = []
    seq = first_seq
    for index, payloads in enumerate(frames):
        ts = (first_ts + index * 3000) & 0xFFFFFFFF
        for position, payload in enumerate(payloads):
            out.append((seq & 0xFFFF, ts, position == len(payloads) - 1, payload, t0 + index / FPS))
            seq += 1
    return out


# --- VP8 (RFC 7741) ----------------------------------------------------------------------


def test_vp8_partitions_across_packets(vp8_frames: list[list[bytes]]) -> None:
    """Each frame spans packets (its partitions split anywhere); reassembled, it is the
    encoder's frame, and the key frames say their size."""
    assert all(len(payloads) >= 3 for payloads in vp8_frames)
    depacketizer = Vp8Depacketizer()
    rebuilt = [depacketizer.depacketize(payloads) for payloads in vp8_frames]
    assert [f.key for f in rebuilt].count(True) == 2
    assert rebuilt[0].key and rebuilt[40].key
    assert (rebuilt[0].width, rebuilt[0].height) == (WIDTH, HEIGHT)
    decoded = decode("vp8", [f.data for f in rebuilt])
    assert len(decoded) == 60
    assert {(f.width, f.height) for f in decoded} == {(WIDTH, HEIGHT)}


def test_vp8_reordered_and_wrapping(vp8_frames: list[list[bytes]]) -> None:
    """Packets swapped in pairs, sequence numbers and timestamps wrapping: every frame
    comes out once, in order."""
    packets = rtp_packets(vp8_frames[:30], 65530, 0xFFFFFFFF - 20000, 1000.0)
    for index in range(0, len(packets) - 1, 2):
        packets[index], packets[index + 1] = packets[index + 1], packets[index]
    events = push_all(JitterBuffer(Vp8Depacketizer(), audio=False), packets)
    assert all(isinstance(e, Frame) for e in events)
    assert [e.frame.data for e in events] == [
        Vp8Depacketizer().depacketize(payloads).data for payloads in vp8_frames[:30]
    ]


def test_vp8_lost_middle_packet(vp8_frames: list[list[bytes]]) -> None:
    """A frame missing a middle packet is given up after MAX_DELAY and reported; the
    frames after it still come out (the recorder waits for a key frame among them)."""
    packets = rtp_packets(vp8_frames[:40], 100, 5000, 1000.0)
    first_of_10 = sum(len(p) for p in vp8_frames[:10])
    del packets[first_of_10 + 1]
    events = push_all(JitterBuffer(Vp8Depacketizer(), audio=False), packets)
    losses = [e for e in events if isinstance(e, FrameLoss)]
    frames = [e for e in events if isinstance(e, Frame)]
    assert [loss.reason for loss in losses] == ["lost"]
    assert events.index(losses[0]) == 10
    assert [f.timestamp for f in frames[:10]] == [5000 + i * 3000 for i in range(10)]
    assert frames[10].timestamp == 5000 + 11 * 3000
    assert len(frames) == 39


def test_vp8_repair_within_delay(vp8_frames: list[list[bytes]]) -> None:
    """A retransmission that arrives before MAX_DELAY fills the hole: nothing is lost."""
    packets = rtp_packets(vp8_frames[:20], 100, 5000, 1000.0)
    hole = sum(len(p) for p in vp8_frames[:5]) + 1
    late = packets.pop(hole)
    packets.insert(hole + 12, (*late[:4], late[4] + 0.2))
    events = push_all(JitterBuffer(Vp8Depacketizer(), audio=False), packets)
    assert len(events) == 20 and all(isinstance(e, Frame) for e in events)


def test_vp8_malformed() -> None:
    depacketizer = Vp8Depacketizer()
    with pytest.raises(ValueError, match="partition 0"):
        depacketizer.depacketize([b"\x00\x01\x02"])
    with pytest.raises(ValueError, match="start code"):
        depacketizer.depacketize([b"\x10\x00\x00\x00\x00"])
    buffer = JitterBuffer(depacketizer, audio=False)
    assert push_all(buffer, [(1, 0, True, b"\x90\x80", 0.0)]) == [FrameLoss("malformed")]


# --- H.264 (RFC 6184) --------------------------------------------------------------------


def test_h264_stap_a_and_fu_a(h264_frames: list[tuple[bytes, list[bytes]]]) -> None:
    """aiortc aggregates SPS and PPS in a STAP-A and fragments the IDR slice in FU-As;
    depacketized, every NAL unit is the encoder's and the stream decodes."""
    first = h264_frames[0][1]
    assert first[0][0] & 0x1F == 24  # STAP-A
    assert sum(1 for p in first if p[0] & 0x1F == 28) >= 3  # FU-A fragments
    depacketizer = H264Depacketizer()
    rebuilt = [depacketizer.depacketize(payloads) for _, payloads in h264_frames]
    assert [i for i, f in enumerate(rebuilt) if f.key] == [0, 20]
    assert (rebuilt[0].width, rebuilt[0].height) == (WIDTH, HEIGHT)
    for (au, _), frame in zip(h264_frames, rebuilt, strict=True):
        assert list(H264Encoder._split_bitstream(frame.data)) == list(
            H264Encoder._split_bitstream(au)
        )
    assert len(decode("h264", [f.data for f in rebuilt])) == 30


def test_h264_key_frame_gets_stored_parameter_sets(
    h264_frames: list[tuple[bytes, list[bytes]]],
) -> None:
    """An IDR access unit without SPS/PPS gets the latest ones in front; before any was
    seen it is no place to start."""
    depacketizer = H264Depacketizer()
    idr = [p for p in h264_frames[20][1] if p[0] & 0x1F != 24]  # the STAP-A dropped
    assert not depacketizer.depacketize(idr).key
    depacketizer.depacketize(h264_frames[0][1])
    frame = depacketizer.depacketize(idr)
    assert frame.key
    types = [unit[0] & 0x1F for unit in frame.data.split(START_CODE)[1:]]
    assert types[:2] == [7, 8] and 5 in types


def test_h264_parameter_sets_only() -> None:
    depacketizer = H264Depacketizer()
    stap = b"\x18" + b"\x00\x02\x67\x42" + b"\x00\x02\x68\xce"
    assert depacketizer.depacketize([stap]) is None
    assert depacketizer.sps == b"\x67\x42" and depacketizer.pps == b"\x68\xce"


@pytest.mark.parametrize(
    ("payloads", "message"),
    [
        ([b"\x18\x00\x05\x67"], "does not fit"),
        ([b"\x18\x00"], "truncated"),
        ([b"\x7c\x05\xaa"], "without its start"),
        ([b"\x7c\x85\xaa"], "without its end"),
        ([b"\x7c\x85\xaa", b"\x65\x00"], "without its end"),
        ([b"\x7c\x85\xaa", b"\x7c\x85\xaa"], "before the previous fragment ended"),
        ([b"\x19\x00"], "type 25 is not supported"),
        ([b""], "empty"),
    ],
)
def test_h264_malformed(payloads: list[bytes], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        nal_units(payloads)


def test_h264_lost_fragment(h264_frames: list[tuple[bytes, list[bytes]]]) -> None:
    frames = [payloads for _, payloads in h264_frames]
    packets = rtp_packets(frames, 1, 0, 50.0)
    del packets[2]  # an FU-A fragment of the IDR
    events = push_all(JitterBuffer(H264Depacketizer(), audio=False), packets)
    assert isinstance(events[0], FrameLoss)
    keys = [e.timestamp for e in events if isinstance(e, Frame) and e.frame.key]
    assert keys == [20 * 3000]  # the next IDR, with the parameter sets of its STAP-A


# --- Opus (RFC 7587) -----------------------------------------------------------------


def opus_packets(channels: int, count: int) -> list[bytes]:
    layout = "stereo" if channels == 2 else "mono"
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48000, layout, "s16"
    packets = []
    for index in range(count):
        frame = av.AudioFrame(format="s16", layout=layout, samples=960)
        frame.sample_rate, frame.pts = 48000, index * 960
        frame.planes[0].update(random.Random(index).randbytes(frame.planes[0].buffer_size))
        packets.extend(bytes(p) for p in encoder.encode(frame))
    return packets


@pytest.mark.parametrize("channels", [1, 2])
def test_opus_one_packet_a_frame(channels: int) -> None:
    packets = opus_packets(channels, 50)
    assert {opus_channels(p) for p in packets} == {channels}
    buffer = JitterBuffer(OpusDepacketizer(), audio=True)
    rtp = [(i, i * 960, i == 0, p, 10.0 + i * 0.02) for i, p in enumerate(packets)]
    del rtp[5]
    events = push_all(buffer, rtp)
    frames = [e for e in events if isinstance(e, Frame)]
    assert [f.frame.data for f in frames[:5]] == packets[:5]
    assert len(frames) == len(packets) - 1 and all(f.frame.key for f in frames)


# --- clock -------------------------------------------------------------------------------


def test_clock_sender_reports_align_audio_and_video() -> None:
    """Audio and video of one sender, with sender reports: media time is the sender's
    capture time on this server's clock, whatever delays the media had."""
    participant = ParticipantClock(epoch=1000.0, started_at=1.8e9)
    sender = 5000.0  # the sender's clock runs 4,000 s ahead of ours
    audio, video = MediaClock(participant, 48000), MediaClock(participant, 90000)
    # Reports sent at sender time +0.5, arriving 20 ms later.
    audio_report = (ntp_from_unix(sender + 0.5), 123_000, 1000.52)
    video_report = (ntp_from_unix(sender + 0.5), 0xFFFF_FF00, 1000.52)
    # Audio captured at sender time +1.0 arrives at 1001.15 (its own delays: 150 ms).
    audio.anchor(123_000 + 24000, 1001.15, audio_report)
    # Video captured at +1.2 arrives at 1001.4.
    video.anchor((0xFFFF_FF00 + 63000) & 0xFFFFFFFF, 1001.4, video_report)
    assert audio.pts(123_000 + 24000) == round(1.02 * 48000)
    assert video.pts((0xFFFF_FF00 + 63000) & 0xFFFFFFFF) == round(1.22 * 90000)
    # Past the timestamp wrap, the RTP clock alone.
    assert video.pts((0xFFFF_FF00 + 63000 + 90000) & 0xFFFFFFFF) == round(2.22 * 90000)


def test_clock_arrival_without_reports() -> None:
    clock = MediaClock(ParticipantClock(epoch=10.0, started_at=1.8e9), 90000)
    clock.anchor(0xFFFFFFF0, 10.5, None)
    assert clock.pts(0xFFFFFFF0) == 45000
    assert clock.pts(0x10) == 45000 + 0x20


# --- a file from RTP -----------------------------------------------------------------


async def test_recorder_writes_a_decodable_file_across_a_loss(
    tmp_path: Path, vp8_frames: list[list[bytes]]
) -> None:
    """Real RTP packets through a Producer into a TrackRecorder: the recorder asks for a
    key frame at the start and after the loss, skips to the next key frame, and the
    WebM decodes without an error."""
    requests: list[int] = []
    codec = Codec(96, "VP8", 90000)
    producer = Producer("TR_x", "PA_x", "video", "0", [codec], [], "camera", requests.append)
    stream = producer.add_stream(1234, None)
    path = tmp_path / "v.webm"
    recorder = TrackRecorder(producer, path, ParticipantClock(time.monotonic(), time.time()), 0)
    t0 = time.monotonic()
    packets = rtp_packets(vp8_frames, 65000, 1 << 31, t0)
    lost_at = sum(len(p) for p in vp8_frames[:20]) + 1
    del packets[lost_at]
    for seq, ts, marker, payload, now in packets:
        header = _HEADER.pack(0x80, (0x80 if marker else 0) | 96, seq, ts, 1234)
        producer.receive(stream, header + payload, 12, now)
    recorder.finish()
    result = await asyncio.wait_for(recorder.done, 10)
    assert result is not None and result.error is None
    assert recorder.key_frames_requested == 2  # at the start, after the loss
    assert requests[0] == 1234
    assert recorder.frames_lost == 1 and recorder.frames_skipped == 19
    assert result.frames == 40
    assert abs(result.duration - 2.0) < 0.05
    probe = json.loads(
        subprocess.run(
            ["ffprobe", "-v", "error", "-count_frames", "-of", "json", "-show_streams", path],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    )["streams"][0]
    assert (probe["codec_name"], probe["width"], probe["height"]) == ("vp8", WIDTH, HEIGHT)
    assert int(probe["nb_read_frames"]) == 40
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", path, "-f", "null", "-"], capture_output=True, text=True
    )
    assert decoded.returncode == 0 and decoded.stderr == ""


pytestmark = pytest.mark.skipif(
    shutil.which("ffprobe") is None, reason="needs Debian's ffmpeg (tests/run.sh installs it)"
)


# --- any bytes ---------------------------------------------------------------------------

_packet = st.tuples(
    st.integers(0, 0xFFFF),
    st.sampled_from([0, 3000, 0xFFFFFFFF]),
    st.booleans(),
    st.binary(max_size=12),
)


@given(st.sampled_from(["vp8", "h264", "opus"]), st.lists(_packet, max_size=60))
def test_jitter_buffer_takes_any_packets(codec: str, packets: list) -> None:
    """Whatever the packets, push() only returns frames and losses, never raises, and
    the buffer stays within its bound."""
    depacketizer = {
        "vp8": Vp8Depacketizer,
        "h264": H264Depacketizer,
        "opus": OpusDepacketizer,
    }[codec]()
    buffer = JitterBuffer(depacketizer, audio=codec == "opus", max_packets=16)
    for index, (seq, ts, marker, payload) in enumerate(packets):
        for event in buffer.push(seq, ts, marker, payload, index * 0.1):
            assert isinstance(event, Frame | FrameLoss)
        assert len(buffer._packets) <= 17


async def test_recorder_follows_a_new_ssrc_in_the_same_file(
    tmp_path: Path, vp8_frames: list[list[bytes]]
) -> None:
    """The publisher restarts its stream with a new SSRC, sequence numbers and
    timestamps (an ICE restart, a renegotiation): the recording goes on in the same
    file from the new stream's key frame, its timestamps still increasing."""
    codec = Codec(96, "VP8", 90000)
    producer = Producer("TR_x", "PA_x", "video", "0", [codec], [], "camera", lambda ssrc: None)
    path = tmp_path / "v.webm"
    recorder = TrackRecorder(producer, path, ParticipantClock(time.monotonic(), time.time()), 0)
    t0 = time.monotonic()
    runs = [(1234, vp8_frames[:30], 100, 5000, t0), (5678, vp8_frames[40:], 40000, 7, t0 + 1.2)]
    for ssrc, frames, first_seq, first_ts, start in runs:
        stream = producer.add_stream(ssrc, None)
        for seq, ts, marker, payload, now in rtp_packets(frames, first_seq, first_ts, start):
            header = _HEADER.pack(0x80, (0x80 if marker else 0) | 96, seq, ts, ssrc)
            producer.receive(stream, header + payload, 12, now)
    recorder.finish()
    result = await asyncio.wait_for(recorder.done, 10)
    assert result is not None and result.error is None and result.frames == 50
    pts = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "packet=pts", "-of", "csv=p=0", path],
        capture_output=True,
        check=True,
        text=True,
    ).stdout.split()
    assert len(pts) == 50 and [int(p) for p in pts] == sorted({int(p) for p in pts})
    assert abs(int(pts[30]) - 1200) < 50  # the new stream placed by its arrival
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", path, "-f", "null", "-"], capture_output=True, text=True
    )
    assert decoded.returncode == 0 and decoded.stderr == ""
