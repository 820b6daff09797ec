"""RTP padding (RFC 3550 section 5.1) and libwebrtc's padding probes on the packet path.

Publishers pad: libwebrtc sends padding-only packets on the RTX SSRC (or on the media
SSRC without rtx) to probe and to fill its pad-up rate, and before media flows on SSRC
0. Unit tests over bytes through Producer and Consumer (and a Participant of a real
worker, for routing and transport-cc), then one over real UDP/ICE/DTLS/SRTP with the
SFU's own lean clients.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from aiortc.rtcdtlstransport import RTCCertificate
from prometheus_client.parser import text_string_to_metric_families

from sfu.bench.media import Clip, Frame
from sfu.bench.participants import BenchPublisher, BenchSubscriber, _TrackSender
from sfu.client import dev_token
from sfu.config import Settings
from sfu.consumer import Consumer
from sfu.producer import Producer
from sfu.protocol import PublishOfferMessage
from sfu.router import Router
from sfu.rtp.packet import (
    RtpHeader,
    build_rtp_packet,
    read_payload_and_extensions,
)
from sfu.sdp import Codec, LocalTransport, SessionDescription, SsrcGroup
from sfu.worker import Worker
from sfu.worker_api import Grant

FIXTURES = Path(__file__).parent / "fixtures" / "sdp"
VP8_PT, RTX_PT = 96, 97
MEDIA_SSRC, RTX_SSRC = 0x1111, 0x2222
VP8_KEY = b"\x10\x00\x9d\x01\x2a" + bytes(20)  # descriptor S=1 PID=0, key frame header
VP8_DELTA = b"\x10\x01\x00\x00\x00" + bytes(20)  # P=1: a delta frame
VP8_CONTINUATION = b"\x00\x55\x55\x55"  # not a partition start
CHROME_PADDING = 255
"""Padding octets in the padding-only packets of headless Chromium 156 (zeros, then the
count; older libwebrtc sent 224)."""


def rtp(
    seq: int,
    payload: bytes = b"",
    *,
    padding: int = 0,
    marker: bool = False,
    ts: int | None = None,
    ssrc: int = MEDIA_SSRC,
    pt: int = VP8_PT,
) -> bytes:
    return build_rtp_packet(
        payload_type=pt,
        sequence_number=seq & 0xFFFF,
        timestamp=(seq * 3000 if ts is None else ts) & 0xFFFFFFFF,
        ssrc=ssrc,
        payload=payload,
        marker=marker,
        padding_length=padding,
    )


def rtx(rtx_seq: int, original_seq: int | None, payload: bytes = b"", padding: int = 0) -> bytes:
    """An RTX packet (RFC 4588): the original sequence number (None: none, as in
    libwebrtc's padding-only RTX), then the original payload, then padding."""
    osn = b"" if original_seq is None else struct.pack("!H", original_seq & 0xFFFF)
    return rtp(rtx_seq, osn + payload, padding=padding, ssrc=RTX_SSRC, pt=RTX_PT)


class ForwardingPath:
    """A video (or audio) producer with one stream and one active consumer, recording
    what the consumer sends and the NACKs the producer sends."""

    def __init__(self, kind: str = "video") -> None:
        if kind == "video":
            codecs = [Codec(VP8_PT, "VP8", 90000), Codec(RTX_PT, "rtx", 90000, {"apt": "96"})]
        else:
            codecs = [Codec(111, "opus", 48000, 2)]
        self.sent: list[bytes] = []
        self.nacks: list[list[int]] = []
        self.now = 1000.0
        self.producer = Producer(
            "TR_p",
            "PA_pub",
            kind,  # type: ignore[arg-type]
            "0",
            codecs,
            [],
            "camera",
            lambda ssrc: None,
            lambda ssrc, lost: self.nacks.append(lost),
        )
        self.consumer = Consumer("CO_s", self.producer, "PA_sub", self._send)
        self.route = Router().add_producer(self.producer)
        self.route.add(self.consumer)
        self.route.activate(self.consumer, codecs[0].payload_type, None, None)
        self.stream = self.producer.add_stream(MEDIA_SSRC, None)

    def _send(self, header: bytes, payload: bytes) -> None:
        self.sent.append(header + payload)

    def media(self, data: bytes) -> None:
        self.now += 0.01
        start, _ = read_payload_and_extensions(data)
        self.producer.receive(self.stream, data, start, self.now)

    def repair(self, data: bytes) -> None:
        self.now += 0.01
        start, _ = read_payload_and_extensions(data)
        self.producer.receive_rtx(self.stream, data, start, self.now)

    def headers(self) -> list[RtpHeader]:
        return [RtpHeader.parse(p) for p in self.sent]

    def payloads(self) -> list[bytes]:
        return [p[h.payload_offset :] for p, h in zip(self.sent, self.headers(), strict=True)]

    def sequence_steps(self) -> list[int]:
        """The subscriber's sequence numbers, relative to the first one."""
        seqs = [h.sequence_number for h in self.headers()]
        return [(s - seqs[0]) & 0xFFFF for s in seqs]


# --- the header parse -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "padding", "payload_end"),
    [
        (b"media", 0, 12 + 5),
        (b"media", 1, 12 + 5),  # the count octet alone
        (b"media", 7, 12 + 5),
        (b"", CHROME_PADDING, 12),  # padding-only
        (b"", 224, 12),
    ],
)
def test_the_payload_ends_where_the_padding_count_says(payload, padding, payload_end):
    data = rtp(1, payload, padding=padding)
    header = RtpHeader.parse(data)
    assert header.padding == bool(padding) and header.padding_length == padding
    start, _ = read_payload_and_extensions(data)
    assert start == 12 and len(data) - header.padding_length == payload_end


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (rtp(1, b"media" + b"\x00\x00\x00")[:-1] + b"\x00", "padding count is 0"),
        (bytes([0xA0]) + rtp(1, b"ab\x00")[1:-1] + b"\x00", "padding count is 0"),
        (bytes([0xA0]) + rtp(1, b"abc\x05")[1:], "padding count 5 exceeds the 4 bytes"),
        (bytes([0xA0]) + rtp(1)[1:] + b"\x00\x00\xff", "padding count 255 exceeds the 3 bytes"),
    ],
)
def test_malformed_padding_is_refused(data, message):
    data = bytes([data[0] | 0x20]) + data[1:]
    with pytest.raises(ValueError, match=message):
        RtpHeader.parse(data)
    with pytest.raises(ValueError, match=message):
        read_payload_and_extensions(data)


