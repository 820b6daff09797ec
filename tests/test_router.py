"""Router and ProducerRoute without sockets: the layer-switch state in one Forwarding
per consumer, switches at key frames of the newest packet only, a restarted layer
followed, and a producer that leaves its router hands nothing on."""

from __future__ import annotations

from sfu.consumer import Consumer
from sfu.producer import Producer, RtpStream
from sfu.router import Router
from sfu.rtp.packet import build_rtp_packet
from sfu.sdp import Codec

VP8_KEY = b"\x10\x00\x9d\x01\x2a"
VP8_DELTA = b"\x10\x01\x00\x00\x00"


class Room:
    def __init__(self) -> None:
        self.plis: list[int] = []
        self.sent: dict[str, list[bytes]] = {}
        self.producer = Producer(
            "TR_cam", "PA_pub", "video", "1", [Codec(96, "VP8", 90000)], ["q", "h", "f"],
            "camera", self.plis.append,
        )  # fmt: skip
        self.router = Router()
        self.route = self.router.add_producer(self.producer)
        self.q, self.h, self.f = (
            self.producer.add_stream(ssrc, rid) for ssrc, rid in ((1, "q"), (2, "h"), (3, "f"))
        )

    def consumer(self, name: str) -> Consumer:
        sent = self.sent.setdefault(name, [])
        consumer = Consumer(name, self.producer, "PA_sub", lambda h, p: sent.append(p))
        self.router.add_consumer(consumer)
        self.router.activate(consumer, 96)
        return consumer

    def packet(self, stream: RtpStream, seq: int, payload: bytes) -> None:
        data = build_rtp_packet(
            payload_type=96, sequence_number=seq, timestamp=seq * 3000, ssrc=stream.ssrc,
            payload=payload,
        )  # fmt: skip
        self.producer.receive(stream, data, 12, now=1000.0 + seq / 100)


async def test_a_new_consumer_waits_on_the_top_layer_then_switches_down_at_a_key_frame():
    room = Room()
    consumer = room.consumer("CO_a")
    forwarding = room.router.forwarding(consumer)
    assert forwarding is not None
    assert (forwarding.stream, forwarding.pending) == (None, room.f)
    assert room.plis == [room.f.ssrc], "the layer it waits for is asked for a key frame"
    room.packet(room.f, 1, VP8_DELTA)
    assert room.sent["CO_a"] == []
    room.packet(room.f, 2, VP8_KEY)
    assert (forwarding.stream, forwarding.pending) == (room.f, None)
    room.router.set_target_layer(consumer, 0)
    assert forwarding.pending is room.q and forwarding.stream is room.f
    room.packet(room.f, 3, VP8_DELTA)
    room.packet(room.q, 1, VP8_DELTA)
    assert forwarding.stream is room.f, "still on f until q's key frame"
    room.packet(room.q, 2, VP8_KEY)
    assert (forwarding.stream, forwarding.pending, forwarding.current_layer) == (room.q, None, 0)
    assert room.sent["CO_a"] == [VP8_KEY, VP8_DELTA, VP8_KEY]
    assert consumer.layer_switches == 1
    room.packet(room.f, 4, VP8_DELTA)
    assert len(room.sent["CO_a"]) == 3, "the old layer is no longer forwarded"


async def test_stopping_and_a_layer_restarted_by_the_publisher():
    room = Room()
    consumer = room.consumer("CO_a")
    forwarding = room.router.forwarding(consumer)
    assert forwarding is not None
    room.packet(room.f, 1, VP8_KEY)
    assert forwarding.stream is room.f
    f2 = room.producer.add_stream(33, "f")  # the publisher restarted f with a new SSRC
    assert (forwarding.stream, forwarding.pending) == (None, f2)
    room.packet(f2, 100, VP8_KEY)
    assert forwarding.stream is f2
    room.router.set_target_layer(consumer, None)
    assert (forwarding.stream, forwarding.pending, forwarding.target_layer) == (None, None, None)
    assert not room.route.wants(f2), "nobody watches: the producer does only bookkeeping"


async def test_fan_out_and_a_producer_that_leaves_its_router():
    room = Room()
    consumers = [room.consumer(f"CO_{i}") for i in range(3)]
    room.packet(room.f, 1, VP8_KEY)
    assert [len(room.sent[c.id]) for c in consumers] == [1, 1, 1]
    room.router.remove_consumer(consumers[0])
    assert room.router.forwarding(consumers[0]) is None
    room.packet(room.f, 2, VP8_DELTA)
    assert [len(room.sent[c.id]) for c in consumers] == [1, 2, 2]
    assert room.router.consumers(room.producer) == consumers[1:]
    room.router.remove_producer(room.producer)
    room.packet(room.f, 3, VP8_DELTA)
    assert [len(room.sent[c.id]) for c in consumers] == [1, 2, 2]
    assert room.router.consumers(room.producer) == []
