"""Producer → Consumer forwarding over bytes: rewriting, key frames, NACK cache, SRs."""

import asyncio
import struct

import pytest

from sfu.consumer import RETRANSMISSION_CACHE_SIZE, Consumer
from sfu.keyframe_request_manager import KeyFrameRequestManager
from sfu.producer import Producer
from sfu.router import ProducerRoute, Router
from sfu.rtp.packet import RtpHeader, build_rtp_packet, payload_offset
from sfu.rtp.receive_statistics import ReceiveStatistics
from sfu.rtp.rtcp import ntp_from_unix
from sfu.rtp.vp8 import Vp8Descriptor
from sfu.sdp import Codec

VP8_KEY = b"\x10\x00\x9d\x01\x2a"  # descriptor S=1 PID=0, frame header P=0
VP8_DELTA = b"\x10\x01\x00\x00\x00"  # P=1
VP8_CONTINUATION = b"\x00\x55\x55"  # not a partition start


class Recorder:
    def __init__(self):
        self.packets: list[bytes] = []
        self.plis: list[int] = []

    def send(self, header: bytes, payload: bytes) -> None:
        self.packets.append(header + payload)

    def headers(self) -> list[RtpHeader]:
        return [RtpHeader.parse(p) for p in self.packets]


def make_producer(kind="video", recorder=None) -> Producer:
    codec = Codec(96, "VP8", 90000) if kind == "video" else Codec(109, "opus", 48000, 2)
    return Producer(
        "TR_x",
        "PA_pub",
        kind,
        "0",
        [codec],
        [],
        "camera",
        (recorder or Recorder()).plis.append,
    )


def route_of(producer: Producer) -> ProducerRoute:
    """The producer's route in a router of its own (made on first use)."""
    listener = producer.listener
    return listener if isinstance(listener, ProducerRoute) else Router().add_producer(producer)


def make_consumer(producer: Producer, recorder: Recorder, payload_type=96) -> Consumer:
    route = route_of(producer)
    consumer = Consumer(f"CO_{len(route.forwardings)}", producer, "PA_sub", recorder.send)
    route.add(consumer)
    route.activate(consumer, payload_type, None, None)
    return consumer


def stream_of(consumer: Consumer):
    """The stream the consumer forwards now, by its route."""
    return route_of(consumer.producer).forwardings[consumer.id].stream


def feed(producer: Producer, seq: int, ts: int, payload: bytes, marker=False, ssrc=0xAAAA):
    stream = producer.streams.get(ssrc) or producer.add_stream(ssrc, None)
    data = build_rtp_packet(
        payload_type=producer.codec.payload_type,
        sequence_number=seq,
        timestamp=ts,
        ssrc=ssrc,
        payload=payload,
        marker=marker,
        extensions={1: b"0"},
    )
    producer.receive(stream, data, payload_offset(data), now=1000.0 + seq / 100)


async def test_video_consumer_starts_on_key_frame_and_rewrites_header():
    pub, sub = Recorder(), Recorder()
    producer = make_producer(recorder=pub)
    consumer = make_consumer(producer, sub, payload_type=98)
    feed(producer, 10, 9000, VP8_DELTA)
    assert sub.packets == [], "delta frames before the first key frame are not forwarded"
    feed(producer, 11, 12000, VP8_KEY)
    feed(producer, 12, 12000, VP8_CONTINUATION, marker=True)
    feed(producer, 13, 15000, VP8_DELTA)
    headers = sub.headers()
    assert [h.payload_type for h in headers] == [98, 98, 98]
    assert {h.ssrc for h in headers} == {consumer.ssrc}
    assert [h.marker for h in headers] == [False, True, False]
    seqs = [h.sequence_number for h in headers]
    assert seqs == [seqs[0], (seqs[0] + 1) & 0xFFFF, (seqs[0] + 2) & 0xFFFF]
    ts = [h.timestamp for h in headers]
    assert (ts[1] - ts[0]) & 0xFFFFFFFF == 0 and (ts[2] - ts[0]) & 0xFFFFFFFF == 3000
    assert headers[0].extensions == {}, "the publisher's header extensions are not forwarded"
    assert sub.packets[0].endswith(VP8_KEY)
    assert pub.plis, "a new video consumer asks the publisher for a key frame"


