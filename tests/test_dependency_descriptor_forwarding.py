"""AV1 with the dependency descriptor from producer to subscriber, over bytes.

Chromium's L1T3 descriptors (``fixtures/dependency_descriptor``) go into a real
:class:`Producer` with AV1 payloads; what an AV1 consumer whose subscriber negotiated the
descriptor sends is read back as a subscriber reads it: continuous sequence numbers over
the frames its selector drops, a descriptor on every packet (the structure first), frame
numbers that only increase, and its retransmissions (RTX too) with the descriptor. A
malformed descriptor drops its packet, counted, without a gap; the transport-wide
sequence number joins the consumer's extension block.
"""

from __future__ import annotations

import asyncio
import struct
from itertools import pairwise
from typing import Any

from test_bandwidth_controller import controller
from test_dependency_descriptor import golden
from test_forwarding import Recorder

from sfu.consumer import Consumer
from sfu.keyframe_request_manager import MIN_REQUEST_INTERVAL
from sfu.metrics.worker import _producer_counts
from sfu.producer import Producer
from sfu.router import Router
from sfu.rtp.dependency_descriptor import (
    FrameDependencyStructure,
    parse_dependency_descriptor,
)
from sfu.rtp.packet import RtpHeader, build_rtp_packet, payload_offset, read_header_extensions
from sfu.sdp import Codec

AV1_PT = 45
DESCRIPTOR_ID = 4
"""The id the subscriber negotiated (subscribe offers use 4)."""
PUBLISHER_DESCRIPTOR_ID = 11
"""The publisher's id, which the producer never sees (its session reads the value)."""
AV1_KEY = b"\x18\x0a\x0b"
"""Aggregation header with N (a new coded video sequence) and an OBU's first bytes."""
AV1_DELTA = b"\x10\x32\x00"


def av1_producer(plis: list[int]) -> Producer:
    return Producer(
        "TR_av1", "PA_pub", "video", "0", [Codec(AV1_PT, "AV1", 90000)], [], "camera",
        plis.append,
    )  # fmt: skip


def av1_consumer(producer: Producer, send: Any, rtx: bool = False) -> Consumer:
    router = Router()
    router.add_producer(producer)
    consumer = Consumer("CO_av1", producer, "PA_sub", send)
    router.add_consumer(consumer)
    consumer.use_dependency_descriptor(DESCRIPTOR_ID)
    router.activate(consumer, AV1_PT, 46 if rtx else None)
    return consumer


def feed(producer: Producer, seq: int, ts: int, marker: bool, descriptor: bytes) -> None:
    stream = producer.streams.get(0xA1) or producer.add_stream(0xA1, None)
    data = build_rtp_packet(
        payload_type=AV1_PT,
        sequence_number=seq,
        timestamp=ts,
        ssrc=0xA1,
        payload=AV1_KEY if descriptor[0] & 0x80 and len(descriptor) > 3 else AV1_DELTA,
        marker=marker,
        extensions={PUBLISHER_DESCRIPTOR_ID: descriptor},
    )
    producer.receive(stream, data, payload_offset(data), 1000.0 + seq / 1000, descriptor)


def feed_capture(producer: Producer, name: str = "chromium-av1-l1t3") -> int:
    """Every captured packet into ``producer``; returns how many."""
    packets = golden(name)
    for seq, ts, marker, descriptor in packets:
        feed(producer, seq, ts, marker, descriptor)
    return len(packets)


class Subscriber:
    """Reads what a consumer sent as a receiver does: the descriptor by its id, parsed
    with the last structure received."""

    def __init__(self, packets: list[bytes]) -> None:
        self.headers = [RtpHeader.parse(p) for p in packets]
        self.structure: FrameDependencyStructure | None = None
        self.frames: list[int] = []
        self.temporal_ids: list[int] = []
        for packet in packets:
            value = read_header_extensions(packet)[DESCRIPTOR_ID]
            descriptor = parse_dependency_descriptor(value, self.structure)
            self.structure = descriptor.attached_structure or self.structure
            if not self.frames or self.frames[-1] != descriptor.frame_number:
                self.frames.append(descriptor.frame_number)
                self.temporal_ids.append(descriptor.frame.temporal_id)

    @property
    def sequence_steps(self) -> set[int]:
        seqs = [h.sequence_number for h in self.headers]
        return {(b - a) & 0xFFFF for a, b in pairwise(seqs)}


def test_every_layer_is_forwarded_with_the_descriptor_as_received() -> None:
    plis: list[int] = []
    producer = av1_producer(plis)
    sub = Recorder()
    av1_consumer(producer, sub.send)
    total = feed_capture(producer)
    received = Subscriber(sub.packets)
    assert len(sub.packets) == total
    assert received.sequence_steps == {1}
    first = read_header_extensions(sub.packets[0])[DESCRIPTOR_ID]
    assert first == golden("chromium-av1-l1t3")[0][3], "the key frame's structure, unchanged"
    assert received.frames == sorted(received.frames)
    assert set(received.temporal_ids) == {0, 1, 2}


def test_a_temporal_cap_drops_frames_without_gaps_in_sequence_numbers() -> None:
    producer = av1_producer([])
    sub = Recorder()
    consumer = av1_consumer(producer, sub.send)
    consumer.set_preferences(False, None, None, None, max_temporal_layer=0)
    total = feed_capture(producer)
    received = Subscriber(sub.packets)
    assert 0 < len(sub.packets) < total / 2
    assert consumer.packets_dropped_temporal == total - len(sub.packets)
    assert received.sequence_steps == {1}, "dropped frames leave no hole to NACK"
    assert set(received.temporal_ids) == {0}
    assert received.frames == sorted(received.frames), "frame numbers only increase"
    assert received.structure is not None
    markers = [h.marker for h in received.headers]
    assert markers.count(True) == len(received.frames), "one marker per forwarded frame"