# --- producer and consumer over bytes --------------------------------------------------


def test_padding_is_stripped_from_media_and_the_marker_kept():
    path = ForwardingPath()
    path.media(rtp(100, VP8_KEY, padding=3))
    path.media(rtp(101, VP8_CONTINUATION, padding=1, marker=True))
    path.media(rtp(102, VP8_DELTA, marker=True))
    headers = path.headers()
    assert [h.padding for h in headers] == [False, False, False]
    assert [h.marker for h in headers] == [False, True, True]
    assert path.payloads() == [VP8_KEY, VP8_CONTINUATION, VP8_DELTA]
    assert path.sequence_steps() == [0, 1, 2]
    assert path.producer.padding_dropped == 0
    # The padded marker packet ended a frame: the consumer's own probes may follow it.
    path2 = ForwardingPath()
    path2.media(rtp(7, VP8_KEY, padding=200, marker=True))
    assert len(path2.consumer.padding_packets(1)) == 1


def test_key_frame_detection_never_sees_padding():
    """A packet holding only a VP8 descriptor (S=1): its padding octets after it would
    read as a key frame's payload header (P bit 0)."""
    path = ForwardingPath()
    path.media(rtp(1, b"\x10", padding=4))
    forwarding = path.route.forwardings[path.consumer.id]
    assert path.sent == [] and forwarding.stream is None, "still waiting for a key frame"
    path.media(rtp(2, VP8_KEY, padding=4))
    assert path.payloads() == [VP8_KEY] and forwarding.stream is path.stream