@pytest.mark.parametrize("start", [65533, 0xFFFF, 0, 40000])
def test_sequence_numbers_stay_continuous_across_source_wraparound(start):
    sub = Recorder()
    producer = make_producer("audio")
    make_consumer(producer, sub, payload_type=111)
    for i in range(6):
        feed(producer, (start + i) & 0xFFFF, (0xFFFFFF00 + 960 * i) & 0xFFFFFFFF, b"opus")
    seqs = [h.sequence_number for h in sub.headers()]
    assert [(s - seqs[0]) & 0xFFFF for s in seqs] == [0, 1, 2, 3, 4, 5]
    ts = [h.timestamp for h in sub.headers()]
    assert [(t - ts[0]) & 0xFFFFFFFF for t in ts] == [960 * i for i in range(6)]


async def test_restart_continues_where_the_subscriber_stopped():
    sub = Recorder()
    producer = make_producer()
    consumer = make_consumer(producer, sub)
    feed(producer, 100, 1000, VP8_KEY)
    feed(producer, 101, 4000, VP8_DELTA)
    route_of(producer).restart(consumer)
    feed(producer, 500, 90000, VP8_DELTA)  # dropped: waiting for a key frame again
    feed(producer, 501, 93000, VP8_KEY)
    seqs = [h.sequence_number for h in sub.headers()]
    assert len(seqs) == 3
    assert (seqs[2] - seqs[1]) & 0xFFFF == 1, "no gap or jump back after a restart"
    ts = [h.timestamp for h in sub.headers()]
    assert 0 < (ts[2] - ts[1]) & 0xFFFFFFFF < 1 << 31, "timestamps only move forward"


def test_out_of_order_packets_keep_their_relative_order():
    sub = Recorder()
    producer = make_producer("audio")
    make_consumer(producer, sub, payload_type=111)
    for seq in (10, 12, 11, 13):
        feed(producer, seq, seq * 960, b"a")
    seqs = [h.sequence_number for h in sub.headers()]
    base = seqs[0]
    assert [(s - base) & 0xFFFF for s in seqs] == [0, 2, 1, 3]


def test_inactive_consumer_and_muted_producer_forward_nothing():
    sub = Recorder()
    producer = make_producer("audio")
    consumer = make_consumer(producer, sub, payload_type=111)
    consumer.deactivate()
    feed(producer, 1, 960, b"a")
    route_of(producer).activate(consumer, 111, None, None)
    producer.muted = True
    feed(producer, 2, 1920, b"a")
    assert sub.packets == []
    producer.muted = False
    feed(producer, 3, 2880, b"a")
    assert len(sub.packets) == 1


def test_fan_out_gives_each_consumer_its_own_ssrc_and_sequence():
    producer = make_producer("audio")
    subs = [Recorder() for _ in range(3)]
    for recorder in subs:
        make_consumer(producer, recorder, payload_type=111)
    for seq in range(4):
        feed(producer, seq, seq * 960, b"a")
    assert [len(r.packets) for r in subs] == [4, 4, 4]
    assert len({r.headers()[0].ssrc for r in subs}) == 3


def test_nack_is_served_from_the_retransmission_cache():
    sub = Recorder()
    producer = make_producer("audio")
    consumer = make_consumer(producer, sub, payload_type=111)
    for seq in range(RETRANSMISSION_CACHE_SIZE + 10):
        feed(producer, seq, seq * 960, struct.pack("!I", seq))
    sent = sub.headers()
    recent = sent[-5].sequence_number
    evicted = sent[0].sequence_number
    original = sub.packets[-5]
    assert consumer.retransmit([recent, evicted], now=1.0) == 1
    assert sub.packets[-1] == original, "the same packet again (same SSRC and sequence)"
    assert consumer.retransmissions == 1 and consumer.nacks_received == 1