def test_retransmissions_keep_the_descriptor_on_rtx_too() -> None:
    producer = av1_producer([])
    sub = Recorder()
    consumer = av1_consumer(producer, sub.send, rtx=True)
    feed_capture(producer)
    sent = Subscriber(sub.packets).headers
    lost = [sent[3].sequence_number, sent[4].sequence_number]
    before = len(sub.packets)
    assert consumer.retransmit(lost, 2000.0) == 2
    for original, resent in zip(sub.packets[3:5], sub.packets[before:], strict=True):
        header = RtpHeader.parse(resent)
        assert header.payload_type == 46 and header.ssrc == consumer.rtx_ssrc
        assert read_header_extensions(resent) == read_header_extensions(original)
        osn = resent[payload_offset(resent) : payload_offset(resent) + 2]
        assert osn == original[2:4]


def test_a_malformed_descriptor_is_dropped_counted_and_leaves_no_gap() -> None:
    producer = av1_producer([])
    sub = Recorder()
    av1_consumer(producer, sub.send)
    packets = golden("chromium-av1-l1t3")[:12]
    for index, (seq, ts, marker, descriptor) in enumerate(packets):
        if index == 5:
            descriptor = b"\x81\x00"  # two bytes: shorter than the mandatory fields
        feed(producer, seq, ts, marker, descriptor)
    seq, ts = packets[-1][0] + 1, packets[-1][1] + 3000
    feed(producer, seq, ts, False, b"\x80\x00\x0d\xff\xff")  # a structure cut short
    assert producer.descriptors_dropped == 2
    assert (
        dict(_producer_counts(producer))[
            ("sfu_rtp_dropped_packets", "malformed_dependency_descriptor")
        ]
        == 2
    )
    feed(producer, seq + 1, ts, True, b"\x40\x00\x0d")
    assert len(sub.packets) == 12
    steps = Subscriber(sub.packets).sequence_steps
    assert steps == {1}, "the dropped packet left no hole"


def test_the_transport_wide_sequence_number_joins_the_descriptor_block() -> None:
    bandwidth, session = controller()
    bandwidth.use_transport_cc(3)
    producer = av1_producer([])
    consumer = av1_consumer(producer, bandwidth.send)
    feed_capture(producer)
    assert consumer.packets_sent == len(session.sent)
    sequences = []
    profiles = set()
    for header, payload, extension in session.sent:
        assert extension is None, "one block: the header carries it"
        packet = header + payload
        profiles.add(packet[12:14])
        extensions = read_header_extensions(packet)
        assert set(extensions) == {3, DESCRIPTOR_ID}
        sequences.append(struct.unpack("!H", extensions[3])[0])
        assert packet[payload_offset(packet) :] == payload
    assert sequences == list(range(1, len(session.sent) + 1))
    assert profiles == {b"\xbe\xde", b"\x10\x00"}, "the structure needs the two-byte form"


async def test_a_layer_out_of_reach_asks_the_publisher_for_a_key_frame() -> None:
    plis: list[int] = []
    producer = av1_producer(plis)
    sub = Recorder()
    consumer = av1_consumer(producer, sub.send)
    consumer.set_preferences(False, 0, None, None)
    packets = golden("chromium-av1-l2t3-key")
    for seq, ts, marker, descriptor in packets[:200]:
        feed(producer, seq, ts, marker, descriptor)
    assert Subscriber(sub.packets).structure is not None
    requested = len(plis)
    consumer.set_preferences(False, 1, None, None)
    for seq, ts, marker, descriptor in packets[200:220]:
        feed(producer, seq, ts, marker, descriptor)
    await asyncio.sleep(MIN_REQUEST_INTERVAL + 0.05)  # the request is throttled per stream
    # The upper spatial layer's chain was dropped here: only a key frame starts it.
    assert plis[requested:] == [0xA1]


def test_without_descriptors_every_packet_goes_and_once_they_come_one_without_is_dropped() -> None:
    producer = av1_producer([])
    sub = Recorder()
    av1_consumer(producer, sub.send)
    stream = producer.add_stream(0xA1, None)

    def plain(seq: int, payload: bytes) -> None:
        data = build_rtp_packet(
            payload_type=AV1_PT, sequence_number=seq, timestamp=seq, ssrc=0xA1, payload=payload
        )
        producer.receive(stream, data, payload_offset(data), 1000.0 + seq / 1000)

    plain(1, AV1_KEY)
    plain(2, AV1_DELTA)
    assert len(sub.packets) == 2, "a publisher without descriptors: forwarded as it comes"
    assert all(read_header_extensions(p) == {} for p in sub.packets)
    packets = golden("chromium-av1-l1t3")
    first = packets[0][0]
    for seq, ts, marker, descriptor in packets[:10]:
        feed(producer, 3 + seq - first, ts, marker, descriptor)
    forwarded = len(sub.packets)
    plain(13, AV1_DELTA)
    feed(producer, 14, packets[10][1], packets[10][2], packets[10][3])
    assert len(sub.packets) == forwarded + 1, "the packet without a descriptor was dropped"
    assert Subscriber(sub.packets[2:]).sequence_steps == {1}