@pytest.mark.parametrize("start", [10, 40000, 65534])
def test_padding_only_media_packets_are_dropped_without_a_gap(start):
    """libwebrtc without rtx pads on the media SSRC between frames: the subscriber sees
    continuous sequence numbers, the NACK generator no loss, the statistics no loss."""
    path = ForwardingPath()
    seq = start
    script = [
        (VP8_KEY, 0, False),
        (VP8_CONTINUATION, 0, True),
        (b"", CHROME_PADDING, False),
        (b"", CHROME_PADDING, False),
        (VP8_DELTA, 0, True),
        (b"", 50, False),
        (VP8_DELTA, 9, True),  # padded media in between
    ]
    for payload, padding, marker in script:
        path.media(rtp(seq, payload, padding=padding, marker=marker))
        seq += 1
    assert path.sequence_steps() == [0, 1, 2, 3]
    assert path.payloads() == [VP8_KEY, VP8_CONTINUATION, VP8_DELTA, VP8_DELTA]
    assert not any(h.padding for h in path.headers())
    assert path.producer.padding_dropped == 3
    statistics = path.stream.statistics
    assert statistics.packets_received == len(script) and statistics.packets_lost == 0
    assert path.nacks == [] and path.stream.nack.missing == []
    block = statistics.report_block(path.now)
    assert block is not None and block.fraction_lost == 0


def test_padding_only_audio_packets_leave_no_gap():
    path = ForwardingPath("audio")
    for seq, padding in [(5, 0), (6, 30), (7, 0)]:
        path.media(rtp(seq, b"" if padding else b"opus", padding=padding, ts=seq * 960, pt=111))
    assert path.sequence_steps() == [0, 1]
    assert path.producer.padding_dropped == 1


@pytest.mark.parametrize("media_seq", [100, 32767, 32769, 40000, 62000, 65000, 65535])
def test_padding_only_rtx_probes_are_dropped(media_seq):
    """libwebrtc's padding-only RTX packets carry no original sequence number: their
    padding octets are zeros. Read as an RTX payload they said "repair of packet 0",
    which (with the media stream's sequence numbers in the upper half) jumped the
    consumer's numbering ahead and dropped every real packet after it."""
    path = ForwardingPath()
    path.media(rtp(media_seq, VP8_KEY))
    path.media(rtp(media_seq + 1, VP8_CONTINUATION, marker=True))
    for rtx_seq in range(3):
        path.repair(rtx(rtx_seq, None, padding=CHROME_PADDING))
    path.repair(rtx(3, None, padding=1))  # the smallest padding-only packet
    for i in range(2, 40):
        path.media(rtp(media_seq + i, VP8_DELTA, marker=True))
    assert path.sequence_steps() == list(range(40))
    assert path.payloads() == [VP8_KEY, VP8_CONTINUATION] + [VP8_DELTA] * 38
    assert path.producer.padding_dropped == 4
    assert path.stream.statistics.packets_received == 40, "RTX probes are not media packets"
    assert path.nacks == [] and path.stream.nack.missing == []


def test_rtx_with_padding_after_a_real_payload_repairs_a_lost_packet():
    path = ForwardingPath()
    path.media(rtp(200, VP8_KEY, marker=True))
    path.media(rtp(202, VP8_DELTA, marker=True))  # 201 lost
    assert path.nacks == [[201]]
    lost_payload = VP8_DELTA + b"\x42"
    path.repair(rtx(1, 201, lost_payload, padding=17))
    assert path.stream.nack.missing == []
    assert path.sequence_steps() == [0, 2, 1]
    assert path.payloads()[2] == lost_payload, "the repair is forwarded without its padding"
    assert not path.headers()[2].padding
    assert path.producer.padding_dropped == 0