async def test_nack_is_answered_on_the_rtx_stream_when_negotiated():
    sub = Recorder()
    producer = make_producer("video")
    consumer = make_consumer(producer, sub, payload_type=98)
    consumer.activate(98, rtx_payload_type=99)  # already active: only records rtx
    feed(producer, 1, 9000, VP8_KEY)
    feed(producer, 2, 9000, VP8_CONTINUATION, marker=True)
    feed(producer, 3, 12000, VP8_DELTA, marker=True)
    first, second, _ = sub.headers()
    assert consumer.retransmit([second.sequence_number, first.sequence_number], now=1.0) == 2
    rtx = [RtpHeader.parse(p) for p in sub.packets[3:]]
    assert [h.payload_type for h in rtx] == [99, 99]
    assert {h.ssrc for h in rtx} == {consumer.rtx_ssrc} != {consumer.ssrc}
    assert rtx[1].sequence_number == (rtx[0].sequence_number + 1) & 0xFFFF
    assert [h.timestamp for h in rtx] == [second.timestamp, first.timestamp]
    assert [h.marker for h in rtx] == [True, False]
    # The payload: the original sequence number, then the original payload (RFC 4588).
    for packet, original in zip(sub.packets[3:], (sub.packets[1], sub.packets[0]), strict=True):
        assert packet[12:14] == original[2:4]
        assert packet[14:] == original[12:]


def test_audio_consumers_have_no_rtx_stream():
    consumer = make_consumer(make_producer("audio"), Recorder(), payload_type=111)
    consumer.activate(111, rtx_payload_type=112)
    assert consumer.rtx_ssrc is None and consumer.rtx_payload_type is None


def vp8_frame(picture_id: int, tl0: int, tid: int, key: bool = False, sync: bool = False) -> bytes:
    descriptor = Vp8Descriptor(
        start_of_partition=True,
        picture_id=picture_id,
        picture_id_length=15,
        tl0picidx=tl0,
        tid=tid,
        layer_sync=sync,
    )
    return bytes(descriptor) + (b"\x00\x9d\x01\x2a" if key else b"\x01\x00\x00")


def test_temporal_layers_above_the_target_are_dropped_without_gaps():
    sub = Recorder()
    producer = make_producer("video")
    consumer = make_consumer(producer, sub, payload_type=98)
    consumer.set_target_temporal_layer(0)
    # L1T3: TIDs 0 2 1 2 0 2 1 2 ..., one packet per frame.
    tids = [0, 2, 1, 2, 0, 2, 1, 2, 0]
    tl0 = 0
    for index, tid in enumerate(tids):
        tl0 += tid == 0
        feed(producer, 50 + index, index * 3000, vp8_frame(700 + index, tl0, tid, index == 0), True)
    headers = sub.headers()
    assert len(headers) == 3 and consumer.packets_dropped_temporal == 6
    sequence_numbers = [h.sequence_number for h in headers]
    assert sequence_numbers == [(sequence_numbers[0] + i) & 0xFFFF for i in range(3)]
    descriptors = [Vp8Descriptor.parse(p[12:]) for p in sub.packets]
    assert [d.picture_id for d in descriptors] == [700, 701, 702]
    assert [d.tl0picidx for d in descriptors] == [1, 2, 3]
    assert consumer.current_temporal_layer == 0

    # Raised: a layer at a time, each from a frame of it with the layer-sync bit (it
    # refers only to TL0 frames); a non-sync TID 2 frame may refer to dropped ones.
    consumer.set_target_temporal_layer(None)
    frames = [(2, False), (1, True), (2, False), (0, False), (2, True), (1, False), (2, False)]
    for index, (tid, sync) in enumerate(frames, start=len(tids)):
        tl0 += tid == 0
        payload = vp8_frame(700 + index, tl0, tid, sync=sync)
        feed(producer, 50 + index, index * 3000, payload, True)
    descriptors = [Vp8Descriptor.parse(p[12:]) for p in sub.packets[3:]]
    assert [(d.tid, d.picture_id) for d in descriptors] == [
        (1, 703),
        (0, 704),
        (2, 705),
        (1, 706),
        (2, 707),
    ]
    assert consumer.current_temporal_layer == 2
    sequence_numbers = [h.sequence_number for h in sub.headers()]
    assert sequence_numbers == [(sequence_numbers[0] + i) & 0xFFFF for i in range(8)]


