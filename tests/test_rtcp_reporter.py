"""RtcpReporter: receiver reports in RRs of at most 31 blocks, sender reports with SDES
CNAME in compounds of at most 1,200 bytes, at randomized one-second intervals."""

from __future__ import annotations

import itertools

from sfu.consumer import Consumer
from sfu.producer import Producer
from sfu.router import Router
from sfu.rtcp_reporter import RTCP_MAX_PACKET, RtcpReporter
from sfu.rtp import rtcp
from sfu.rtp.packet import build_rtp_packet
from sfu.sdp import Codec

OPUS = Codec(111, "opus", 48000, 2)


def audio_producer(index: int) -> Producer:
    producer = Producer(f"TR_{index}", "PA_p", "audio", str(index), [OPUS], [], "mic", print)
    stream = producer.add_stream(0x1000 + index, None)
    for seq in range(3):
        data = build_rtp_packet(
            payload_type=111, sequence_number=seq, timestamp=seq * 960, ssrc=stream.ssrc,
            payload=b"opus",
        )  # fmt: skip
        producer.receive(stream, data, 12, now=10.0 + seq * 0.02)
    return producer


def test_receiver_reports_carry_every_stream_31_blocks_at_a_time():
    reporter = RtcpReporter(0xABC, "sfu-cname")
    producers = [audio_producer(i) for i in range(40)]
    packets = reporter.receiver_reports(producers, now=11.0)
    reports = [p for data in packets for p in rtcp.parse_rtcp(data)]
    assert [len(r.reports) for r in reports] == [31, 9]
    assert {r.ssrc for r in reports} == {0xABC}
    assert {b.ssrc for r in reports for b in r.reports} == {
        p.streams.popitem()[0] for p in producers
    }


def test_sender_reports_of_forwarding_consumers_fill_compounds_up_to_the_limit():
    reporter = RtcpReporter(0xABC, "sfu-cname")
    router = Router()
    consumers = []
    for index in range(60):
        producer = Producer(f"TR_{index}", "PA_p", "audio", str(index), [OPUS], [], "mic", print)
        router.add_producer(producer)
        consumer = Consumer(f"CO_{index}", producer, "PA_s", lambda header, payload: None)
        router.add_consumer(consumer)
        router.activate(consumer, 111)
        stream = producer.add_stream(0x2000 + index, None)
        if index % 2 == 0:  # the others have forwarded nothing yet: no SR
            data = build_rtp_packet(
                payload_type=111, sequence_number=1, timestamp=0, ssrc=stream.ssrc, payload=b"o"
            )
            producer.receive(stream, data, 12, now=10.0)
        consumers.append(consumer)
    compounds = reporter.sender_reports(consumers, router, now=11.0, wall=1.7e9)
    assert all(len(c) <= RTCP_MAX_PACKET for c in compounds) and len(compounds) > 1
    packets = [p for data in compounds for p in rtcp.parse_rtcp(data)]
    reports = [p for p in packets if isinstance(p, rtcp.SenderReport)]
    assert sorted(r.ssrc for r in reports) == sorted(c.ssrc for c in consumers[::2])
    names = [p for p in packets if isinstance(p, rtcp.SourceDescription)]
    assert len(names) == len(reports)


def test_reports_come_every_half_to_one_and_a_half_seconds():
    reporter = RtcpReporter(1, "c")
    due = [t / 100 for t in range(0, 6000) if reporter.due(t / 100)]
    gaps = [b - a for a, b in itertools.pairwise(due)]
    assert min(gaps) >= 0.5 and max(gaps) <= 1.51
    assert 0.8 < sum(gaps) / len(gaps) < 1.2