def test_rtx_copies_of_received_packets_are_dropped():
    """libwebrtc's payload padding: RTX copies of a recent packet, again and again (17
    of one packet within 30 ms from Chromium 156 at start). The SFU NACKed none of
    them; forwarded, every subscriber of the layer got each again."""
    path = ForwardingPath()
    for seq in range(500, 510):
        path.media(rtp(seq, VP8_KEY if seq == 500 else VP8_DELTA, marker=True))
    for rtx_seq in range(17):
        path.repair(rtx(rtx_seq, 508, VP8_DELTA))
    path.repair(rtx(17, 520, VP8_DELTA))  # ahead of the media stream: not NACKed either
    path.media(rtp(510, VP8_DELTA, marker=True))
    assert path.sequence_steps() == list(range(11))
    assert path.producer.padding_dropped == 18
    assert path.stream.statistics.packets_received == 11
    assert path.stream.nack.missing == [] and path.nacks == []


def test_rtx_of_a_padding_only_packet_repairs_it_without_forwarding():
    """An RTX packet with an original sequence number and only padding after it repairs
    a padding-only packet: the NACK generator stops asking, nothing is forwarded."""
    path = ForwardingPath()
    path.media(rtp(300, VP8_KEY, marker=True))
    path.media(rtp(302, VP8_DELTA, marker=True))  # 301 (padding) lost
    assert path.stream.nack.missing == [301]
    path.repair(rtx(1, 301, padding=CHROME_PADDING))
    assert path.stream.nack.missing == []
    assert len(path.sent) == 2 and path.producer.padding_dropped == 1


# --- a participant of a real worker: routing, malformed padding, transport-cc -----------


CHROME_MID, CHROME_RID, CHROME_RRID, CHROME_TWCC = 4, 10, 11, 3  # chrome-simulcast-offer.sdp


@pytest.fixture
async def worker():
    worker = Worker(Settings(ice_addresses=["127.0.0.1"]))
    await worker.start()
    yield worker
    await worker.stop()


async def chrome_simulcast_publisher(worker: Worker):
    await worker.join("PA_a", Grant(room="r", identity="a", name="a"), lambda m: None)
    offer = (FIXTURES / "chrome-simulcast-offer.sdp").read_text()
    await worker.publish_offer("PA_a", PublishOfferMessage(sdp=offer))
    return worker.participants["PA_a"]


def chrome_packet(ssrc, pt, seq, twcc, payload=b"", padding=0, **sdes: str) -> bytes:
    extensions = {CHROME_TWCC: struct.pack("!H", twcc)}
    for name, extension_id in (("mid", CHROME_MID), ("rid", CHROME_RID), ("rrid", CHROME_RRID)):
        if name in sdes:
            extensions[extension_id] = sdes[name].encode()
    return build_rtp_packet(
        payload_type=pt,
        sequence_number=seq,
        timestamp=seq * 3000,
        ssrc=ssrc,
        payload=payload,
        extensions=extensions,
        padding_length=padding,
    )


async def test_padding_probes_reach_the_transport_cc_feedback(worker):
    """Every packet the publisher sends is in its feedback: padding-only RTX probes,
    and probes before media on SSRC 0 that no stream takes."""
    alice = await chrome_simulcast_publisher(worker)
    producer = alice.producers["1"]
    alice.publisher.on_rtp(chrome_packet(0, RTX_PT, 1, 10, padding=CHROME_PADDING))
    assert alice.packets_unroutable == 1
    alice.publisher.on_rtp(chrome_packet(0x300, VP8_PT, 1, 11, VP8_KEY, mid="1", rid="f"))
    alice.publisher.on_rtp(chrome_packet(0x301, RTX_PT, 1, 12, padding=CHROME_PADDING, rrid="f"))
    alice.publisher.on_rtp(chrome_packet(0x301, RTX_PT, 2, 13, padding=CHROME_PADDING))
    assert alice.publisher._feedback.pending == 4
    assert producer.padding_dropped == 2