async def test_a_key_frame_lifts_the_temporal_limit_at_once():
    sub = Recorder()
    producer = make_producer("video")
    consumer = make_consumer(producer, sub, payload_type=98)
    consumer.set_target_temporal_layer(0)
    feed(producer, 1, 0, vp8_frame(10, 1, 0, key=True), True)
    feed(producer, 2, 3000, vp8_frame(11, 1, 2), True)  # dropped
    consumer.set_target_temporal_layer(None)
    feed(producer, 3, 6000, vp8_frame(12, 2, 0, key=True), True)
    feed(producer, 4, 9000, vp8_frame(13, 2, 2), True)
    assert [Vp8Descriptor.parse(p[12:]).tid for p in sub.packets] == [0, 0, 2]
    assert consumer.current_temporal_layer is None


def test_sender_report_is_translated_from_the_publishers():
    sub = Recorder()
    producer = make_producer("audio")
    consumer = make_consumer(producer, sub, payload_type=111)
    assert consumer.sender_report(1000.0, 5000.0, None) is None, "no SR before anything sent"
    feed(producer, 1, 48000, b"a")
    stream = next(iter(producer.streams.values()))
    stream.statistics.add_sender_report(ntp_from_unix(1000.0), 48000, now=1000.0)
    out_ts = sub.headers()[0].timestamp
    report = consumer.sender_report(1000.5, 5000.0, producer.timestamp_mapping(stream))
    assert report is not None
    assert report.ssrc == consumer.ssrc
    assert report.rtp_timestamp == (out_ts + 24000) & 0xFFFFFFFF
    assert abs(report.ntp_timestamp - ntp_from_unix(1000.5)) < 1 << 20, "publisher's NTP"
    assert report.packet_count == 1 and report.octet_count == 1


@pytest.mark.parametrize("wall", [5000.0, 5000.0 + 3600, 5000.0 - 3600])
def test_round_trip_time_comes_from_when_the_quoted_report_was_made(wall: float):
    """RTT = monotonic time since the SR the receiver report quotes, minus its delay:
    neither the publisher's NTP clock (copied into the SR) nor a step of this machine's
    wall clock moves it."""
    sub = Recorder()
    producer = make_producer("audio")
    consumer = make_consumer(producer, sub, payload_type=111)
    feed(producer, 1, 48000, b"a")
    stream = next(iter(producer.streams.values()))
    stream.statistics.add_sender_report(ntp_from_unix(1.7e9), 48000, now=100.0)
    report = consumer.sender_report(100.0, wall, producer.timestamp_mapping(stream))
    assert report is not None
    lsr = (report.ntp_timestamp >> 16) & 0xFFFFFFFF
    consumer.on_report_block(lsr, int(0.02 * 65536), 100.07)
    assert consumer.rtt == pytest.approx(0.05, abs=1e-4)
    consumer.on_report_block(lsr ^ 1, 0, 130.0)
    consumer.on_report_block(0, 0, 130.0)
    assert consumer.rtt == pytest.approx(0.05, abs=1e-4), "unknown or no SR: unchanged"


async def test_key_frame_requests_are_throttled_per_stream():
    pub = Recorder()
    producer = make_producer(recorder=pub)
    feed(producer, 1, 0, VP8_DELTA)
    assert pub.plis == [], "no consumer, no key frame request"
    make_consumer(producer, Recorder())
    assert len(pub.plis) == 1, "a new consumer's stream is asked for a key frame at once"
    stream = producer.streams[0xAAAA]
    for _ in range(10):
        producer.request_key_frame(stream)
    assert len(pub.plis) == 1, "requests within the interval wait"
    await asyncio.sleep(0.4)
    assert len(pub.plis) == 2, "and are folded into one retry"
    await asyncio.sleep(0.4)
    assert len(pub.plis) == 2


