"""BandwidthController without sockets: the transport-wide sequence number stamped on
consumer packets, the estimate from feedback, and the allocation it drives through the
room's router. The transport is a recorder of what would go on the wire."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from sfu.bandwidth_controller import UNKNOWN_ESTIMATE, BandwidthController, video_floor
from sfu.consumer import Consumer
from sfu.producer import Producer
from sfu.router import Router
from sfu.sdp import Codec


@dataclass
class Session:
    sent: list[tuple[bytes, bytes, bytes | None]] = field(default_factory=list)

    def send_rtp(self, header: bytes, payload: bytes, extension: bytes | None = None) -> None:
        self.sent.append((header, payload, extension))

    def rtp_sender(self, header: bytes, payload: bytes) -> None:
        self.send_rtp(header, payload)


@dataclass
class Transport:
    session: Session = field(default_factory=Session)


def controller() -> tuple[BandwidthController, Session]:
    bandwidth = BandwidthController()
    transport: Any = Transport()
    bandwidth.transport = transport
    return bandwidth, transport.session


def test_without_transport_cc_consumers_send_straight_into_the_batch():
    bandwidth, session = controller()
    assert bandwidth.sender() == session.rtp_sender
    bandwidth.send(b"h" * 12, b"payload")
    assert session.sent == [(b"h" * 12, b"payload", None)]
    assert bandwidth.estimate is None, "no feedback, no estimate"


def test_each_packet_gets_the_next_transport_wide_sequence_number():
    bandwidth, session = controller()
    bandwidth.use_transport_cc(3)
    assert bandwidth.sender() == bandwidth.send
    for _ in range(3):
        bandwidth.send(b"h" * 12, b"p" * 100)
    bandwidth.send(b"h" * 12, b"\x00" * 255, probe=True)
    extensions = [extension for _, _, extension in session.sent]
    assert all(e is not None and e[:4] == b"\xbe\xde\x00\x01" and e[4] == 0x31 for e in extensions)
    sequences = [struct.unpack_from("!H", e, 5)[0] for e in extensions if e is not None]
    assert sequences == [1, 2, 3, 4]


def simulcast_room(now: float) -> tuple[Router, Consumer]:
    producer = Producer(
        "TR_cam", "PA_pub", "video", "1", [Codec(96, "VP8", 90000)], ["q", "h", "f"],
        "camera", lambda ssrc: None,
    )  # fmt: skip
    for ssrc, rid, bitrate in ((1, "q", 150_000), (2, "h", 500_000), (3, "f", 1_700_000)):
        stream = producer.add_stream(ssrc, rid)
        stream.bitrate, stream.last_packet = bitrate, now
    router = Router()
    router.add_producer(producer)
    consumer = Consumer("CO_1", producer, "PA_sub", lambda header, payload: None)
    router.add_consumer(consumer)
    router.activate(consumer, 96)
    return router, consumer


async def test_the_estimate_decides_the_layer():
    now = 100.0
    router, consumer = simulcast_room(now)
    bandwidth, _ = controller()
    bandwidth.tick([consumer], router, [], now)
    forwarding = router.forwarding(consumer)
    assert forwarding is not None
    assert forwarding.target_layer == 2, "no feedback: only preferences limit it"
    bandwidth.on_remb(400_000, now + 0.6)
    assert bandwidth.estimate == 400_000
    bandwidth.tick([consumer], router, [], now + 0.6)
    assert forwarding.target_layer == 0, "400 kbit/s fits the 150 kbit/s layer only"


def test_the_floor_is_the_lowest_layer_of_the_most_important_track():
    now = 100.0
    router, consumer = simulcast_room(now)
    track = router.allocation_input(consumer, 0, now)
    assert video_floor([track]) == 150_000
    assert UNKNOWN_ESTIMATE > 1_700_000