@pytest.mark.parametrize(
    "tail",
    [
        b"\x00",  # padding count 0
        b"\x10\x00\x9d\x07",  # count 7, only 4 octets of payload
        bytes(3) + b"\xff",  # count 255
    ],
)
async def test_malformed_padding_is_dropped_and_counted(worker, tail):
    alice = await chrome_simulcast_publisher(worker)
    producer = alice.producers["1"]
    alice.publisher.on_rtp(chrome_packet(0x300, VP8_PT, 1, 1, VP8_KEY, mid="1", rid="f"))
    valid = chrome_packet(0x300, VP8_PT, 2, 2)
    bad = bytes([valid[0] | 0x20]) + valid[1:] + tail
    alice.publisher.on_rtp(bad)
    assert producer.packets_dropped == 1
    assert producer.streams[0x300].statistics.packets_received == 1


# --- over real UDP/ICE/DTLS/SRTP: a scripted publisher and a lean subscriber ----------

UPPER_HALF_SEQUENCE = 40000
"""The publisher's first sequence number: with the old RTX unwrap a zero-padded probe
("repair of packet 0") was newer than this, and froze the subscriber."""
FRAME_INTERVAL = 3000
KEY_FRAME_INTERVAL = 15
WANTED_PACKETS = 150
"""Media packets the subscriber must receive (50 frames, about 1.7 s of the script)."""
MEDIA_TIMEOUT = 30.0
"""Seconds for joining, connecting both transports and receiving them (a loaded CI
machine takes a few)."""


class ScriptedVideo(_TrackSender):
    """Three-packet VP8 frames at 30 fps, every packet's payload unique, with what
    libwebrtc adds: some media packets padded (marker packets too), and after each frame
    a padding-only packet on the media SSRC, two on the RTX SSRC and an RTX copy of the
    frame's first packet (payload padding)."""

    def __init__(self) -> None:
        super().__init__(Clip((Frame(FRAME_INTERVAL, (b"",), True),), 90000), VP8_PT, "0")
        self.sequence = UPPER_HALF_SEQUENCE
        self.rtx_ssrc = (self.ssrc + 1) & 0xFFFFFFFF or 1
        self.rtx_sequence = 0
        self.sent: list[tuple[int, bytes, bool]] = []
        """(sequence number, payload, marker) of every media packet."""
        self.probes_sent = 0
        """Padding-only packets and RTX copies of sent packets."""

    def _packet(self, ssrc: int, seq: int, payload: bytes, marker: bool, padding: int) -> bytes:
        first = 0x80 | (0x10 if self._extension else 0) | (0x20 if padding else 0)
        header = struct.pack(
            "!BBHII", first, (0x80 if marker else 0) | VP8_PT, seq, self.timestamp, ssrc
        )
        tail = bytes(padding - 1) + bytes((padding,)) if padding else b""
        return header + self._extension + payload + tail

    async def run(self, send_rtp: Callable[[bytes], None]) -> None:
        frame = 0
        while True:
            key = frame % KEY_FRAME_INTERVAL == 0
            tag = struct.pack("!I", frame)
            payloads = [(VP8_KEY if key else VP8_DELTA) + tag, b"\x00\x01" + tag, b"\x00\x02" + tag]
            for index, payload in enumerate(payloads):
                marker = index == len(payloads) - 1
                padding = (0, 7, 1, 224)[(frame + index) % 4]
                send_rtp(self._packet(self.ssrc, self.sequence, payload, marker, padding))
                self.sent.append((self.sequence, payload, marker))
                self.sequence = (self.sequence + 1) & 0xFFFF
            send_rtp(self._packet(self.ssrc, self.sequence, b"", False, CHROME_PADDING))
            self.sequence = (self.sequence + 1) & 0xFFFF
            first_seq, first_payload, _ = self.sent[-len(payloads)]
            for payload, padding in (
                (b"", CHROME_PADDING),
                (b"", CHROME_PADDING),
                (struct.pack("!H", first_seq) + first_payload, 0),  # payload padding
            ):
                rtx = self._packet(self.rtx_ssrc, self.rtx_sequence, payload, False, padding)
                send_rtp(bytes((rtx[0],)) + bytes((RTX_PT,)) + rtx[2:])
                self.rtx_sequence = (self.rtx_sequence + 1) & 0xFFFF
            self.probes_sent += 4
            frame += 1
            self.timestamp = (self.timestamp + FRAME_INTERVAL) & 0xFFFFFFFF
            await asyncio.sleep(1 / 30)