async def test_a_subscribers_picture_loss_asks_for_its_own_layer_only():
    pub, sub = Recorder(), Recorder()
    producer = Producer(
        "TR_x",
        "PA_pub",
        "video",
        "0",
        [Codec(96, "VP8", 90000)],
        ["q", "h", "f"],
        "camera",
        pub.plis.append,
    )
    q, h, f = (producer.add_stream(ssrc, rid) for ssrc, rid in ((1, "q"), (2, "h"), (3, "f")))
    consumer = make_consumer(producer, sub)
    route_of(producer).set_target_layer(consumer, 1)
    await asyncio.sleep(0.35)  # past the throttle of the requests the start made
    pub.plis.clear()
    route_of(producer).request_key_frame(
        consumer
    )  # still waiting: the layer it waits for is asked again
    assert pub.plis == [h.ssrc]
    key_frame = build_rtp_packet(
        payload_type=96, sequence_number=7, timestamp=0, ssrc=h.ssrc, payload=VP8_KEY
    )
    producer.receive(h, key_frame, 12, now=1000.0)
    assert stream_of(consumer) is h
    await asyncio.sleep(0.35)  # past the throttle of the requests the switch made
    pub.plis.clear()
    route_of(producer).request_key_frame(consumer)  # what a PLI or FIR from the subscriber does
    assert pub.plis == [h.ssrc]
    assert {q.ssrc, f.ssrc}.isdisjoint(pub.plis)


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([("request", 0.0)], [0.0]),
        ([("request", 0.0), ("request", 0.1)], [0.0, pytest.approx(0.2)]),
        ([("request", 0.0), ("request", 0.1), ("request", 0.2)], [0.0, pytest.approx(0.2), None]),
        ([("request", 0.0), ("request", 0.5)], [0.0, 0.0]),
    ],
)
def test_key_frame_request_manager(events, expected):
    manager = KeyFrameRequestManager(min_interval=0.3)
    assert [manager.request(now) for _, now in events] == expected


def test_key_frame_request_manager_retry_is_cancelled_by_a_key_frame():
    manager = KeyFrameRequestManager(min_interval=0.3)
    manager.request(0.0)
    manager.request(0.1)
    manager.key_frame_received()
    assert manager.retry(0.3) is False
    assert manager.requests_sent == 1


def test_receive_statistics_report_loss_jitter_and_lsr():
    stats = ReceiveStatistics(ssrc=5, clock_rate=90000)
    assert stats.report_block(0.0) is None
    for i, seq in enumerate([65534, 65535, 1, 2]):  # seq 0 lost across the wrap
        stats.add(seq, i * 3000, 100, now=i / 30)
    stats.add_sender_report(ntp_from_unix(100.0), 3000, now=1.0)
    block = stats.report_block(now=1.5)
    assert block is not None
    assert block.ssrc == 5
    assert block.packets_lost == 1
    assert block.fraction_lost == 256 // 5
    assert block.highest_sequence == 65536 + 2
    assert block.jitter < 5, "packets arrived exactly on their timestamps"
    assert block.lsr == (ntp_from_unix(100.0) >> 16) & 0xFFFFFFFF
    assert block.dlsr == 32768
    second = stats.report_block(now=2.0)
    assert second is not None and second.fraction_lost == 0, "the fraction is per interval"


async def test_padding_probes_are_numbered_between_frames():
    sub = Recorder()
    producer = make_producer()
    consumer = make_consumer(producer, sub)
    feed(producer, 10, 3000, VP8_KEY)
    assert consumer.padding_packets(2) == [], "not in the middle of a frame"
    feed(producer, 11, 3000, VP8_CONTINUATION, marker=True)
    padding = [header + payload for header, payload in consumer.padding_packets(2)]
    feed(producer, 12, 6000, VP8_DELTA)
    headers = [RtpHeader.parse(p) for p in padding]
    assert [h.padding for h in headers] == [True, True]
    assert all(h.ssrc == consumer.ssrc and h.payload_type == 96 for h in headers)
    media = sub.headers()
    seqs = [media[1].sequence_number, *(h.sequence_number for h in headers)]
    seqs.append(media[2].sequence_number)
    assert [(s - seqs[0]) & 0xFFFF for s in seqs] == [0, 1, 2, 3]
    assert headers[0].timestamp == media[1].timestamp


async def test_probes_are_padding_on_the_media_stream_with_rtx_negotiated_too():
    sub = Recorder()
    producer = make_producer()
    consumer = make_consumer(producer, sub)
    consumer.activate(96, rtx_payload_type=97)
    feed(producer, 10, 3000, VP8_KEY, marker=True)
    headers = [RtpHeader.parse(h + p) for h, p in consumer.padding_packets(2)]
    assert [(h.padding, h.ssrc, h.payload_type) for h in headers] == [(True, consumer.ssrc, 96)] * 2


H264_STAP_A_KEY = bytes([24, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xCE, 0, 2, 0x65, 0x88])
"""One packet key frame (STAP-A of SPS, PPS and an IDR slice), as Chrome's lowest
H.264 simulcast layer sends it."""
H264_DELTA = bytes([0x41, 0x9A, 0x00])  # a non-IDR slice


async def test_a_layer_switch_never_starts_on_a_retransmitted_key_frame():
    """A publisher's RTX probe (a copy of a packet it sent long ago, here an old key
    frame) must not be a switch point: the subscriber would decode that frame, then
    wait for everything between it and the live stream, frozen until the next key
    frame. Seen with Chrome's H.264 simulcast, whose lowest layer's key frames are one
    packet each."""
    pub, sub = Recorder(), Recorder()
    producer = Producer(
        "TR_x",
        "PA_pub",
        "video",
        "0",
        [Codec(102, "H264", 90000)],
        ["q", "h"],
        "camera",
        pub.plis.append,
    )
    q, h = producer.add_stream(1, "q"), producer.add_stream(2, "h")
    consumer = make_consumer(producer, sub, payload_type=102)

    def send(stream, seq, ts, payload, marker=True):
        data = build_rtp_packet(
            payload_type=102, sequence_number=seq, timestamp=ts, ssrc=stream.ssrc,
            payload=payload, marker=marker,
        )  # fmt: skip
        producer.receive(stream, data, 12, now=1000.0 + seq / 100)

    send(h, 500, 0, H264_STAP_A_KEY)
    assert stream_of(consumer) is h
    for seq in range(10, 13):  # q flows; nobody watches it yet
        send(q, seq, seq * 3000, H264_STAP_A_KEY if seq == 10 else H264_DELTA)
    route_of(producer).set_target_layer(consumer, 0)
    send(q, 10, 30000, H264_STAP_A_KEY)  # the probe: a copy of the old key frame
    assert stream_of(consumer) is h, "switched on a retransmission"
    send(q, 13, 39000, H264_DELTA)
    send(q, 14, 42000, H264_STAP_A_KEY)
    assert stream_of(consumer) is q
    seqs = [header.sequence_number for header in sub.headers()]
    assert seqs == [seqs[0], (seqs[0] + 1) & 0xFFFF], "h's key frame, then q's new one"


def test_an_h264_layer_learns_its_size_from_the_sps_of_its_key_frames():
    """The allocator caps a layer by the size the subscriber renders: H.264 layers need
    their width and height as much as VP8 ones (from the SPS in front of each IDR)."""
    producer = Producer(
        "TR_x", "PA_pub", "video", "0", [Codec(102, "H264", 90000)], [], "camera", print
    )
    stream = producer.add_stream(1, None)
    make_consumer(producer, Recorder(), payload_type=102)
    sps = bytes.fromhex("6742c00c8c8d41422f2cd41818181e1108d400")  # Chromium's q layer
    key_frame = bytes([24, 0, len(sps)]) + sps + bytes.fromhex("0004 68ce3c80")
    data = build_rtp_packet(
        payload_type=102, sequence_number=1, timestamp=0, ssrc=1, payload=key_frame
    )
    producer.receive(stream, data, 12, now=1000.0)
    assert (stream.width, stream.height) == (160, 120)


def test_a_layer_nobody_watches_learns_its_size_too():
    producer = Producer(
        "TR_x", "PA_pub", "video", "0", [Codec(102, "H264", 90000)], ["q", "h"], "camera", print
    )
    q = producer.add_stream(1, "q")
    sps = bytes.fromhex("6742c00c8c8d41422f2cd41818181e1108d400")
    key_frame = bytes([24, 0, len(sps)]) + sps + bytes.fromhex("0004 68ce3c80")
    data = build_rtp_packet(
        payload_type=102, sequence_number=1, timestamp=0, ssrc=1, payload=key_frame
    )
    producer.receive(q, data, 12, now=1000.0)
    assert not producer.listener.wants(q) and (q.width, q.height) == (160, 120)