class PaddingPublisher(BenchPublisher):
    """A BenchPublisher of one :class:`ScriptedVideo` with rtx negotiated (FID group)."""

    def __init__(self, url: str, token: str, certificate: RTCCertificate) -> None:
        super().__init__(url, token, certificate, [Clip((), 90000)])
        self.script = ScriptedVideo()
        self.video = [self.script]
        self.tracks = [self.script]

    def _offer(self, local: LocalTransport) -> SessionDescription:
        offer = super()._offer(local)
        section = offer.media[0]
        section.codecs.append(Codec(RTX_PT, "rtx", 90000, parameters={"apt": str(VP8_PT)}))
        section.formats.append(str(RTX_PT))
        section.ssrcs[self.script.rtx_ssrc] = dict(section.ssrcs[self.script.ssrc])
        section.ssrc_groups.append(SsrcGroup("FID", [self.script.ssrc, self.script.rtx_ssrc]))
        return offer


class RecordingSubscriber(BenchSubscriber):
    """Keeps every media packet it receives."""

    def __init__(self, url: str, token: str, certificate: RTCCertificate) -> None:
        super().__init__(url, token, certificate)
        self.packets: list[bytes] = []

    def _on_rtp(self, data: bytes) -> None:
        if struct.unpack_from("!I", data, 8)[0] in self.expected_ssrcs:
            self.packets.append(bytes(data))
        super()._on_rtp(data)


def dropped_padding(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "sfu_rtp_dropped_packets_total"
        and sample.labels.get("reason") == "padding"
    )


async def test_a_subscriber_gets_stripped_continuous_media_from_a_padding_publisher(sfu_server):
    room = f"padding-{uuid.uuid4().hex[:8]}"
    ws_url = sfu_server.replace("http://", "ws://") + "/ws"
    certificate = RTCCertificate.generateCertificate()
    subscriber = RecordingSubscriber(ws_url, await dev_token(sfu_server, room, "sub"), certificate)
    publisher = PaddingPublisher(ws_url, await dev_token(sfu_server, room, "pub"), certificate)
    before = await asyncio.to_thread(dropped_padding, sfu_server)
    tasks = [asyncio.create_task(subscriber.run()), asyncio.create_task(publisher.run())]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MEDIA_TIMEOUT
    try:
        while len(subscriber.packets) < WANTED_PACKETS and loop.time() < deadline:
            assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
            await asyncio.sleep(0.1)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await publisher.close()
        await subscriber.close()
    await asyncio.sleep(0.2)  # the last packets in flight reach the server's counters
    dropped = await asyncio.to_thread(dropped_padding, sfu_server) - before

    headers = [RtpHeader.parse(p) for p in subscriber.packets]
    seqs = [h.sequence_number for h in headers]
    steps = [(b - a) & 0xFFFF for a, b in itertools.pairwise(seqs)]
    assert len(headers) >= WANTED_PACKETS, (
        f"the subscriber got {len(headers)} media packets in {MEDIA_TIMEOUT:.0f} s"
        f" (publisher sent {len(publisher.script.sent)}); sequence steps {sorted(set(steps))}"
    )
    assert not any(h.padding for h in headers), "no P bit reaches the subscriber"
    assert set(steps) == {1}, f"sequence numbers not continuous: steps {sorted(set(steps))}"
    received = [
        (p[h.payload_offset :], h.marker) for p, h in zip(subscriber.packets, headers, strict=True)
    ]
    sent = [(payload, marker) for _, payload, marker in publisher.script.sent]
    first = sent.index(received[0])
    assert received == sent[first : first + len(received)], "payloads are the publisher's, unpadded"
    assert subscriber.session is not None and subscriber.session.srtp_errors == 0, (
        "a packet reached the subscriber twice (its SRTP replay check dropped the copy)"
    )
    assert dropped == publisher.script.probes_sent, "every probe is counted"
